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

Why one part: a REGISTER at a relay with 10,000 registrations must not walk them (the challenge
count and the per-identity index), and whether a session id or SSRC is free is one question with
one answer (links and floor servers reserve theirs: ``taken``/``reserved``).
"""

import struct

from opmob.relay_session import CHALLENGED, CLOSED, STALE


class Sessions:
    def __init__(self, rand):
        self.rand = rand
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

    def new_sid(self, taken=None):
        """A fresh session id: non-zero, no session's, not in ``taken`` (links' ids)."""
        while True:
            sid = self._u32()
            if sid and sid not in self.by_sid and (taken is None or sid not in taken):
                return sid

    def new_ssrc(self, *reserved):
        """A fresh media SSRC: non-zero, no registration's, in none of the ``reserved`` maps
        (floor servers' SSRCs, link streams)."""
        while True:
            v = self._u32()
            if not v or v in self.by_ssrc:
                continue
            for r in reserved:
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

    def retire(self, s):
        """``s`` is replaced by a new registration of the same device: gone from every index."""
        self.unindex(s)
        if self.by_sid.get(s.sid) is s:
            del self.by_sid[s.sid]
        s.state = CLOSED
        s.txns = None
        s.drop_keys()
