"""One device's (or accessory's) side of the link to its relay, sans-I/O.

    dev = DeviceSession(identity, secret, relay_addr, rand, groups=["fire-1@no"])
    dev.start(now) -> [(addr, bytes)]            dev.on_datagram(now, addr, data) -> [(addr, bytes)]
    dev.poll(now) -> [(addr, bytes)]             dev.next_deadline() -> int | None
    dev.affiliate(now, groups)  dev.deaffiliate(now, groups)  dev.deregister(now)
    dev.send_floor(now, FloorMsg, group=None)    dev.send_voice(now, rtp_bytes)
    dev.send_voice_into(now, buf, n) -> length   dev.voice_sink = f(now, buf, n)   (no allocation)
    dev.emergency(now, group=None, location=None) / dev.cancel_emergency(now, group=None)
    dev.events  (the app drains it)              dev.state, dev.ssrc, dev.affiliated

``now`` is integer milliseconds modulo 2^30 (opmob/ticks.py), deadlines are such ints, compared
wrap-safely. ``keepalive`` and ``expiry`` stay in seconds, as the relay sent them.

It registers (checking the relay's AUTN before it answers, protocol.md §6.3), keeps the
registration alive, re-registers by itself (at 80 % of the expiry, when the relay asks, when the
relay has forgotten it after a restart, when it goes silent) and then re-affiliates to the groups it
was asked to join. Floor messages and voice go over SRTCP/SRTP with the hop keys of the current
registration; Floor Acks are sent here, not by the app.

Events, as tuples: ("registered", ssrc), ("rejected", cause), ("relay_refused", cause) (the
relay's challenge did not come from our home: not registered), ("relay_lost",),
("reregister", cause), ("affiliation", group, result), ("deaffiliated", group, result), ("floor", group, FloorMsg),
("voice", rtp_bytes) (unless ``voice_sink`` is set, see below), ("stunned",), ("revived",), ("killed",) (erase the secret from flash now),
("emergency_alert", group, identity, location), ("emergency_cancel", group, identity),
("error", request_type, cause), ("deregistered",), ("persist", vid_state, ctrl_state) (write both
to flash before sending what the call returned: they keep old challenges and controls from
being replayed after a reboot).

The voice path without allocation (besides what hashlib makes, docs/accessory-audio.md):
``send_voice_into(now, buf, n)`` sets the SSRC of the RTP packet in ``buf[:n]`` and protects it in
place (``buf`` needs srtp.TAG_LEN bytes of room after it), returning the SRTP length to send, or 0
when not registered; sending voice moves no timer, so ``now`` may be None (a float is a heap
object on MicroPython). With ``voice_sink`` set, received voice is decrypted into a preallocated
buffer and handed over as ``voice_sink(now, buf, n)``, the RTP packet being ``buf[:n]``, valid only
during the call, instead of a ("voice", rtp_bytes) event; ``on_datagram`` then answers a voice
packet with an empty tuple rather than a new empty list (nothing to send either way).
"""

import struct

from opmob import authvec, mcpt, sig, srtp, txn
from opmob.errors import AuthFailed, Replayed, UnknownStream, WireError
from opmob.floorid import floor_ssrc
from opmob.ticks import due, tadd

IDLE = "idle"  # not started, or de-registered
REGISTERING = "registering"
REGISTERED = "registered"
STUNNED = "stunned"  # registered, but may do nothing until the home revives it
WAITING = "waiting"  # refused or lost: registers again when the back-off runs out
KILLED = "killed"

BACKOFF_MIN = 1000  # ms
BACKOFF_MAX = 64000  # ms
BACKOFF_REFUSED = 300000  # ms: a relay that is not our home's, or a registry that refuses us
REREGISTER_AT = 0.8  # of the expiry (protocol.md §8.1)
PROBE = 1000  # ms: a Floor Request unanswered this long: ask the relay whether it still knows us
EMERGENCY_RTO = 100  # ms: an emergency's first retransmission comes sooner than other requests'
# ms: the longest wait a timer is set for. The clock compares times correctly only while they are
# less than 2^29 ms (6.2 days) apart; a relay's expiry may be longer (up to 2^32 s on the wire), so
# the re-registration it implies is brought forward to this (it only renews the registration).
MAX_WAIT = 5 * 86400000
RX_STREAMS = 256  # talkers and floor servers heard under one key; bounded, never evicted
UP_STREAMS = 2
RX_BUF_MIN = 128  # bytes: a DVI4 voice packet (12 + 84 + the 10-byte tag) and some room

