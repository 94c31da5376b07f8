"""Every registration a relay knows, in one place: indexes, allocators and the state transitions
of a ``Session`` (relay_session.py), sans-I/O. The relay's planes read the indexes; only this
part changes them.

    ss = Sessions(rand)
    ss.by_sid / ss.by_identity / ss.by_ssrc       session id -> Session (every state); identity
                                                  and SSRC -> its registration (live or stale)
    ss.new_sid(taken) / ss.new_ssrc(*reserved)    fresh non-zero ids, avoiding ``taken`` ones
    ss.open_challenge(s)                          a new half-open registration (challenged)
    ss.challenges / ss.challenges_of(identity)    counted and indexed: no walk of all sessions
    ss.forget_challenge(s) / ss.close_challenge(s, expires_at) / ss.registered(s, state, ssrc)
    ss.restore(s)                                 a stale registration from the store
    ss.index(s) / ss.unindex(s) / ss.retire(s)

and a registration's life across parts, given at construction what it touches (the store
adapter, the event log, counters) and, once built, the part that takes a member off its floors
(``ss.floors``: ``leave(now, identity, group) -> datagrams``, the media part):

    ss.seen(now, s, addr)                         authentic traffic from ``s`` (its address moves)
    ss.replace(now, old, new_state) -> datagrams  ``old`` gives way to a new registration
    ss.end(now, s, linger, keep_txns, cause) -> datagrams     de-registered, expired, killed
    ss.arm(s, t)                                  ``s``'s next deadline (expiry, challenge TTL)
    ss.sweep(now) -> datagrams                    the sessions whose deadline has come, only those
    ss.request_started(s) / ss.poll_requests(now) -> datagrams   the relay's requests to devices
    ss.next_deadline()

Each session has its own deadline in a wrap-safe heap (deadlines.py): a sweep costs O(log n) per
session due, never a walk of all of them. A deadline is filed when it can only come sooner
(registration, challenge, linger); traffic moves ``last_seen`` without touching the heap, and a
session whose filed deadline comes while it was heard from since is filed again, later.

Why one part: a REGISTER at a relay with 10,000 registrations must not walk them (the challenge
count and the per-identity index), and whether a session id or SSRC is free is one question with
one answer (links and floor servers reserve theirs: ``taken``/``reserved``).
"""

import struct

from opmob import relay_events as ev
from opmob import txn
from opmob.deadlines import Deadlines
from opmob.relay_session import CHALLENGED, CLOSED, REGISTERED, STALE, STUNNED
from opmob.ticks import due, earliest, tadd

CHALLENGE_TTL = 30000  # ms: a challenge outlives the device's whole retransmission span (19.5 s)
SILENT_KEEPALIVES = 3  # keep-alive intervals without a word before a registration is dropped


