"""The relay's signalling part (``Relay.sig``): docs/protocol.md §7 (transactions) and
§8 (flows) for a device at its home relay.

Each request is checked and executed once: a retransmission (same peer, same txid) gets the bytes
answered the first time from the response cache, and a protected request whose txid the session's
replay window has seen is dropped. ``peer`` is the session id for protected traffic and the source
address for open traffic.
"""

import struct

from opmob import authvec, sig, txn
from opmob import relay_events as ev
from opmob.errors import WireError
from opmob.relay_session import (
    CHALLENGED,
    CLOSED,
    REGISTERED,
    STUNNED,
    Drop,
    Session,
)
from opmob.store import StoreError
from opmob.ticks import earliest, tadd, tdiff

CHALLENGE_TTL = 30000  # ms: a challenge outlives the device's whole retransmission span (19.5 s)
MIN_CHALLENGES = 16  # half-open registrations allowed at once: this, or max_devices if larger
CHALLENGES_PER_IDENTITY = 2
CHALLENGE_GAP = 5000  # ms: a third challenge for one identity within this replaces none: refused
RETRY_BUSY = 30  # seconds a device refused for lack of room waits before trying again

_KEEP_STUNNED = (sig.KEEPALIVE, sig.DEREGISTER)  # all a stunned device may still do