_REGISTER_STEPS = (sig.REGISTER, sig.AUTH_RESPONSE, sig.AUTH_FAILURE)
_LONG_CAUSES = (
    sig.CAUSE_KILLED,
    sig.CAUSE_UNKNOWN_IDENTITY,
    sig.CAUSE_AUTH_FAILED,
    sig.CAUSE_ROAMING_NOT_ALLOWED,
)
_NOTHING = ()  # what a voice packet given to voice_sink answers: no list made per packet
_REFUSED = "refused"  # ctx of an AUTH_FAILURE sent to a relay we do not trust: its answer is moot

COUNTERS = (
    "rx_datagrams",
    "accepted",
    "registrations",
    "autn_refused",
    "sync_failures",
    "control_refused",
    "floor_refused",
    "voice_refused",
    "voice_rx",
    "floor_rx",
)


def _serial_after(a, b):
    """32-bit serial-number order (RFC 1982): ``a`` was issued after ``b``."""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


class _Skip(Exception):
    pass


class DeviceSession:
    def __init__(
        self, identity, secret, relay_addr, rand, caps=0, groups=(), vid_state=None, ctrl_state=None
    ):
        if not sig.valid_identity(identity):
            raise ValueError("identity must be name@system")
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != authvec.K_LEN:
            raise ValueError("secret must be %d bytes" % authvec.K_LEN)
        self.identity = identity
        self._k = bytes(secret)
        self.relay_addr = relay_addr
        self.rand = rand
        self.caps = caps
        self.state = IDLE
        self.events = []
        self.voice_sink = None
        self._rx_buf = None  # made when voice_sink is first used
        c = {}
        for k in COUNTERS:
            c[k] = 0
        self.counters = c
        self.vid_window = txn.ReplayWindow(64, *vid_state) if vid_state else txn.ReplayWindow()
        self.ctrl_window = txn.ReplayWindow(64, *ctrl_state) if ctrl_state else txn.ReplayWindow()
        self._txns = txn.Transactions(self._u32(), answers=sig.answers)
        self._wanted = []  # [group, priority, flags] the app asked for, in its order
        self._results = {}  # group -> result code from the relay, this registration
        self._floor_groups = {}  # floor server SSRC -> group
        self._stunned = False
        self._backoff = BACKOFF_MIN
        self._cache = txn.ResponseCache(16)
        self._clear_session()
        self._clear_attempt()
        self._retry_at = None
        self._probe_at = None
        for g in groups:
            self._want(g)

    def __repr__(self):
        return "DeviceSession(%s, %s)" % (self.identity, self.state)

    def _u32(self):
        return struct.unpack(">I", self.rand(4))[0]

    def _clear_session(self):
        self.session = 0
        self._ctrl_last_txid = None  # transaction id of the last control order obeyed, this session
        self._tx = self._rx = None
        self._up = self._down = None
        self._in_window = None
        self.ssrc = None
        self.keepalive = None
        self.expiry = None
        self.key_id = None
        self.relay = None
        self._ka_at = None
        self._ka_txid = None
        self._rereg_at = None
        self._aff_txid = None

    def _clear_attempt(self):
        self._reg_txid = None
        self._nonce = None
        self._p_sid = 0
        self._p_keys = None
        self._p_tx = self._p_rx = None

    @property
    def registered(self):
        return self.state == REGISTERED or self.state == STUNNED

    @property
    def affiliated(self):
        """Groups the relay has confirmed in this registration."""
        return [a[0] for a in self._wanted if self._results.get(a[0]) in (sig.AFF_OK, sig.AFF_LOCAL_ONLY)]

    # --- the app's interface ----------------------------------------------------------------------

    def start(self, now):
        if self.state == KILLED:
            return []
        return self._register(now)

    def affiliate(self, now, groups):
        """Join ``groups``: identities, or ``(group, priority, flags)``. Remembered across
        re-registrations."""
        for g in groups:
            self._want(g)
        return self._maybe_affiliate(now)

    def deaffiliate(self, now, groups):
        gone = []
        for g in groups:
            for a in self._wanted:
                if a[0] == g:
                    self._wanted.remove(a)
                    gone.append(g)
                    break
            self._results.pop(g, None)
        self._map_floors()
        if not gone or self.state != REGISTERED:
            return []
        return self._request(now, sig.DEAFFILIATE, groups=gone)

    def deregister(self, now):
        if not self.registered:
            return []
        self._ka_at = self._rereg_at = None
        return self._request(now, sig.DEREGISTER, cause=sig.CAUSE_POWER_OFF)

    def emergency(self, now, group=None, location=None):
        if self.state != REGISTERED:
            return []
        return self._request(now, sig.EMERGENCY_ALERT, group=group, location=location, rto=EMERGENCY_RTO)

    def cancel_emergency(self, now, group=None):
        if self.state != REGISTERED:
            return []
        return self._request(now, sig.EMERGENCY_CANCEL, group=group, rto=EMERGENCY_RTO)

    def send_floor(self, now, msg, group=None):
        """Send a floor message (its SSRC is set to ours). ``group`` names the group it is for by
        its floor server's SSRC in the SSRC field; without it the relay uses the talk group."""
        if self.state != REGISTERED:
            self.counters["floor_refused"] += 1
            return []
        msg.ssrc = self.ssrc
        if group is not None:
            msg.ssrc_field = floor_ssrc(group)
        if msg.kind == mcpt.FLOOR_REQUEST:
            self._probe_at = tadd(now, PROBE)
        return [(self.relay_addr, self._up.protect_rtcp(mcpt.encode(msg)))]

    def send_voice(self, now, rtp):
        """Send one RTP packet; its SSRC is replaced by the one the relay assigned."""
        if self.state != REGISTERED:
            self.counters["voice_refused"] += 1
            return []
        b = bytearray(rtp)
        struct.pack_into(">I", b, 8, self.ssrc)
        return [(self.relay_addr, self._up.protect(b))]

    def send_voice_into(self, now, buf, n):
        """Protect in place the RTP packet ``buf[:n]`` under our SSRC; returns the length of the
        SRTP packet in ``buf`` to send to ``relay_addr``, or 0 when not registered."""
        if self.state != REGISTERED:
            self.counters["voice_refused"] += 1
            return 0
        if n < 12:
            raise ValueError("RTP packet shorter than 12 bytes")
        struct.pack_into(">I", buf, 8, self.ssrc)
        return self._up.protect_into(buf, n)

    def _want(self, g):
        if isinstance(g, str):
            g = (g, 0, 0)
        name, prio, flags = g
        if not sig.valid_identity(name):
            raise ValueError("group must be name@system")
        for v in (prio, flags):
            if not isinstance(v, int) or not 0 <= v <= 255:
                raise ValueError("affiliation priority and flags must be 0..255")
        for a in self._wanted:
            if a[0] == name:
                a[1] = prio
                a[2] = flags
                self._results.pop(name, None)
                return
        self._wanted.append([name, prio, flags])
        self._map_floors()

    def _map_floors(self):
        m = {}
        for a in self._wanted:
            m[floor_ssrc(a[0])] = a[0]
        self._floor_groups = m

    # --- timers -----------------------------------------------------------------------------------

    def poll(self, now):
        if self.state == KILLED:
            return []
        out = []
        resend, dead = self._txns.poll(now)
        for data in resend:
            out.append((self.relay_addr, data))
        for t in dead:
            out.extend(self._timed_out(now, t))
        if self._retry_at is not None and due(now, self._retry_at):
            out.extend(self._register(now))
        if self._rereg_at is not None and due(now, self._rereg_at):
            self._rereg_at = None
            out.extend(self._register(now))
        if self._ka_at is not None and due(now, self._ka_at):
            out.extend(self._keepalive(now))
        if self._probe_at is not None and due(now, self._probe_at):
            self._probe_at = None
            if self.registered and self._ka_txid is None:
                out.extend(self._keepalive(now))
        return out

    def next_deadline(self):
        if self.state == KILLED:
            return None
        earlier = txn.earlier
        d = earlier(self._txns.deadline(), self._retry_at)
        d = earlier(d, self._rereg_at)
        d = earlier(d, self._ka_at)
        return earlier(d, self._probe_at)

    def _timed_out(self, now, t):
        mt = t.type
        if mt == sig.KEEPALIVE:
            self._ka_txid = None
            self.events.append(("relay_lost",))
            self._lose_session()
            return self._register(now)
        if mt in _REGISTER_STEPS:
            if t.ctx == _REFUSED or t.txid != self._reg_txid:
                return []
            self._clear_attempt()
            self._wait(now, None)
            return []
        if mt == sig.AFFILIATE and t.txid == self._aff_txid:
            self._aff_txid = None
        elif mt == sig.DEREGISTER:
            self._deregistered()
        return []

    def _later(self, now, delay):
        """The deadline ``delay`` ms after ``now``, brought forward to at most MAX_WAIT."""
        return tadd(now, delay if delay < MAX_WAIT else MAX_WAIT)

    def _wait(self, now, delay):
        """Try to register again later (``delay`` in ms; None: the back-off); a registration still
        in force carries on meanwhile."""
        if delay is None:
            delay = self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        # Up to a quarter longer (never shorter: a retry_after is a minimum), so that devices that
        # lost the same relay do not all come back in the same instant.
        delay += delay * self.rand(1)[0] // 1024
        if self.registered:
            self._rereg_at = self._later(now, delay)
        else:
            self.state = WAITING
            self._retry_at = self._later(now, delay)

    # --- sending ------------------------------------------------------------------------------------

    def _request(self, now, mtype, ctx=None, rto=None, **fields):
        m = sig.SigMsg(mtype, txid=self._txns.new_txid(), session=self.session, **fields)
        data = sig.encode(m, self._tx)
        self._txns.start(now, data, ctx=ctx, rto=rto)
        if mtype == sig.AFFILIATE:
            self._aff_txid = m.txid
        elif mtype == sig.KEEPALIVE:
            self._ka_txid = m.txid
        return [(self.relay_addr, data)]

    def _register(self, now):
        if self.state == KILLED:
            return []
        if self._reg_txid is not None:
            self._txns.cancel(self._reg_txid)
        self._clear_attempt()
        self._retry_at = None
        self._rereg_at = None
        self._nonce = self.rand(authvec.NONCE_LEN)
        affs = [(a[0], a[1], a[2]) for a in self._wanted]
        m = sig.SigMsg(
            sig.REGISTER,
            txid=self._txns.new_txid(),
            identity=self.identity,
            nonce=self._nonce,
            caps=self.caps or None,
            affiliations=affs,
        )
        data = sig.encode(m)
        self._txns.start(now, data)
        self._reg_txid = m.txid
        if not self.registered:
            self.state = REGISTERING
        return [(self.relay_addr, data)]

    def _keepalive(self, now):
        self._ka_at = None
        return self._request(now, sig.KEEPALIVE)

    def _maybe_affiliate(self, now):
        if self.state != REGISTERED or self._aff_txid is not None or self._reg_txid is not None:
            return []
        todo = [(a[0], a[1], a[2]) for a in self._wanted if a[0] not in self._results]
        if not todo:
            return []
        return self._request(now, sig.AFFILIATE, affiliations=todo)

    def _lose_session(self):
        self._clear_session()
        self._txns = txn.Transactions(self._txns.new_txid(), answers=sig.answers)
        if self.state != KILLED:
            self.state = REGISTERING

    # --- receiving ------------------------------------------------------------------------------------

    def _drop(self, reason):
        k = "drop_" + reason
        self.counters[k] = self.counters.get(k, 0) + 1

    def on_datagram(self, now, addr, data):
        self.counters["rx_datagrams"] += 1
        try:
            if self.state == KILLED:
                raise _Skip("killed")
            if addr != self.relay_addr:
                raise _Skip("foreign")  # only our relay may talk to us
            if not data:
                raise _Skip("empty")
            b0 = data[0]
            if b0 == 0x4F:
                out = self._on_sig(now, data)
            elif b0 >> 6 == 2 and len(data) > 1:
                if 192 <= data[1] <= 223:
                    out = self._on_rtcp(now, data)
                else:
                    out = self._on_rtp(now, data)
            else:
                raise _Skip("not_ours")
        except _Skip as e:
            self._drop(e.args[0])
            return []
        self.counters["accepted"] += 1
        return out

    def _on_sig(self, now, data):
        try:
            h = sig.peek(data)
        except WireError as e:
            raise _Skip("sig_" + e.counter)
        if not h.down:
            raise _Skip("sig_wrong_direction")
        key = None
        if h.protected:
            if h.session and h.session == self.session and self._rx is not None:
                key = self._rx
            elif h.session and h.session == self._p_sid and self._p_rx is not None:
                key = self._p_rx
            else:
                raise _Skip("sig_unknown_session")
        try:
            msg = sig.decode(data, key)
        except WireError as e:
            raise _Skip("sig_" + e.counter)
        if msg.is_response:
            t = self._txns.on_response(msg.txid, msg.type)
            if t is None:
                raise _Skip("sig_unsolicited")
            return self._on_response(now, t, msg)
        if not msg.protected or key is not self._rx:
            raise _Skip("sig_unexpected_request")
        cached = self._cache.lookup(now, self.session, msg.txid)
        if cached is not None and cached is not txn.PENDING:
            return [(self.relay_addr, cached)]
        if not self._in_window.fresh(msg.txid):
            raise _Skip("sig_replayed")
        self._in_window.accept(msg.txid)
        sid = self.session
        resp, out = self._on_request(now, msg)
        self._cache.store(now, sid, msg.txid, resp)
        res = [(self.relay_addr, resp)]
        res.extend(out)
        return res

    def _on_response(self, now, t, msg):
        rt = t.type
        mt = msg.type
        if mt == sig.ERROR:
            return self._on_error(now, t, msg)
        if rt in _REGISTER_STEPS:
            if t.ctx == _REFUSED or t.txid != self._reg_txid:
                return []
            if mt == sig.CHALLENGE:
                return self._on_challenge(now, msg)
            if mt == sig.REGISTER_REJECT:
                return self._on_reject(now, msg)
            return self._on_register_ack(now, msg)
        if rt == sig.KEEPALIVE:
            self._ka_txid = None
            self._ka_at = self._later(now, self.keepalive * 1000)
            self._backoff = BACKOFF_MIN
            if msg.status == sig.KA_STUNNED:
                self._stun()
            elif msg.status == sig.KA_REREGISTER:
                self.events.append(("reregister", sig.CAUSE_EXPIRED))
                return self._register(now)
            return self._maybe_affiliate(now)
        if rt == sig.AFFILIATE or rt == sig.DEAFFILIATE:
            if rt == sig.AFFILIATE:
                self._aff_txid = None
            for g, code in msg.results:
                if rt == sig.AFFILIATE:
                    self._results[g] = code
                    self.events.append(("affiliation", g, code))
                else:
                    self.events.append(("deaffiliated", g, code))
            return self._maybe_affiliate(now)
        if rt == sig.DEREGISTER:
            self._deregistered()
        return []

    def _on_error(self, now, t, msg):
        cause = msg.cause
        rt = t.type
        self.events.append(("error", rt, cause))
        if rt in _REGISTER_STEPS:
            if t.ctx == _REFUSED or t.txid != self._reg_txid:
                return []
            self._clear_attempt()
            self._wait(now, None if msg.retry_after is None else msg.retry_after * 1000)
            return []
        if rt == sig.DEREGISTER:
            self._deregistered()
            return []
        if rt == sig.AFFILIATE:
            self._aff_txid = None
        if rt == sig.KEEPALIVE:
            self._ka_txid = None
            self._ka_at = self._later(now, self.keepalive * 1000)
        if cause == sig.CAUSE_UNKNOWN_SESSION:
            # The relay has no keys for us (it restarted, or dropped us): register again. An open
            # ERROR is advice only, and trying again is all it can make us do (protocol.md §5).
            if self.state == REGISTERING and self._reg_txid is not None:
                return []  # already at it: another request of the lost session said the same
            self.events.append(("reregister", cause))
            self._lose_session()
            return self._register(now)
        if cause == sig.CAUSE_STUNNED and msg.protected:
            self._stun()
        return []

    def _deregistered(self):
        self._lose_session()
        self._clear_attempt()
        self.state = IDLE
        self.events.append(("deregistered",))

    # --- registration -------------------------------------------------------------------------------

    def _on_challenge(self, now, msg):
        try:
            res, ks = authvec.device_respond(self._k, msg.rand, msg.autn, msg.vid)
        except AuthFailed:
            # Not made with our secret: not our home's vector. Tell it, trust it no further.
            self.counters["autn_refused"] += 1
            self.events.append(("relay_refused", sig.CAUSE_AUTN_INVALID))
            self._clear_attempt()
            out = self._open_request(
                now, sig.AUTH_FAILURE, msg.session, _REFUSED, cause=sig.CAUSE_AUTN_INVALID
            )
            self._wait(now, BACKOFF_REFUSED)
            return out
        if not self.vid_window.fresh(msg.vid):
            self.counters["sync_failures"] += 1
            hi = self.vid_window.highest
            auts = authvec.auts(self._k, msg.rand, hi)
            return self._open_request(
                now, sig.AUTH_FAILURE, msg.session, None, cause=sig.CAUSE_SYNC_FAILURE, vid=hi, auts=auts
            )
        self.vid_window.accept(msg.vid)
        self._persist()
        keys = authvec.derive(ks, msg.rand, self._nonce)
        self._p_sid = msg.session
        self._p_keys = keys
        self._p_tx, self._p_rx = sig.keys(keys, False)
        m = sig.SigMsg(sig.AUTH_RESPONSE, txid=self._txns.new_txid(), session=msg.session, res=res)
        data = sig.encode(m, self._p_tx)
        self._txns.start(now, data)
        self._reg_txid = m.txid
        return [(self.relay_addr, data)]

    def _open_request(self, now, mtype, session, ctx, **fields):
        m = sig.SigMsg(mtype, txid=self._txns.new_txid(), session=session, **fields)
        data = sig.encode(m)
        self._txns.start(now, data, ctx=ctx)
        if ctx != _REFUSED:
            self._reg_txid = m.txid
        return [(self.relay_addr, data)]

    def _on_reject(self, now, msg):
        cause = msg.cause
        self.events.append(("rejected", cause))
        self._clear_attempt()
        delay = None if msg.retry_after is None else msg.retry_after * 1000
        if delay is None and cause in _LONG_CAUSES:
            delay = BACKOFF_REFUSED
        self._wait(now, delay)
        return []

    def _on_register_ack(self, now, msg):
        if msg.type != sig.REGISTER_ACK or not msg.protected or msg.session != self._p_sid:
            return []
        k = self._p_keys
        # Requests of the previous registration die with its keys.
        self._txns = txn.Transactions(self._txns.new_txid(), answers=sig.answers)
        self._clear_session()
        self.session = self._p_sid
        self._tx, self._rx = self._p_tx, self._p_rx
        self._up = srtp.SrtpSession(k.srtp_up_key, k.srtp_up_salt, max_streams=UP_STREAMS)
        self._down = srtp.SrtpSession(k.srtp_down_key, k.srtp_down_salt, max_streams=RX_STREAMS)
        self._in_window = txn.ReplayWindow()
        self._clear_attempt()
        self.ssrc = msg.ssrc
        self.keepalive = msg.keepalive
        self.expiry = msg.expiry
        self.key_id = msg.key_id
        self.relay = msg.relay
        self.state = STUNNED if self._stunned else REGISTERED
        self._backoff = BACKOFF_MIN
        self._retry_at = None
        self._ka_at = self._later(now, self.keepalive * 1000)
        self._rereg_at = self._later(now, self.expiry * 800)  # REREGISTER_AT of it, in ms
        self.counters["registrations"] += 1
        self.events.append(("registered", self.ssrc))
        self._results = {}
        for g, code in msg.results:
            self._results[g] = code
            self.events.append(("affiliation", g, code))
        return self._maybe_affiliate(now)

    def _persist(self):
        self.events.append(("persist", self.vid_window.state(), self.ctrl_window.state()))

    # --- requests from the relay ----------------------------------------------------------------------

    def _on_request(self, now, msg):
        t = msg.type
        if t == sig.DEVICE_CONTROL:
            return self._on_control(now, msg)
        if t == sig.EMERGENCY_ALERT:
            self.events.append(("emergency_alert", msg.group, msg.identity, msg.location))
            return self._reply(msg, sig.EMERGENCY_ACK), []
        if t == sig.EMERGENCY_CANCEL:
            self.events.append(("emergency_cancel", msg.group, msg.identity))
            return self._reply(msg, sig.EMERGENCY_ACK), []
        if t == sig.AFFILIATION_QUERY:
            affs = [(a[0], a[1], a[2]) for a in self._wanted if a[0] in self.affiliated]
            return self._reply(msg, sig.AFFILIATION_REPORT, identity=self.identity, affiliations=affs), []
        return self._reply(msg, sig.ERROR, cause=sig.CAUSE_UNSUPPORTED), []

    def _reply(self, msg, mtype, **fields):
        return sig.encode(msg.reply(mtype, **fields), self._tx)

    def _on_control(self, now, msg):
        a = msg.action
        if a == sig.CTRL_STUN:
            # Stunning is the safe direction: the session's authentication is enough (§6.6). A stun
            # the relay sent before the last revive we obeyed (a delayed copy) is acknowledged but
            # not applied: the relay's orders carry increasing transaction ids within a session.
            last = self._ctrl_last_txid
            if last is None or _serial_after(msg.txid, last):
                self._ctrl_last_txid = msg.txid
                self._stun()
            return self._reply(msg, sig.DEVICE_CONTROL_ACK, action=a), []
        try:
            if msg.seq is None:
                raise AuthFailed("revive and kill need the home's proof")
            authvec.check_control_proof(self._k, self.identity, a, msg.seq, msg.proof)
            self.ctrl_window.accept(msg.seq)
        except (AuthFailed, Replayed):
            self.counters["control_refused"] += 1
            return self._reply(msg, sig.ERROR, cause=sig.CAUSE_NOT_AUTHORIZED), []
        self._persist()
        self._ctrl_last_txid = msg.txid
        ack = self._reply(msg, sig.DEVICE_CONTROL_ACK, action=a)
        if a == sig.CTRL_KILL:
            self.events.append(("killed",))
            self._k = None
            self._wanted = []
            self._lose_session()
            self._clear_attempt()
            self._retry_at = self._probe_at = None
            self.state = KILLED
            return ack, []
        self._stunned = False
        if self.state == STUNNED:
            self.state = REGISTERED
        # What was refused while stunned may be granted now.
        for g in list(self._results):
            if self._results[g] not in (sig.AFF_OK, sig.AFF_LOCAL_ONLY):
                del self._results[g]
        self.events.append(("revived",))
        return ack, self._maybe_affiliate(now)

    def _stun(self):
        if not self._stunned:
            self.events.append(("stunned",))
        self._stunned = True
        if self.state == REGISTERED:
            self.state = STUNNED

    # --- media ----------------------------------------------------------------------------------------

    def _on_rtcp(self, now, data):
        if self._down is None:
            raise _Skip("rtcp_no_keys")
        try:
            msgs = mcpt.decode_compound(self._down.unprotect_rtcp(data))
        except UnknownStream:
            raise _Skip(self._stream_trouble(now, "rtcp"))
        except WireError as e:
            raise _Skip("rtcp_" + e.counter)
        self._probe_at = None
        out = []
        for m in msgs:
            self.counters["floor_rx"] += 1
            if m.ack_req and self.state == REGISTERED:
                ack = mcpt.FloorMsg(
                    mcpt.FLOOR_ACK,
                    self.ssrc,
                    source=mcpt.SOURCE_PARTICIPANT,
                    msg_type=m.kind,
                    ssrc_field=m.ssrc,
                )
                out.append((self.relay_addr, self._up.protect_rtcp(mcpt.encode(ack))))
            self.events.append(("floor", self._floor_groups.get(m.ssrc), m))
        return out

    def _on_rtp(self, now, data):
        if self._down is None:
            raise _Skip("rtp_no_keys")
        sink = self.voice_sink
        try:
            if sink is None:
                plain = self._down.unprotect(data)
            else:
                n = len(data)
                if n > srtp.MAX_PACKET:
                    self._down.unprotect(data)  # raises Oversized, as without a sink
                buf = self._rx_buf
                if buf is None or len(buf) < n:
                    # Sized to the packets heard (a voice packet is 106 bytes), not to MAX_PACKET:
                    # the accessory's heap budget is 64 KB. It grows, rarely, never shrinks.
                    buf = self._rx_buf = bytearray(n if n > RX_BUF_MIN else RX_BUF_MIN)
                buf[:n] = data  # a slice literal store: no slice object on MicroPython >= 1.23
                n = self._down.unprotect_into(buf, n)
        except UnknownStream:
            raise _Skip(self._stream_trouble(now, "rtp"))
        except WireError as e:
            raise _Skip("rtp_" + e.counter)
        self.counters["voice_rx"] += 1
        if sink is None:
            self.events.append(("voice", plain))
            return []
        sink(now, buf, n)
        return _NOTHING

    def _stream_trouble(self, now, plane):
        if self._down.stream_count() >= RX_STREAMS and self._reg_txid is None:
            # Heard more streams than one key may hold: fresh keys give fresh tables.
            self._rereg_at = now
            return plane + "_streams_full"
        return plane + "_unknown_stream"
