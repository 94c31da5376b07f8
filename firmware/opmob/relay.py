"""The deployable relay's core, sans-I/O: registration, affiliation, floor control and voice fan-out
for the devices of one site (docs/relay.md).

    relay = Relay(cfg, registry, store, rand, now)   # srtp=, fanout=: see Relay.__init__
    relay.on_datagram(now, addr, data) -> [(addr, bytes)]      relay.poll(now) -> [(addr, bytes)]
    relay.next_deadline() -> int | None                          relay.status() -> dict
    relay.device_control(now, identity, "stun" | "revive" | "kill") -> [(addr, bytes)]
    relay.cancel_emergency(now, group) -> [(addr, bytes)]

``now`` is integer milliseconds modulo 2^30 (opmob/ticks.py) and every deadline such an int,
compared wrap-safely (``due``, ``tdiff``, ``earliest``); relay.toml's seconds are converted once
(``cfg.keepalive_ms``, ``cfg.expiry_ms``, ``cfg.floor.t1_ms`` ...).

One UDP port carries everything; the first bytes tell what a datagram is (RFC 7983, RFC 5761):
0x4F ("OM") signalling, then RTP version 2 with a second byte 192..223 (RTCP packet types) SRTCP,
otherwise SRTP. Every datagram is either accepted or dropped and counted under exactly one
``drop_<reason>`` counter, so ``rx_datagrams == accepted + sum(drop_*)`` always holds.

The relay keeps its registrations and affiliations in the store as they change, never a key. A
relay built on the same store after a restart knows every registration as *stale*: it answers the
device's next request with ERROR UNKNOWN_SESSION, the device registers again, and its new session
takes over the affiliations.
"""

import struct

from opmob import relay_events as ev
from opmob import sig, srtp, txn
from opmob.relay_groups import Groups
from opmob.relay_link import Links
from opmob.relay_media import Media
from opmob.relay_requests import Requests
from opmob.relay_session import (
    CLOSED,
    REGISTERED,
    STALE,
    STUNNED,
    Drop,
    Session,
    addr_text,
    parse_registration,
)
from opmob.relay_sessions import Sessions
from opmob.relay_sig import CHALLENGE_TTL, Signalling
from opmob.store import StoreError
from opmob.ticks import due, earliest, tadd

_srtp_class = srtp.SrtpSession

MAX_DATAGRAM = 1500  # one Ethernet MTU: nothing of ours is larger
SILENT_KEEPALIVES = 3  # keep-alive intervals without a word before a registration is dropped
DROP_PREFIX = "drop_"

ACTIONS = {"stun": sig.CTRL_STUN, "revive": sig.CTRL_REVIVE, "kill": sig.CTRL_KILL}
_ACTION_STATUS = {"stun": "stunned", "revive": "active", "kill": "killed"}

# Counters that always exist, so a monitor sees zeros rather than missing keys. Drop counters
# (``drop_<reason>``) appear with their first drop; a reason is a plane and a cause, e.g.
# ``drop_sig_auth_failed``, ``drop_rtp_replayed``, ``drop_rtcp_not_affiliated``.
COUNTERS = (
    "rx_datagrams",
    "accepted",
    "tx_datagrams",
    "sig_retransmits",
    "challenges",
    "challenges_refused",
    "vector_failures",
    "control_failures",
    "registrations",
    "register_rejects",
    "auth_rejected",
    "auth_autn_refused",
    "auth_sync_failures",
    "deregistrations",
    "keepalives",
    "sessions_expired",
    "affiliations",
    "emergency_alerts",
    "emergency_cancels",
    "device_controls_sent",
    "device_control_acks",
    "device_errors",
    "device_requests_timed_out",
    "voice_in",
    "voice_out",
    "voice_protect_failed",
    "floor_in",
    "floor_out",
    "floor_undeliverable",
    "floor_protect_failed",
    "floor_not_affiliated",
    "floor_denied_other_group",
    "floor_ssrc_collisions",
    "store_errors",
    "restored",
    "restore_dropped",
)


