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
from opmob.errors import WireError
from opmob.relay_groups import Groups
from opmob.relay_link import Links
from opmob.relay_media import Media
from opmob.relay_requests import Requests
from opmob.relay_session import (
    REGISTERED,
    STUNNED,
    Drop,
    Session,
    addr_text,
    parse_registration,
)
from opmob.relay_sessions import Sessions
from opmob.relay_sig import Signalling
from opmob.relay_store import RelayStore
from opmob.store import StoreError
from opmob.ticks import due, earliest

_srtp_class = srtp.SrtpSession

MAX_DATAGRAM = 1500  # one Ethernet MTU: nothing of ours is larger
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
    "sig_pending",
    "requests_held",
    "requests_timed_out",
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
        0: every group stream on the link uses the key); and, with the device's SRTP keys, its
        signalling keys (protocol.md §5): "sig_up" / "sig_down", ``key`` the AES-128 key Ke and
        ``salt`` the HMAC-SHA256 key Km of that direction."""
        self.cfg = cfg
        self._events = events = ev.EventLog()
        self._key_log = key_log
        self._srtp = srtp_cls = _srtp_class if srtp is None else srtp
        self._fanout = fanout
        self.registry = registry
        self.store = store
        self.rand = rand
        c = {}
        for k in COUNTERS:
            c[k] = 0
        self.counters = c
        # The parts, each given the parts it uses (docs/relay.md "Parts"). What is kept: the
        # store adapter. Every registration, its indexes, allocators, deadlines and transitions.
        self.kept = RelayStore(store, c)
        self.sessions = ss = Sessions(rand, self.kept, events, c, cfg.keepalive_ms)
        # Every group, its floor and where it lives, its members' routes.
        self.groups = gs = Groups(cfg.floor, events, ss.by_ssrc, c)
        # Room for every device's requests of a whole cache lifetime: an entry evicted early turns
        # a retransmission into a replay, which is dropped, and the device would lose the relay.
        self._cache = txn.ResponseCache(max(txn.CACHE_ENTRIES, 8 * cfg.max_devices))
        self._requests = rq = Requests(self._cache)  # each request executed once, now or later
        self.media = Media(ss, gs, registry, events, c, fanout)
        ss.floors = self.media
        self.sig = Signalling(
            cfg, registry, rand, srtp_cls, ss, gs, rq, self.media, self.kept, events, c, key_log
        )
        self.links = Links(
            cfg, registry, rand, srtp_cls, ss, gs, rq, self.media, events, c, now, codec, link_addr, key_log
        )
        self.media.links = self.sig.links = self.links
        self.links.on_attach = self.sig.attach_resolved
        # Names the tests and the fuzzer read (the parts' own maps).
        self._sessions = ss.by_sid
        self._by_identity = ss.by_identity
        self._by_ssrc = ss.by_ssrc
        self._floors = gs.floors
        self._floor_due = gs.due
        self._floor_groups = gs.by_floor_ssrc
        self._alerts = gs.alerts
        self._attach_of = gs.attach_of
        self._remote_pids = gs.routes
        self._restore(now)

    # --- the driver's interface: a thin dispatcher ------------------------------------------------

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
            out.extend(self.media.floor_out(srv.poll(now)))
            d = fd.get(g)
            if d is not None and due(now, d):
                break  # a server must move its deadline past now (floor_server.py); never spin
            g = fd.first_due(now)
        self.counters["tx_datagrams"] += len(out)
        return out

    def next_deadline(self):
        d = earliest(self.sessions.next_deadline(), self.links.next_deadline())
        d = earliest(d, self.sig.next_deadline())
        return earliest(d, self._floor_due.earliest())

    def events(self):
        """The relay events (relay_events.py) since the last call, oldest first: the driver drains
        them after each call it makes."""
        return self._events.drain()

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
            if n >= 12:
                # A stream on a link is known by its SSRC, as a device's is.
                lm = self.links.media_stream(struct.unpack_from(">I", data, 4 if rtcp else 8)[0])
                if lm is not None:
                    if rtcp:
                        return self.links.on_rtcp(now, addr, data, lm[0], lm[1])
                    return self.links.on_rtp(now, addr, data, lm[0], lm[1])
            if rtcp:
                return self._on_rtcp(now, addr, data)
            return self._on_rtp(now, addr, data)
        raise Drop("not_ours")

    # Where each kind of datagram goes: the parts' entry points (a test or fuzzer that injects a
    # fault in one kind overrides these).

    def _on_sig(self, now, addr, data):
        try:
            h = sig.peek(data)
        except WireError as e:
            raise Drop("sig_" + e.counter)
        if self.links.owns(h):
            return self.links.on_sig(now, addr, h, data)
        return self.sig.on_sig(now, addr, h, data)

    def _on_rtcp(self, now, addr, data):
        return self.media.on_rtcp(now, addr, data)

    def _on_rtp(self, now, addr, data):
        return self.media.on_rtp(now, addr, data)

    # --- timers -----------------------------------------------------------------------------------

    def _due(self, now):
        ss = self.sessions
        d = ss.requests_due.earliest()
        out = ss.poll_requests(now) if d is not None and due(now, d) else []
        d = ss.due.earliest()
        if d is not None and due(now, d):
            out.extend(ss.sweep(now))
            self._cache.expire(now)
        d = self.links.next_deadline()
        if d is not None and due(now, d):
            out.extend(self.links.poll(now))
        d = self.sig.next_deadline()
        if d is not None and due(now, d):
            out.extend(self.sig.poll(now))
        return out

    # --- kept for callers of the relay's former names -------------------------------------------

    def _floor(self, g):
        return self.groups.floor(g)

    def _revive_pending(self, identity):
        return self.kept.revive_pending(identity)

    def _restore(self, now):
        regs = self.kept.registrations()
        if regs is None:
            return
        for ident, reg in regs:
            try:
                dev = self.registry.device(ident)
                if dev is None or dev.status == "killed":
                    raise ValueError("no longer a device")
                aff = self.kept.affiliation(ident)
                sid, ssrc, key_id, addr, affs = parse_registration(ident, reg, aff, self.cfg.max_affiliations)
                if sid in self._sessions or ssrc == 0 or ssrc in self._by_ssrc:
                    raise ValueError("duplicate session or SSRC")
            except (ValueError, StoreError):
                self.counters["restore_dropped"] += 1
                self.kept.unsave(ident)
                continue
            s = Session(ident, sid, addr, now)
            s.ssrc = ssrc
            s.key_id = key_id
            s.affs = affs
            self.sessions.restore(s)
            self.counters["restored"] += 1

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
                out.extend(self.sessions.end(now, s, False, keep_txns=live, cause="killed"))
            self.kept.set_revive_pending(identity, False)
        elif action == "stun":
            self.registry.set_status(identity, _ACTION_STATUS[action])
            if live:
                if s.state == REGISTERED:
                    for a in s.affs:
                        out.extend(self.media.leave(now, identity, a[0]))
                s.state = STUNNED
                s.revive_pending = False
                out.extend(self.sig._control(now, s, code))
            self.kept.set_revive_pending(identity, False)
        else:
            self.registry.set_status(identity, _ACTION_STATUS[action])
            if live:
                # The order first, so the device is itself again when the floor state arrives.
                s.revive_pending = True
                out.extend(self.sig._control(now, s, code))
                if s.state == STUNNED:
                    s.state = REGISTERED
                    for a in s.affs:
                        out.extend(self.media.join(now, s, a[0]))
            self.kept.set_revive_pending(identity, True)
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
            out.extend(self.media.floor_out(srv.cancel_emergency(now, None)))
            out.extend(self.media.floor_out(srv.cancel_imminent_peril(now, None)))
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
