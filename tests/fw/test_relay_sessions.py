"""The relay's sessions part (opmob.relay_sessions.Sessions) alone, on both runtimes: indexes,
allocators and a registration's state transitions, without a relay."""

from fwtest import Rng
from opmob.relay_session import CHALLENGED, CLOSED, REGISTERED, STALE, STUNNED, Session
from opmob.relay_sessions import Sessions


class ScriptedRand:
    """rand(4) from a script of 32-bit values (then zeros)."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, n):
        assert n == 4
        v = self.values.pop(0) if self.values else 0
        return bytes(((v >> 24) & 0xFF, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))


def test_allocators_skip_zero_taken_and_reserved_values():
    ss = Sessions(ScriptedRand([0, 5, 6, 7]))
    ss.by_sid[5] = "someone"
    assert ss.new_sid({6: "a link"}) == 7
    ss = Sessions(ScriptedRand([0, 9, 10, 11, 12]))
    ss.by_ssrc[9] = "someone"
    assert ss.new_ssrc({10: "a floor"}, {11: "a link stream"}) == 12


def test_challenges_counted_and_indexed_by_identity():
    ss = Sessions(Rng(1).bytes)
    a1 = Session("ann@no", ss.new_sid(), ("10.0.0.2", 1), 100)
    a2 = Session("ann@no", ss.new_sid(), ("10.0.0.2", 1), 200)
    b = Session("bob@no", ss.new_sid(), ("10.0.0.3", 1), 300)
    for s in (a1, a2, b):
        ss.open_challenge(s)
    assert ss.challenges == 3 and list(ss.challenges_of("ann@no")) == [a1, a2] and len(ss) == 3
    ss.forget_challenge(a1)  # replaced by a newer one
    assert ss.challenges == 2 and list(ss.challenges_of("ann@no")) == [a2] and a1.sid not in ss.by_sid
    ss.close_challenge(b, 999)  # refused: its keys linger for retransmissions
    assert b.state == CLOSED and b.expires_at == 999 and ss.challenges == 1 and b.sid in ss.by_sid
    assert ss.challenges_of("bob@no") == ()
    ss.registered(a2, REGISTERED, 0x1234)
    ss.index(a2)
    assert ss.challenges == 0 and a2.state == REGISTERED and ss.by_ssrc[0x1234] is a2
    assert ss.by_identity["ann@no"] is a2


def test_a_new_registration_replaces_the_old_in_every_index():
    ss = Sessions(Rng(2).bytes)
    old = Session("ann@no", ss.new_sid(), ("10.0.0.2", 1), 0)
    ss.restore(old)
    old.ssrc = 0x11
    ss.index(old)
    assert old.state == STALE and ss.by_identity["ann@no"] is old
    new = Session("ann@no", ss.new_sid(), ("10.0.0.2", 2), 10)
    ss.open_challenge(new)
    ss.registered(new, STUNNED, 0x22)
    ss.retire(old)
    ss.index(new)
    assert old.state == CLOSED and old.sid not in ss.by_sid and 0x11 not in ss.by_ssrc
    assert ss.by_identity["ann@no"] is new and ss.by_ssrc[0x22] is new and new.state == STUNNED
    ss.unindex(old)  # a late unindex of the old one leaves the new alone
    assert ss.by_identity["ann@no"] is new and new.state != CHALLENGED