class Relay:
    """The relay core: composed of parts (sessions, groups, requests, events; the signalling,
    media and links parts) that the driver's calls are routed through."""

    def __init__(
        self,
        cfg,
        registry,
        store,
        rand,
        now,
        srtp=None,
        fanout=None,
        codec=None,
        link_addr=None,
        key_log=None,
    ):
        """``srtp``: the SRTP session class the relay makes its per-registration contexts with
        (``SrtpSession(key, salt, max_streams=n)``, the API and errors of ``opmob.srtp``; None:
        ``opmob.srtp.SrtpSession``, the pure-Python twin). A CPython driver passes the C
        extension's. ``fanout``: None, or ``fanout(sessions, packets) -> [bytes | WireError]``
        protecting ``packets[i]`` with ``sessions[i]`` in order (e.g. one batch call of the C
        extension); the voice fan-out then makes one call per talker packet instead of one
        ``protect`` per listener. Either gives the same datagrams.

        ``codec``: the Codec2 transcoder links with a codec2_* codec need (``open(mode, ssrc) ->
        slot``, ``close(slot)``, ``to_codec2(slot, rtp) -> [rtp]``, ``to_dvi4(slot, rtp) -> [rtp]``
        on plain RTP, WireError on bad input); None: only "dvi4" links, and a configured codec2
        link is refused here with a ValueError naming it. ``link_addr(host, port)``: the driver's
        address for an initiating link's peer (None: the ``(host, port)`` tuple).

        ``key_log``: None (the default: keys are never given out), or
        ``key_log(label, identity, ssrc, key, salt)``, called when a hop's SRTP master key and salt
        are established, for a capture tool to decrypt what it recorded (an SSLKEYLOGFILE-style
        file: opt-in, test and lab use). Labels: "device_up" / "device_down" (``identity`` the
        device, ``ssrc`` its SSRC), "link_tx" / "link_rx" (``identity`` the peer relay, ``ssrc``
        0: every group stream on the link uses the key)."""
        self.cfg = cfg
        self._events = ev.EventLog()
        self._key_log = key_log
        self._srtp = _srtp_class if srtp is None else srtp
        self._fanout = fanout
        self.registry = registry
        self.store = store
        self.rand = rand
        c = {}
        for k in COUNTERS:
            c[k] = 0
        self.counters = c
        # Every registration, its indexes and allocators (relay_sessions.py); the planes read the
        # indexes under their old names, only the Sessions part changes them.
        self.sessions = Sessions(rand)
        self._sessions = self.sessions.by_sid
        self._by_identity = self.sessions.by_identity
        self._by_ssrc = self.sessions.by_ssrc
        # Every group, its floor and where it lives, its members' routes (relay_groups.py).
        self.groups = Groups(cfg.floor, self._events, self._by_ssrc)
        self._floors = self.groups.floors
        self._floor_due = self.groups.due
        self._floor_groups = self.groups.by_floor_ssrc
        self._alerts = self.groups.alerts
        self._attach_of = self.groups.attach_of  # group -> peer it is attached over
        self._remote_pids = self.groups.routes  # participant -> (link, reference) over a link
        # Room for every device's requests of a whole cache lifetime: an entry evicted early turns
        # a retransmission into a replay, which is dropped, and the device would lose the relay.
        self._cache = txn.ResponseCache(max(txn.CACHE_ENTRIES, 8 * cfg.max_devices))
        self._requests = Requests(self._cache)  # each request executed once, answered now or later
        self._busy = {}  # session id -> Session with requests in flight to its device
        self._txn_at = None
        self._sweep_at = None
        self.sig = Signalling(self)
        self.media = Media(self)
        self.links = Links(self, now, codec, link_addr)
        self._restore(now)

    # --- the driver's interface -------------------------------------------------------------------

    def on_datagram(self, now, addr, data):
        c = self.counters
        c["rx_datagrams"] += 1
        out = self._due(now)
        try:
            out.extend(self._dispatch(now, addr, data))
            c["accepted"] += 1
        except Drop as d:
            k = DROP_PREFIX + d.reason
            c[k] = c.get(k, 0) + 1
            if d.out:
                out.extend(d.out)
        c["tx_datagrams"] += len(out)
        return out

    def poll(self, now):
        out = self._due(now)
        fd = self._floor_due
        g = fd.first_due(now)
        while g is not None:
            srv = self._floors[g]
            out.extend(self.media._floor_out(srv.poll(now)))
            d = fd.get(g)
            if d is not None and due(now, d):
                break  # a server must move its deadline past now (floor_server.py); never spin
            g = fd.first_due(now)
        self.counters["tx_datagrams"] += len(out)
        return out

    def next_deadline(self):
        d = earliest(self._sweep_at, self.links._link_at)
        d = earliest(d, self._txn_at)
        return earliest(d, self._floor_due.earliest())

    def events(self):
        """The relay events (relay_events.py) since the last call, oldest first: the driver drains
        them after each call it makes."""
        return self._events.drain()

    def _log_keys(self, label, identity, ssrc, key, salt):
        kl = self._key_log
        if kl is not None:
            kl(label, identity, ssrc, bytes(key), bytes(salt))

    def dropped(self):
        """Datagrams dropped so far, all reasons together."""
        n = 0
        for k, v in self.counters.items():
            if k.startswith(DROP_PREFIX):
                n += v
        return n

    def _dispatch(self, now, addr, data):
        n = len(data)
        if n == 0:
            raise Drop("empty")
        if n > MAX_DATAGRAM:
            raise Drop("oversized")
        b0 = data[0]
        if b0 == 0x4F:
            return self._on_sig(now, addr, data)
        if b0 >> 6 == 2:
            # RFC 5761: RTCP packet types 192..223 sit where RTP payload types 64..95 with the
            # marker bit would, which an RTP session must not use.
            rtcp = n > 1 and 192 <= data[1] <= 223
            if self.links._link_media and n >= 12:
                # A stream on a link is known by its SSRC, as a device's is.
                lm = self.links._link_media.get(struct.unpack_from(">I", data, 4 if rtcp else 8)[0])
                if lm is not None:
                    if rtcp:
                        return self.links._on_link_rtcp(now, addr, data, lm[0], lm[1])
                    return self.links._on_link_rtp(now, addr, data, lm[0], lm[1])
            if rtcp:
                return self._on_rtcp(now, addr, data)
            return self._on_rtp(now, addr, data)
        raise Drop("not_ours")

    # Where each kind of datagram goes: the parts' entry points (a test or fuzzer that injects a
    # fault in one kind overrides these).

    def _on_sig(self, now, addr, data):
        return self.sig._on_sig(now, addr, data)

    def _on_rtcp(self, now, addr, data):
        return self.media._on_rtcp(now, addr, data)

    def _on_rtp(self, now, addr, data):
        return self.media._on_rtp(now, addr, data)

    # --- timers -----------------------------------------------------------------------------------

    def _arm(self, t):
        self._sweep_at = earliest(self._sweep_at, t)

    def _due(self, now):
        out = []
        if self._txn_at is not None and due(now, self._txn_at):
            nxt = None
            for sid in list(self._busy):
                s = self._busy[sid]
                resend, dead = s.txns.poll(now)
                for data in resend:
                    out.append((s.addr, data))
                for t in dead:
                    self.counters["device_requests_timed_out"] += 1
                    if s.ctrl_txid == t.txid:
                        s.ctrl_txid = None
                d = s.txns.deadline()
                if d is None:
                    del self._busy[sid]
                    if s.state == CLOSED:
                        self._arm(now)
                else:
                    nxt = earliest(nxt, d)
            self._txn_at = nxt
        if self._sweep_at is not None and due(now, self._sweep_at):
            out.extend(self._sweep(now))
        if self.links._link_at is not None and due(now, self.links._link_at):
            out.extend(self.links._link_poll(now))
        return out

    def _silent_after(self):
        return (2 * SILENT_KEEPALIVES + 1) * self.cfg.keepalive_ms // 2

    def _sweep(self, now):
        out = []
        nxt = None
        silent = self._silent_after()
        for sid in list(self._sessions):
            s = self._sessions.get(sid)
            if s is None:
                continue
            st = s.state
            if st == CLOSED:
                if sid in self._busy:
                    continue  # ends when its requests are answered or time out
                d = s.expires_at if s.expires_at is not None else now
                if due(now, d):
                    del self._sessions[sid]
                    s.drop_keys()
                    continue
            elif st == REGISTERED or st == STUNNED or st == STALE:
                d = earliest(tadd(s.last_seen, silent), s.expires_at)
                if due(now, d):
                    self.counters["sessions_expired"] += 1
                    out.extend(self._end(now, s, False, cause="expired"))
                    continue
            else:
                d = tadd(s.created, CHALLENGE_TTL)
                if due(now, d):
                    self.sessions.forget_challenge(s)
                    continue
            nxt = earliest(nxt, d)
        self._cache.expire(now)
        self._sweep_at = nxt
        return out

    # --- sessions ---------------------------------------------------------------------------------

    def _rand_u32(self):
        return struct.unpack(">I", self.rand(4))[0]

    def _new_sid(self):
        return self.sessions.new_sid(self.links._link_by_sid)

    def _new_ssrc(self):
        return self.sessions.new_ssrc(self._floor_groups, self.links._link_media)

    def _seen(self, s, now, addr):
        s.last_seen = now
        if addr != s.addr:
            s.addr = addr  # a new address (NAT rebinding, roaming between access points)
            if s.live:
                self._store_apply((("put", "registration", s.identity, s.registration_record()),))

    def _retire(self, now, old, new_state):
        """``old`` is replaced by a new registration of the same device. Its floor memberships
        carry over (the new session re-joins under the same identity, keeping a floor it holds)."""
        out = []
        if old.state == REGISTERED and new_state != REGISTERED:
            for a in old.affs:
                out.extend(self._leave(now, old.identity, a[0]))
        self.sessions.retire(old)
        self._busy.pop(old.sid, None)
        return out

    def _end(self, now, s, linger, keep_txns=False, cause="deregistered"):
        """The registration is over (de-registered, silent, expired, killed)."""
        out = []
        if s.state != CLOSED:
            self._events.add((ev.DEREGISTERED, s.identity, cause))
        if s.state == REGISTERED:
            for a in s.affs:
                out.extend(self._leave(now, s.identity, a[0]))
        self.sessions.unindex(s)
        self._unsave(s.identity)
        s.state = CLOSED
        s.srtp_rx = s.srtp_tx = None
        if not keep_txns:
            s.txns = None
            self._busy.pop(s.sid, None)
        if linger:
            # Its keys stay a cache lifetime, so a retransmitted request gets its cached answer.
            s.expires_at = tadd(now, txn.CACHE_TTL)
            self._arm(s.expires_at)
        elif s.sid in self._busy:
            s.expires_at = now
        else:
            self._sessions.pop(s.sid, None)
            s.drop_keys()
        return out

    # --- floors -----------------------------------------------------------------------------------

    def _floor(self, g):
        srv = self.groups.floor(g)
        if srv is None:
            self.counters["floor_ssrc_collisions"] += 1
        return srv

    def _join(self, now, s, g):
        srv = self._floor(g)
        if srv is None:
            return []
        dev = self.registry.device(s.identity)
        grp = self.registry.group(g)
        ceiling = dev.ceiling if dev is not None else 0
        ro = grp is not None and s.identity in grp.receive_only
        if self._remote_pids:
            self.groups.route_local(s.identity, g)
        out = self.media._floor_out(
            srv.join(now, s.identity, s.identity, s.ssrc, ceiling=ceiling, receive_only=ro)
        )
        if self._attach_of:
            out.extend(self.links._late_entry(s, g))
            out.extend(self.links._links_changed(now, g))
        return out

    def _leave(self, now, identity, g):
        srv = self._floors.get(g)
        if srv is None:
            return []
        if self._remote_pids and self.groups.routed_remote(identity, g) is not None:
            return []  # the member talks through another relay now: that route stays
        out = self.media._floor_out(srv.leave(now, identity))
        if self._attach_of:
            out.extend(self.links._links_changed(now, g, self._by_identity.get(identity)))
        return out

    # --- the store --------------------------------------------------------------------------------

    def _store_apply(self, ops):
        # A store that cannot be written must not stop a call: the relay carries on from memory,
        # and the counter (in status) tells the operator that a restart would lose state.
        try:
            self.store.apply(ops)
        except (StoreError, OSError, ValueError):
            self.counters["store_errors"] += 1

    def _save(self, s):
        ops = [("put", "registration", s.identity, s.registration_record())]
        if s.affs:
            ops.append(("put", "affiliation", s.identity, s.affiliation_record()))
        else:
            ops.append(("delete", "affiliation", s.identity))
        self._store_apply(ops)

    def _unsave(self, identity):
        self._store_apply((("delete", "registration", identity), ("delete", "affiliation", identity)))

    def _revive_pending(self, identity):
        try:
            m = self.store.get("meta", "revive:" + identity)
        except (StoreError, ValueError):
            self.counters["store_errors"] += 1
            m = None
        return isinstance(m, dict) and m.get("pending") is True

    def _set_revive_pending(self, identity, on):
        # A device stunned earlier stays stunned in its own mind until the home's proof reaches
        # it, so a revive it has not acknowledged is delivered whenever it next registers.
        if self._revive_pending(identity) != on:
            key = "revive:" + identity
            if on:
                self._store_apply((("put", "meta", key, {"pending": True}),))
            else:
                self._store_apply((("delete", "meta", key),))

    def _restore(self, now):
        try:
            regs = self.store.items("registration")
        except (StoreError, ValueError):
            self.counters["store_errors"] += 1
            return
        for ident, reg in regs:
            try:
                dev = self.registry.device(ident)
                if dev is None or dev.status == "killed":
                    raise ValueError("no longer a device")
                aff = self.store.get("affiliation", ident)
                sid, ssrc, key_id, addr, affs = parse_registration(ident, reg, aff, self.cfg.max_affiliations)
                if sid in self._sessions or ssrc == 0 or ssrc in self._by_ssrc:
                    raise ValueError("duplicate session or SSRC")
            except (ValueError, StoreError):
                self.counters["restore_dropped"] += 1
                self._unsave(ident)
                continue
            s = Session(ident, sid, addr, now)
            s.ssrc = ssrc
            s.key_id = key_id
            s.affs = affs
            self.sessions.restore(s)
            self.counters["restored"] += 1
        if self._sessions:
            self._arm(tadd(now, self._silent_after()))

    # --- operator interface -----------------------------------------------------------------------

    def device_control(self, now, identity, action):
        """Stun, revive or kill a device: in the registry, and in its live session if it has one."""
        code = ACTIONS.get(action)
        if code is None:
            raise ValueError("action must be one of stun, revive, kill")
        dev = self.registry.device(identity)
        if dev is None:
            raise ValueError("no such device")
        if dev.status == "killed":
            raise ValueError("device is killed; that is final")
        out = self._due(now)
        self._events.add((ev.DEVICE_CONTROL, identity, action))
        s = self._by_identity.get(identity)
        live = s is not None and s.live
        if action == "kill":
            if live:
                # Ordered while the registry still holds the device: the proof needs its secret.
                out.extend(self.sig._control(now, s, code))
            self.registry.set_status(identity, _ACTION_STATUS[action])
            if s is not None:
                out.extend(self._end(now, s, False, keep_txns=live, cause="killed"))
            self._set_revive_pending(identity, False)
        elif action == "stun":
            self.registry.set_status(identity, _ACTION_STATUS[action])
            if live:
                if s.state == REGISTERED:
                    for a in s.affs:
                        out.extend(self._leave(now, identity, a[0]))
                s.state = STUNNED
                s.revive_pending = False
                out.extend(self.sig._control(now, s, code))
            self._set_revive_pending(identity, False)
        else:
            self.registry.set_status(identity, _ACTION_STATUS[action])
            if live:
                # The order first, so the device is itself again when the floor state arrives.
                s.revive_pending = True
                out.extend(self.sig._control(now, s, code))
                if s.state == STUNNED:
                    s.state = REGISTERED
                    for a in s.affs:
                        out.extend(self._join(now, s, a[0]))
            self._set_revive_pending(identity, True)
        self.counters["tx_datagrams"] += len(out)
        return out

    def cancel_emergency(self, now, group):
        """A dispatcher ends ``group``'s emergency: the floor's emergency and imminent peril
        states and every alert."""
        if self.registry.group(group) is None:
            raise ValueError("no such group")
        out = self._due(now)
        srv = self._floors.get(group)
        if srv is not None:
            out.extend(self.media._floor_out(srv.cancel_emergency(now, None)))
            out.extend(self.media._floor_out(srv.cancel_imminent_peril(now, None)))
        if self._alerts.pop(group, None):
            out.extend(self.sig._tell_members(now, group, None, sig.EMERGENCY_CANCEL))
        self._events.add((ev.EMERGENCY_CANCELLED, group, None))
        self.counters["emergency_cancels"] += 1
        self.counters["tx_datagrams"] += len(out)
        return out

    def status(self):
        """What an operator may see: no key, secret, nonce or location."""
        devices = []
        for ident in sorted(self._by_identity):
            s = self._by_identity[ident]
            devices.append(
                {
                    "identity": ident,
                    "addr": addr_text(s.addr),
                    "state": s.state,
                    "ssrc": s.ssrc,
                    "groups": s.groups(),
                    "talk_group": s.talk_group(),
                }
            )
        groups = []
        for g in sorted(self._floors):
            srv = self._floors[g]
            groups.append(
                {
                    "identity": g,
                    "floor_state": srv.state,
                    "holder": srv.holder,
                    "queue": [[pid, prio] for pid, prio in srv.queue],
                    "emergency": srv.emergency,
                    "imminent_peril": srv.imminent_peril,
                    "alerts": list(self._alerts.get(g, ())),
                    "members": [[pid, srv.participant_state(pid)] for pid in srv.members],
                    "floor_ssrc": srv.server_ssrc,
                }
            )
        stunned = []
        killed = []
        for dev in self.registry.devices():
            if dev.status == "stunned":
                stunned.append(dev.identity)
            elif dev.status == "killed":
                killed.append(dev.identity)
        return {
            "relay": self.cfg.identity,
            "system": self.cfg.system,
            "devices": devices,
            "groups": groups,
            "stunned": sorted(stunned),
            "killed": sorted(killed),
            "links": self.links.links_status(),
            "counters": dict(self.counters),
        }