class Sessions:
    def __init__(self, rand, store=None, events=None, counters=None, keepalive_ms=30000):
        self.rand = rand
        self.store = store  # relay_store.RelayStore, or None (nothing kept)
        self.events = events if events is not None else ev.EventLog()
        self.counters = counters if counters is not None else {}
        self.silent_ms = (2 * SILENT_KEEPALIVES + 1) * keepalive_ms // 2
        self.floors = None  # the part that takes a member off its floors (set once built)
        self.due = Deadlines()  # session id -> its next deadline
        self.busy = {}  # session id -> Session with requests in flight to its device
        self.requests_due = Deadlines()  # session id -> its requests' next deadline
        self._taken_sids = []  # maps whose keys are session ids used elsewhere (links)
        self._taken_ssrcs = []  # maps whose keys are SSRCs used elsewhere (floors, link streams)
        self.by_sid = {}  # session id -> Session, every state
        self.by_identity = {}  # identity -> its registration (registered, stunned or stale)
        self.by_ssrc = {}  # media SSRC -> registration
        self.challenges = 0  # sessions in state challenged
        self._challenged = {}  # identity -> its sessions in state challenged, in order opened

    def __len__(self):
        return len(self.by_sid)

    def _u32(self):
        return struct.unpack(">I", self.rand(4))[0]

    # --- allocators --------------------------------------------------------------------------------

    def reserve_sids(self, taken):
        """Session ids in map ``taken`` (links') are never given out."""
        if all(t is not taken for t in self._taken_sids):
            self._taken_sids.append(taken)

    def reserve_ssrcs(self, taken):
        """SSRCs in map ``taken`` (floor servers', link streams') are never given out."""
        if all(t is not taken for t in self._taken_ssrcs):
            self._taken_ssrcs.append(taken)

    def new_sid(self, taken=None):
        """A fresh session id: non-zero, no session's, not in ``taken`` nor a reserved map."""
        while True:
            sid = self._u32()
            if not sid or sid in self.by_sid or (taken is not None and sid in taken):
                continue
            for r in self._taken_sids:
                if sid in r:
                    break
            else:
                return sid

    def new_ssrc(self, *reserved):
        """A fresh media SSRC: non-zero, no registration's, in none of the ``reserved`` maps nor
        the maps reserved before (floor servers' SSRCs, link streams)."""
        while True:
            v = self._u32()
            if not v or v in self.by_ssrc:
                continue
            for r in reserved + tuple(self._taken_ssrcs):
                if v in r:
                    break
            else:
                return v

    # --- indexes -----------------------------------------------------------------------------------

    def index(self, s):
        self.by_identity[s.identity] = s
        self.by_ssrc[s.ssrc] = s

    def unindex(self, s):
        if self.by_identity.get(s.identity) is s:
            del self.by_identity[s.identity]
        if self.by_ssrc.get(s.ssrc) is s:
            del self.by_ssrc[s.ssrc]

    # --- transitions -------------------------------------------------------------------------------

    def open_challenge(self, s):
        """``s`` (state challenged) is a new half-open registration."""
        self.by_sid[s.sid] = s
        self.due.set(s.sid, tadd(s.created, CHALLENGE_TTL))
        self.challenges += 1
        mine = self._challenged.get(s.identity)
        if mine is None:
            self._challenged[s.identity] = [s]
        else:
            mine.append(s)

    def challenges_of(self, identity):
        return self._challenged.get(identity, ())

    def _challenge_closed(self, s):
        self.challenges -= 1
        mine = self._challenged.get(s.identity)
        if mine is not None:
            if s in mine:
                mine.remove(s)
            if not mine:
                del self._challenged[s.identity]

    def forget_challenge(self, s):
        """An unanswered challenge is gone (expired, or replaced by a newer one)."""
        if self.by_sid.get(s.sid) is s and s.state == CHALLENGED:
            del self.by_sid[s.sid]
            self.due.set(s.sid, None)
            self._challenge_closed(s)
        s.drop_keys()

    def close_challenge(self, s, expires_at):
        """The challenge was answered with a refusal: its keys stay until ``expires_at`` so that
        a retransmission gets the same answer."""
        if s.state == CHALLENGED:
            self._challenge_closed(s)
        s.state = CLOSED
        s.keys = s.vector = None
        s.expires_at = expires_at
        self.arm(s, expires_at)

    def registered(self, s, state, ssrc):
        """The challenge was answered correctly: ``s`` is a registration (``state`` registered or
        stunned) with media SSRC ``ssrc``; ``index`` it once the old one is retired."""
        if s.state == CHALLENGED:
            self._challenge_closed(s)
        s.state = state
        s.ssrc = ssrc

    def restore(self, s):
        """A registration read back from the store after a restart: known, without keys."""
        s.state = STALE
        self.by_sid[s.sid] = s
        self.index(s)
        self.arm(s, tadd(s.last_seen, self.silent_ms))

    def retire(self, s):
        """``s`` is replaced by a new registration of the same device: gone from every index."""
        self.unindex(s)
        if self.by_sid.get(s.sid) is s:
            del self.by_sid[s.sid]
            self.due.set(s.sid, None)
        s.state = CLOSED
        s.txns = None
        s.drop_keys()

    # --- a registration's life across parts ---------------------------------------------------------

    def arm(self, s, t):
        """``s`` must be looked at by ``t`` (never later than a deadline filed before)."""
        self.due.set(s.sid, earliest(self.due.get(s.sid), t))

    def seen(self, now, s, addr):
        s.last_seen = now
        if addr != s.addr:
            s.addr = addr  # a new address (NAT rebinding, roaming between access points)
            if s.live and self.store is not None:
                self.store.moved(s)

    def replace(self, now, old, new_state):
        """``old`` is replaced by a new registration of the same device. Its floor memberships
        carry over (the new session re-joins under the same identity, keeping a floor it holds)."""
        out = []
        if old.state == REGISTERED and new_state != REGISTERED:
            for a in old.affs:
                out.extend(self.floors.leave(now, old.identity, a[0]))
        self.retire(old)
        self.busy.pop(old.sid, None)
        return out

    def end(self, now, s, linger, keep_txns=False, cause="deregistered"):
        """The registration is over (de-registered, silent, expired, killed)."""
        out = []
        if s.state != CLOSED:
            self.events.add((ev.DEREGISTERED, s.identity, cause))
        if s.state == REGISTERED:
            for a in s.affs:
                out.extend(self.floors.leave(now, s.identity, a[0]))
        self.unindex(s)
        if self.store is not None:
            self.store.unsave(s.identity)
        s.state = CLOSED
        s.srtp_rx = s.srtp_tx = None
        if not keep_txns:
            s.txns = None
            self.busy.pop(s.sid, None)
        if linger:
            # Its keys stay a cache lifetime, so a retransmitted request gets its cached answer.
            s.expires_at = tadd(now, txn.CACHE_TTL)
            self.arm(s, s.expires_at)
        elif s.sid in self.busy:
            s.expires_at = now  # goes when its requests are answered or time out
            self.due.set(s.sid, None)
        else:
            self.by_sid.pop(s.sid, None)
            self.due.set(s.sid, None)
            s.drop_keys()
        return out

    def _deadline(self, s, now):
        st = s.state
        if st == CLOSED:
            return s.expires_at if s.expires_at is not None else now
        if st == REGISTERED or st == STUNNED or st == STALE:
            return earliest(tadd(s.last_seen, self.silent_ms), s.expires_at)
        return tadd(s.created, CHALLENGE_TTL)

    def sweep_due(self, now):
        return self.due.first_due(now) is not None

    def sweep(self, now):
        """Every session whose deadline has come: expired, forgotten, or filed again later."""
        out = []
        d = self.due
        sid = d.first_due(now)
        while sid is not None:
            s = self.by_sid.get(sid)
            if s is None:
                d.set(sid, None)
            elif s.state == CLOSED and sid in self.busy:
                d.set(sid, None)  # filed again when its requests are answered or time out
            else:
                t = self._deadline(s, now)
                if not due(now, t):
                    d.set(sid, t)
                else:
                    st = s.state
                    d.set(sid, None)
                    if st == CLOSED:
                        del self.by_sid[sid]
                        s.drop_keys()
                    elif st == REGISTERED or st == STUNNED or st == STALE:
                        self.counters["sessions_expired"] = self.counters.get("sessions_expired", 0) + 1
                        out.extend(self.end(now, s, False, cause="expired"))
                    else:
                        self.forget_challenge(s)
            sid = d.first_due(now)
        return out

    def request_started(self, s):
        """The relay sent ``s``'s device a request (``s.txns.start``)."""
        self.busy[s.sid] = s
        self.requests_due.set(s.sid, s.txns.deadline())

    def poll_requests(self, now):
        """Retransmissions of the relay's requests to devices that are due; those that ran out
        are counted (``device_requests_timed_out``)."""
        out = []
        rd = self.requests_due
        sid = rd.first_due(now)
        while sid is not None:
            s = self.busy.get(sid)
            d = None
            if s is not None and s.txns is not None:
                resend, dead = s.txns.poll(now)
                for data in resend:
                    out.append((s.addr, data))
                for t in dead:
                    self.counters["device_requests_timed_out"] = (
                        self.counters.get("device_requests_timed_out", 0) + 1
                    )
                    if s.ctrl_txid == t.txid:
                        s.ctrl_txid = None
                d = s.txns.deadline()
            rd.set(sid, d)
            if d is None:
                self.busy.pop(sid, None)
                if s is not None and s.state == CLOSED and self.by_sid.get(sid) is s:
                    self.arm(s, now)
            sid = rd.first_due(now)
        return out

    def next_deadline(self):
        return earliest(self.due.earliest(), self.requests_due.earliest())