class Signalling:
    """The relay's signalling part (composed into ``Relay`` as ``relay.sig``): registration,
    keep-alive, affiliation, emergency and the relay's own requests to devices. It reads the
    relay's sessions and groups parts and its request layer, and asks the relay (``self.r``) for
    what spans parts: a registration's start and end, joining and leaving floors, the store."""

    def __init__(self, relay):
        self.r = relay  # what spans parts: a registration's life, floors joined, the store
        self.cfg = relay.cfg
        self.counters = relay.counters
        self.events = relay._events
        self.groups = relay.groups
        self.key_log = relay._key_log
        self.rand = relay.rand
        self.registry = relay.registry
        self.requests = relay._requests
        self.sessions = relay.sessions
        self.srtp_cls = relay._srtp

    def _on_sig(self, now, addr, data):
        try:
            h = sig.peek(data)
        except WireError as e:
            raise Drop("sig_" + e.counter)
        if self.r.links._links and self.r.links._link_owns(h):
            return self.r.links._on_link_sig(now, addr, h, data)
        if h.down:
            # D=1: a session the peer owns, i.e. an interconnect link; none is configured.
            raise Drop("sig_wrong_direction")
        s = self.sessions.by_sid.get(h.session) if h.session else None
        key = None
        if h.protected:
            key = s.rx if s is not None else None
            if key is None:
                out = None
                if not h.is_response:
                    out = [(addr, self._open_error(h.txid, h.session, sig.CAUSE_UNKNOWN_SESSION))]
                raise Drop("sig_unknown_session", out)
        try:
            msg = sig.decode(data, key)
        except WireError as e:
            raise Drop("sig_" + e.counter)
        if msg.is_response:
            return self._on_sig_response(now, addr, s if h.protected else None, msg)
        if not h.protected:
            s = None  # an open message proves nothing about a session
        peer = h.session if h.protected else addr
        again = self._retransmitted(now, addr, peer, msg.txid)
        if again is not None:
            return again
        if s is not None:
            if not s.window.fresh(msg.txid):
                raise Drop("sig_replayed")
            s.window.accept(msg.txid)
            self.r._seen(s, now, addr)
        return self._answer_once(now, addr, peer, msg.txid, self._request, s, msg)

    def _retransmitted(self, now, addr, peer, txid):
        """The cached answer (as datagrams) when ``txid`` from ``peer`` was answered before, else
        None; a request still open is dropped (relay_requests.py)."""
        again = self.requests.again(now, addr, peer, txid)
        if again is not None:
            self.counters["sig_retransmits"] += 1
        return again

    def _answer_once(self, now, addr, peer, txid, handle, s, msg):
        """``handle(now, addr, s, msg) -> (response, other datagrams)`` for a new request, its
        response cached so that a retransmission gets the same bytes and never a second action;
        a response of ``relay_requests.LATER`` keeps it open for ``Requests.answer``."""
        return self.requests.handle(now, addr, peer, txid, handle, s, msg)

    def _request(self, now, addr, s, msg):
        """``(response bytes, other datagrams)`` for a new request."""
        t = msg.type
        if t == sig.REGISTER:
            return self._on_register(now, addr, msg)
        if t == sig.AUTH_FAILURE:
            return self._on_auth_failure(now, msg)
        if s is None:
            # Open, and not a registration: LINK_HELLO to a relay with no link configured.
            return self._open_error(msg.txid, msg.session, sig.CAUSE_UNSUPPORTED), []
        if s.state == CHALLENGED:
            if t == sig.AUTH_RESPONSE:
                return self._on_auth_response(now, s, msg)
            raise Drop("sig_not_registered")
        if s.state == CLOSED:
            raise Drop("sig_session_closed")
        if s.state == STUNNED and t not in _KEEP_STUNNED:
            return self._error(s, msg, sig.CAUSE_STUNNED), []
        if t == sig.KEEPALIVE:
            return self._on_keepalive(now, s, msg)
        if t == sig.DEREGISTER:
            self.counters["deregistrations"] += 1
            resp = sig.encode(msg.reply(sig.DEREGISTER_ACK), s.tx)
            return resp, self.r._end(now, s, True)
        if t == sig.AFFILIATE:
            results, out = self._affiliate(now, s, msg.affiliations, True)
            return sig.encode(msg.reply(sig.AFFILIATE_ACK, results=results), s.tx), out
        if t == sig.DEAFFILIATE:
            return self._on_deaffiliate(now, s, msg)
        if t == sig.AFFILIATION_QUERY:
            if msg.identity is not None and msg.identity != s.identity:
                # Who is affiliated where is the operator's view (status), not another device's.
                return self._error(s, msg, sig.CAUSE_NOT_AUTHORIZED), []
            affs = [(a[0], a[1], a[2]) for a in s.affs]
            rep = msg.reply(sig.AFFILIATION_REPORT, identity=s.identity, affiliations=affs)
            return sig.encode(rep, s.tx), []
        if t == sig.EMERGENCY_ALERT:
            return self._on_emergency_alert(now, s, msg)
        if t == sig.EMERGENCY_CANCEL:
            return self._on_emergency_cancel(now, s, msg)
        # CALL_SETUP and the rest: group calls run on floor control alone here (docs/relay.md).
        return self._error(s, msg, sig.CAUSE_UNSUPPORTED), []

    # --- answers ----------------------------------------------------------------------------------

    def _open_error(self, txid, session, cause):
        return sig.encode(sig.SigMsg(sig.ERROR, txid=txid, session=session, down=True, cause=cause))

    def _error(self, s, msg, cause):
        return sig.encode(msg.reply(sig.ERROR, cause=cause), s.tx)

    def _reject(self, msg, cause, key=None, retry_after=None):
        self.counters["register_rejects"] += 1
        return sig.encode(msg.reply(sig.REGISTER_REJECT, cause=cause, retry_after=retry_after), key)

    # --- registration -----------------------------------------------------------------------------

    def _on_register(self, now, addr, msg):
        ident = msg.identity
        dev = self.registry.device(ident)
        if dev is None:
            home = sig.system_of(ident) == self.cfg.system
            # Another system's device needs its home's vectors over an interconnect link.
            return self._reject(
                msg, sig.CAUSE_UNKNOWN_IDENTITY if home else sig.CAUSE_ROAMING_NOT_ALLOWED
            ), []
        if dev.status == "killed":
            return self._reject(msg, sig.CAUSE_KILLED), []
        if dev.secret is None:
            # Known from a partner's view: its vectors come from its home over an interconnect.
            return self._reject(msg, sig.CAUSE_HOME_UNREACHABLE, retry_after=RETRY_BUSY), []
        if ident not in self.sessions.by_identity and len(self.sessions.by_identity) >= self.cfg.max_devices:
            return self._reject(msg, sig.CAUSE_NO_RESOURCES, retry_after=RETRY_BUSY), []
        if not self._room_for_challenge(ident, now):
            return self._reject(msg, sig.CAUSE_NO_RESOURCES, retry_after=CHALLENGE_GAP // 1000), []
        try:
            vec = self._vector(now, ident)
        except (ValueError, StoreError):
            # The registry cannot issue one (its store fails, the device's ids are used up).
            self.counters["vector_failures"] += 1
            return self._reject(msg, sig.CAUSE_INTERNAL_ERROR, retry_after=RETRY_BUSY), []
        s = Session(ident, self.r._new_sid(), addr, now)
        s.vector = vec
        s.nonce = msg.nonce
        s.caps = msg.caps or 0
        s.req_affs = msg.affiliations
        s.set_challenge_keys(authvec.derive(vec[3], vec[1], msg.nonce))
        self.sessions.open_challenge(s)
        self.r._arm(tadd(now, CHALLENGE_TTL))
        self.counters["challenges"] += 1
        ch = sig.SigMsg(
            sig.CHALLENGE, txid=msg.txid, session=s.sid, down=True, rand=vec[1], autn=vec[4], vid=vec[0]
        )
        return sig.encode(ch), []

    def _vector(self, now, identity):
        """A fresh, single-use authentication vector for ``identity``.

        The one place vectors come from: at the device's home relay the registry makes it; a
        visited relay will ask the home over its interconnect link here (a later issue)."""
        return self.registry.next_vector(identity, self.rand(authvec.RAND_LEN))

    def _room_for_challenge(self, ident, now):
        # Half-open registrations are bounded overall and per identity. A new REGISTER for an
        # identity that has its share replaces the oldest (a device that restarted mid-way), but
        # not faster than one per CHALLENGE_GAP: each challenge uses up a stored vector id, and a
        # flood of REGISTERs must not turn into a flood of registry writes.
        if self.sessions.challenges >= max(MIN_CHALLENGES, self.cfg.max_devices):
            self.counters["challenges_refused"] += 1
            return False
        mine = self.sessions.challenges_of(ident)
        if len(mine) < CHALLENGES_PER_IDENTITY:
            return True
        oldest = mine[0]
        newest = mine[0]
        for c in mine:
            if tdiff(c.created, oldest.created) < 0:
                oldest = c
            if tdiff(c.created, newest.created) > 0:
                newest = c
        if tdiff(now, newest.created) < CHALLENGE_GAP:
            self.counters["challenges_refused"] += 1
            return False
        self.sessions.forget_challenge(oldest)
        return True

    def _close_challenge(self, now, s):
        """The challenge is answered (rejected): keep its keys while its answer may be asked again."""
        self.sessions.close_challenge(s, tadd(now, txn.CACHE_TTL))
        self.r._arm(s.expires_at)

    def _on_auth_failure(self, now, msg):
        s = self.sessions.by_sid.get(msg.session)
        if s is None or s.state != CHALLENGED:
            return self._open_error(msg.txid, msg.session, sig.CAUSE_UNKNOWN_SESSION), []
        if msg.cause == sig.CAUSE_SYNC_FAILURE:
            # The device has seen vector ids above the registry's counter (a registry restored
            # from a backup): once AUTS proves it, the counter moves up and a fresh vector follows.
            self.counters["auth_sync_failures"] += 1
            try:
                self.registry.resync(s.identity, s.vector[1], msg.vid, msg.auts)
            except (WireError, ValueError, StoreError):
                self._close_challenge(now, s)
                return self._reject(msg, sig.CAUSE_AUTH_FAILED), []
            try:
                vec = self._vector(now, s.identity)
            except (ValueError, StoreError):
                self.counters["vector_failures"] += 1
                self._close_challenge(now, s)
                return self._reject(msg, sig.CAUSE_INTERNAL_ERROR, retry_after=RETRY_BUSY), []
            s.vector = vec
            s.created = now
            s.set_challenge_keys(authvec.derive(vec[3], vec[1], s.nonce))
            ch = sig.SigMsg(
                sig.CHALLENGE, txid=msg.txid, session=s.sid, down=True, rand=vec[1], autn=vec[4], vid=vec[0]
            )
            return sig.encode(ch), []
        # AUTN_INVALID: the device does not believe this challenge came from its home.
        self.counters["auth_autn_refused"] += 1
        self._close_challenge(now, s)
        return self._reject(msg, sig.CAUSE_AUTH_FAILED), []

    def _on_auth_response(self, now, s, msg):
        ident = s.identity
        if not authvec.ct_equal(msg.res, s.vector[2]):
            self.counters["auth_rejected"] += 1
            resp = self._reject(msg, sig.CAUSE_AUTH_FAILED, s.tx)
            self._close_challenge(now, s)
            return resp, []
        dev = self.registry.device(ident)
        old = self.sessions.by_identity.get(ident)
        cause = None
        if dev is None:
            cause = sig.CAUSE_UNKNOWN_IDENTITY
        elif dev.status == "killed":
            cause = sig.CAUSE_KILLED
        elif old is None and len(self.sessions.by_identity) >= self.cfg.max_devices:
            cause = sig.CAUSE_NO_RESOURCES
        if cause is not None:
            resp = self._reject(msg, cause, s.tx, RETRY_BUSY if cause == sig.CAUSE_NO_RESOURCES else None)
            self._close_challenge(now, s)
            return resp, []
        k = s.keys
        s.key_srtp(self.srtp_cls)
        self.sessions.registered(s, STUNNED if dev.status == "stunned" else REGISTERED, self.r._new_ssrc())
        if self.key_log is not None:
            self.r._log_keys("device_up", ident, s.ssrc, k.srtp_up_key, k.srtp_up_salt)
            self.r._log_keys("device_down", ident, s.ssrc, k.srtp_down_key, k.srtp_down_salt)
        s.key_id = ((old.key_id if old is not None else 0) + 1) & 0xFFFF
        s.txns = txn.Transactions(self.r._rand_u32(), answers=sig.answers)
        s.expires_at = tadd(now, self.cfg.expiry_ms)
        out = []
        inherited = old.affs if old is not None else []
        if old is not None:
            out.extend(self.r._retire(now, old, s.state))
        req = s.req_affs
        s.req_affs = None
        results = []
        if req and s.state == STUNNED:
            results = [(a[0], sig.AFF_NOT_AUTHORIZED) for a in req]
            s.affs = inherited
        elif req:
            # REGISTER listed what the device wants: that replaces what it had.
            results, _ = self._affiliate(now, s, req, False)
            for a in inherited:
                if s.aff(a[0]) is None:
                    out.extend(self.r._leave(now, ident, a[0]))
        else:
            s.affs = inherited
        self.sessions.index(s)
        if s.state == REGISTERED:
            for a in s.affs:
                out.extend(self.r._join(now, s, a[0]))
        self.r._save(s)
        self.counters["registrations"] += 1
        self.events.add((ev.REGISTERED, ident, s.ssrc))
        ack = sig.SigMsg(
            sig.REGISTER_ACK,
            txid=msg.txid,
            session=s.sid,
            down=True,
            relay=self.cfg.identity,
            keepalive=self._keepalive_s(),
            expiry=int(self.cfg.expiry),
            ssrc=s.ssrc,
            key_id=s.key_id,
            results=results,
        )
        resp = sig.encode(ack, s.tx)
        if s.state == STUNNED:
            out.extend(self._control(now, s, sig.CTRL_STUN))
        elif self.r._revive_pending(ident):
            s.revive_pending = True
            out.extend(self._control(now, s, sig.CTRL_REVIVE))
        self.r._arm(earliest(s.expires_at, tadd(now, self.r._silent_after())))
        return resp, out

    def _keepalive_s(self):
        return max(1, min(0xFFFF, int(self.cfg.keepalive)))

    def _on_keepalive(self, now, s, msg):
        self.counters["keepalives"] += 1
        left = tdiff(s.expires_at, now)
        if s.state == STUNNED:
            status = sig.KA_STUNNED
        elif left < self.cfg.keepalive_ms:
            # It missed its re-registration (due at 80 % of the expiry): ask for it now.
            status = sig.KA_REREGISTER
        else:
            status = sig.KA_OK
        resp = sig.encode(msg.reply(sig.KEEPALIVE_ACK, status=status, expiry=max(0, left // 1000)), s.tx)
        out = []
        if s.revive_pending and (s.ctrl_txid is None or s.ctrl_txid not in s.txns):
            out.extend(self._control(now, s, sig.CTRL_REVIVE))
        return resp, out

    # --- affiliation ------------------------------------------------------------------------------

    def _affiliate(self, now, s, entries, join):
        """Apply ``[(group, priority, flags)]`` to ``s``: ``(results, datagrams)``."""
        results = []
        out = []
        changed = False
        dev = self.registry.device(s.identity)
        for g, prio, flags in entries:
            code = self._may_join(dev, g)
            a = s.aff(g) if code == sig.AFF_OK else None
            new = False
            if code == sig.AFF_OK and a is None:
                if len(s.affs) >= self.cfg.max_affiliations:
                    code = sig.AFF_LIMIT_REACHED
                else:
                    a = [g, prio, flags]
                    s.affs.append(a)
                    new = changed = True
            if a is not None:
                if a[1] != prio or a[2] != flags:
                    a[1] = prio
                    a[2] = flags
                    changed = True
                if flags & sig.AFF_SELECTED:
                    for b in s.affs:
                        if b is not a and b[2] & sig.AFF_SELECTED:
                            b[2] &= ~sig.AFF_SELECTED
                            changed = True
                if sig.system_of(g) != self.cfg.system:
                    # Homed elsewhere and no interconnect yet: this relay arbitrates locally.
                    code = sig.AFF_LOCAL_ONLY
                if new and join and s.state == REGISTERED:
                    out.extend(self.r._join(now, s, g))
            results.append((g, code))
            self.events.add((ev.AFFILIATED, s.identity, g, code))
        if changed and join:
            self.r._save(s)
        self.counters["affiliations"] += len(entries)
        return results, out

    def _may_join(self, dev, g):
        if dev is None or not self.registry.may_affiliate(dev.identity, g):
            # The registry knows no such group here, or the device may not join it.
            if self.registry.group(g) is None and sig.system_of(g) == self.cfg.system:
                return sig.AFF_UNKNOWN_GROUP
            return sig.AFF_NOT_AUTHORIZED
        if self.r._floor(g) is None:
            return sig.AFF_UNKNOWN_GROUP
        return sig.AFF_OK

    def _on_deaffiliate(self, now, s, msg):
        results = []
        out = []
        changed = False
        for g in msg.groups:
            a = s.aff(g)
            if a is None:
                results.append((g, sig.AFF_NOT_AFFILIATED))
                continue
            s.affs.remove(a)
            changed = True
            if s.floor_group == g:
                s.floor_group = None
            out.extend(self.r._leave(now, s.identity, g))
            results.append((g, sig.AFF_OK))
            self.events.add((ev.DEAFFILIATED, s.identity, g))
        if changed:
            self.r._save(s)
        return sig.encode(msg.reply(sig.DEAFFILIATE_ACK, results=results), s.tx), out

    # --- emergency --------------------------------------------------------------------------------

    def _on_emergency_alert(self, now, s, msg):
        g = msg.group if msg.group is not None else s.talk_group()
        if g is None or s.aff(g) is None:
            return self._error(s, msg, sig.CAUSE_NOT_AUTHORIZED), []
        alerts = self.groups.alerts.get(g)
        if alerts is None:
            alerts = self.groups.alerts[g] = []
        if s.identity not in alerts:
            alerts.append(s.identity)
        self.counters["emergency_alerts"] += 1
        self.events.add((ev.EMERGENCY, g, s.identity))
        out = self._tell_members(
            now, g, s.identity, sig.EMERGENCY_ALERT, identity=s.identity, location=msg.location
        )
        return sig.encode(msg.reply(sig.EMERGENCY_ACK), s.tx), out

    def _on_emergency_cancel(self, now, s, msg):
        me = s.identity
        if msg.identity is not None and msg.identity != me:
            # Only a dispatcher may cancel someone else's emergency (Relay.cancel_emergency).
            return self._error(s, msg, sig.CAUSE_NOT_AUTHORIZED), []
        if msg.group is not None:
            if s.aff(msg.group) is None:
                return self._error(s, msg, sig.CAUSE_NOT_AUTHORIZED), []
            groups = [msg.group]
        else:
            groups = [g for g in self.groups.alerts if me in self.groups.alerts[g]]
            for a in s.affs:
                srv = self.groups.floors.get(a[0])
                if srv is not None and (srv.emergency or srv.imminent_peril) and a[0] not in groups:
                    groups.append(a[0])
        out = []
        for g in groups:
            alerts = self.groups.alerts.get(g)
            had = alerts is not None and me in alerts
            if had:
                alerts.remove(me)
                if not alerts:
                    del self.groups.alerts[g]
            srv = self.groups.floors.get(g)
            if srv is not None:
                # The floor server lifts a state only for the member that raised it. There is no
                # message of its own for imminent peril: the emergency cancel ends both.
                out.extend(self.r.media._floor_out(srv.cancel_emergency(now, me)))
                out.extend(self.r.media._floor_out(srv.cancel_imminent_peril(now, me)))
            if had:
                out.extend(self._tell_members(now, g, me, sig.EMERGENCY_CANCEL, identity=me))
                self.events.add((ev.EMERGENCY_CANCELLED, g, me))
        self.counters["emergency_cancels"] += 1
        return sig.encode(msg.reply(sig.EMERGENCY_ACK), s.tx), out

    def _tell_members(self, now, g, skip, mtype, **fields):
        srv = self.groups.floors.get(g)
        if srv is None:
            return []
        out = []
        for pid in srv.members:
            m = self.sessions.by_identity.get(pid)
            if pid != skip and m is not None and m.state == REGISTERED:
                out.append(self._send_request(now, m, mtype, group=g, **fields))
        return out

    # --- requests to a device ---------------------------------------------------------------------

    def _send_request(self, now, s, mtype, **fields):
        m = sig.SigMsg(mtype, txid=s.txns.new_txid(), session=s.sid, down=True, **fields)
        data = sig.encode(m, s.tx)
        t = s.txns.start(now, data)
        self.r._busy[s.sid] = s
        if self.r._txn_at is None or t.deadline < self.r._txn_at:
            self.r._txn_at = t.deadline
        return (s.addr, data)

    def _control(self, now, s, action):
        """DEVICE_CONTROL to the device (a list of at most one datagram). Revive and kill carry
        the home registry's sequence number and proof (protocol.md §6.6): only the holder of the
        device's secret may order them."""
        fields = {"action": action}
        if action != sig.CTRL_STUN:
            try:
                fields["seq"], fields["proof"] = self.registry.next_control(s.identity, action)
            except (ValueError, StoreError):
                self.counters["control_failures"] += 1
                return []
        if s.ctrl_txid is not None and s.txns is not None:
            # A newer order supersedes one still being retransmitted: a late copy of a stun must
            # not land after the revive that followed it.
            s.txns.cancel(s.ctrl_txid)
        self.counters["device_controls_sent"] += 1
        d = self._send_request(now, s, sig.DEVICE_CONTROL, **fields)
        s.ctrl_txid = struct.unpack_from(">I", d[1], 8)[0]
        return [d]

    def _on_sig_response(self, now, addr, s, msg):
        if s is None or s.txns is None:
            raise Drop("sig_unsolicited_response")
        t = s.txns.on_response(msg.txid, msg.type)
        if t is None:
            raise Drop("sig_unsolicited_response")
        if s.live:
            self.r._seen(s, now, addr)
        if msg.type == sig.DEVICE_CONTROL_ACK:
            self.counters["device_control_acks"] += 1
            if msg.action == sig.CTRL_REVIVE:
                s.revive_pending = False
                self.r._set_revive_pending(s.identity, False)
        elif msg.type == sig.ERROR:
            self.counters["device_errors"] += 1
        return []
