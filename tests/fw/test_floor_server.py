"""Controlling floor-control server (opmob.floor_server): exact message sequences and invariants.

Default timers unless a test says otherwise: T1 4 s, T2 30 s, T3 3 s, T7 1 s (C7 10), T8 1 s,
T20 1 s (C20 3). Members a, b, c join at t=0 with SSRCs 0x1000, 0x1001, 0x1002.

Times are written in seconds from the test's start, ``at(s)``, which is the server's clock (int
milliseconds modulo 2^30): the start T0 lies 3 s before the clock wraps, so every scenario runs
across the wrap.
"""

from fwtest import Rng, raises
from opmob.floor_server import (
    CLASS_EMERGENCY,
    G_IDLE,
    G_INITIALISING,
    G_PENDING_REVOKE,
    G_RELEASING,
    G_START_STOP,
    G_TAKEN,
    QUEUE_POS_NOT_QUEUED,
    U_IDLE,
    U_PENDING_REVOKE,
    U_PERMITTED,
    U_RELEASING,
    U_SENDS_MEDIA,
    U_TAKEN,
    FloorConfig,
    FloorServer,
)
from opmob.ticks import PERIOD, tadd, tdiff
from opmob.mcpt import (
    FLOOR_ACK,
    FLOOR_DENY,
    FLOOR_GRANTED,
    FLOOR_IDLE,
    FLOOR_QUEUE_POSITION_INFO,
    FLOOR_QUEUE_POSITION_REQUEST,
    FLOOR_RELEASE,
    FLOOR_REQUEST,
    FLOOR_REVOKE,
    FLOOR_TAKEN,
    IND_EMERGENCY,
    IND_IMMINENT_PERIL,
    IND_NORMAL,
    IND_QUEUEING_SUPPORTED,
    SOURCE_CONTROLLING,
    FloorMsg,
)

SRV = 0x5EC0F100
T0 = PERIOD - 3000  # 3 s before the 2^30 ms clock wraps


def at(seconds):
    """The clock reading ``seconds`` after the test's start."""
    return tadd(T0, int(round(seconds * 1000)))


Q = IND_QUEUEING_SUPPORTED
G_STATES = (G_START_STOP, G_INITIALISING, G_IDLE, G_TAKEN, G_PENDING_REVOKE, G_RELEASING)
U_STATES = (U_IDLE, U_TAKEN, U_PERMITTED, U_PENDING_REVOKE, U_SENDS_MEDIA, U_RELEASING)


def ssrc_of(pid):
    return 0x1000 + "abcdefgh".index(pid)


def group(n=3, settle=True, ceilings=None, **kw):
    """A group of n members joined at t=0; ``settle`` acks their Floor Idle so no timer runs."""
    srv = FloorServer("fire-1@no", FloorConfig(**kw), server_ssrc=SRV)
    for pid in "abcdefgh"[:n]:
        ceiling = (ceilings or {}).get(pid, 255)
        srv.join(at(0.0), pid, pid + "@no", ssrc_of(pid), ceiling=ceiling)
    if settle:
        for pid in srv.members:
            assert srv.on_message(at(0.0), pid, ack(FLOOR_IDLE)) == []
        assert srv.next_deadline() is None
    return srv


def req(prio=None, ind=0, queue=True):
    flags = ind | (Q if queue else 0)
    return FloorMsg(FLOOR_REQUEST, ssrc=0x1234, priority=prio, indicator=flags or None)


def rel(ack_req=False):
    return FloorMsg(FLOOR_RELEASE, ssrc=0x1234, ack_req=ack_req)


def ack(kind):
    return FloorMsg(FLOOR_ACK, ssrc=0x1234, source=0, msg_type=kind)


def shape(outs):
    return [(pid, m.kind) for pid, m in outs]


def granted(prio, pid, duration=30, queue_size=0, ind=IND_NORMAL, ack_req=True):
    return FloorMsg(
        FLOOR_GRANTED,
        SRV,
        ack_req,
        duration=duration,
        priority=prio,
        user_id=pid + "@no",
        ssrc_field=ssrc_of(pid),
        queue_size=queue_size,
        indicator=ind,
    )


def taken(pid, seq, ind=IND_NORMAL, permission=1):
    return FloorMsg(
        FLOOR_TAKEN,
        SRV,
        granted_party=pid + "@no",
        permission=permission,
        seq=seq,
        indicator=ind,
        ssrc_field=ssrc_of(pid),
    )


def idle(seq, ind=IND_NORMAL, ack_req=True):
    return FloorMsg(FLOOR_IDLE, SRV, ack_req, seq=seq, indicator=ind)


def deny(cause, ind=IND_NORMAL):
    return FloorMsg(FLOOR_DENY, SRV, reject_cause=cause, indicator=ind)


def revoke(cause, ind=IND_NORMAL):
    return FloorMsg(FLOOR_REVOKE, SRV, reject_cause=cause, indicator=ind)


def qpi(pos, prio):
    return FloorMsg(FLOOR_QUEUE_POSITION_INFO, SRV, queue_info=(pos, prio))


# ---- creation, grant, deny -------------------------------------------------------------------


def test_start_stop_until_first_join_then_idle_announced():
    srv = FloorServer("fire-1@no", FloorConfig(), server_ssrc=SRV)
    assert srv.state == G_START_STOP
    assert srv.next_deadline() is None
    assert srv.participant_state("a") is None
    outs = srv.join(at(0.0), "a", "a@no", 0x1000)
    assert outs == [("a", idle(1))]
    assert srv.state == G_IDLE
    assert srv.participant_state("a") == U_IDLE
    assert srv.next_deadline() == at(1.0)  # T7 runs until the Floor Idle is acknowledged
    # a second member entering an idle group is told so, in the same burst (same sequence number)
    assert srv.join(at(0.2), "b", "b@no", 0x1001) == [("b", idle(1))]


def test_grant_when_idle():
    srv = group()
    outs = srv.on_message(at(0.1), "a", req(prio=5))
    assert shape(outs) == [("a", FLOOR_GRANTED), ("b", FLOOR_TAKEN), ("c", FLOOR_TAKEN)]
    assert outs[0][1] == granted(5, "a")
    assert outs[1][1] == taken("a", seq=2)
    assert outs[1][1] is outs[2][1]  # one broadcast, one object
    assert srv.state == G_TAKEN and srv.holder == "a"
    assert srv.participant_state("a") == U_PERMITTED
    assert srv.participant_state("b") == U_TAKEN
    assert srv.may_send_media("a") and not srv.may_send_media("b")
    assert srv.counters["grants"] == 1 and srv.counters["requests"] == 1


def test_request_without_priority_uses_default_priority():
    srv = group(default_priority=7)
    outs = srv.on_message(at(0.1), "a", req())
    assert outs[0][1].priority == 7


def test_deny_when_busy_without_queueing():
    # queueing off in the configuration
    srv = group(queueing=False)
    srv.on_message(at(0.1), "a", req(prio=5))
    assert srv.on_message(at(0.2), "b", req(prio=5)) == [("b", deny(1))]
    # queueing on, but the client does not say it supports queueing
    srv = group()
    srv.on_message(at(0.1), "a", req(prio=5))
    assert srv.on_message(at(0.2), "b", req(prio=5, queue=False)) == [("b", deny(1))]
    assert srv.on_message(at(0.3), "c", req(prio=2, queue=False)) == [("c", deny(1))]
    assert srv.queue == [] and srv.holder == "a"
    assert srv.counters["denies"] == 2 and srv.counters["deny_cause_1"] == 2


def test_receive_only_member_is_denied_cause_5_and_told_it_may_not_request():
    srv = group()
    srv.join(at(0.0), "d", "d@no", ssrc_of("d"), receive_only=True)
    srv.on_message(at(0.0), "d", ack(FLOOR_IDLE))
    assert srv.on_message(at(0.1), "d", req(prio=9)) == [("d", deny(5))]
    assert srv.state == G_IDLE
    outs = srv.on_message(at(0.2), "a", req(prio=1))
    assert shape(outs) == [("a", FLOOR_GRANTED), ("b", FLOOR_TAKEN), ("c", FLOOR_TAKEN), ("d", FLOOR_TAKEN)]
    assert outs[1][1].permission == 1
    assert outs[3][1] == taken("a", seq=2, permission=0)
    # even an emergency does not let a receive-only member talk
    assert srv.on_message(at(0.3), "d", req(ind=IND_EMERGENCY)) == [("d", deny(5))]
    assert not srv.emergency


def test_deny_only_one_participant_when_configured():
    srv = group(n=1, deny_only_one=True)
    assert srv.on_message(at(0.1), "a", req()) == [("a", deny(3))]
    srv.join(at(0.2), "b", "b@no", ssrc_of("b"))
    assert shape(srv.on_message(at(0.3), "a", req())) == [("a", FLOOR_GRANTED), ("b", FLOOR_TAKEN)]
    # by default a lone member may talk (others may enter late)
    srv = group(n=1)
    assert shape(srv.on_message(at(0.1), "a", req())) == [("a", FLOOR_GRANTED)]


def test_holder_repeated_request_is_idempotent():
    srv = group()
    srv.on_message(at(0.1), "a", req(prio=5))
    # T20 still waits for the Floor Ack: the repeat asks for it too
    assert srv.on_message(at(0.2), "a", req(prio=5)) == [("a", granted(5, "a"))]
    srv.on_message(at(0.3), "a", ack(FLOOR_GRANTED))
    # 29.9 s left of T2 is announced as 30 (rounded up), no ack asked any more
    assert srv.on_message(at(0.4), "a", req(prio=3)) == [("a", granted(5, "a", ack_req=False))]
    assert srv.counters["grants"] == 1 and srv.counters["regrants"] == 2
    assert srv.holder == "a" and srv.state == G_TAKEN


# ---- queueing --------------------------------------------------------------------------------


def test_queue_then_grant_on_release():
    srv = group(n=4)
    srv.on_message(at(0.1), "a", req(prio=5))
    assert srv.on_message(at(0.2), "b", req(prio=5)) == [("b", qpi(1, 5))]
    assert srv.on_message(at(0.3), "c", req(prio=3)) == [("c", qpi(2, 3))]
    assert srv.queue == [("b", 5), ("c", 3)]
    assert srv.participant_state("b") == U_TAKEN
    # the holder releases and asks for an acknowledgement
    outs = srv.on_message(at(1.0), "a", rel(ack_req=True))
    assert shape(outs) == [
        ("a", FLOOR_ACK),
        ("b", FLOOR_GRANTED),
        ("a", FLOOR_TAKEN),
        ("c", FLOOR_TAKEN),
        ("d", FLOOR_TAKEN),
    ]
    assert outs[0][1] == FloorMsg(FLOOR_ACK, SRV, source=SOURCE_CONTROLLING, msg_type=FLOOR_RELEASE)
    assert outs[1][1] == granted(5, "b", queue_size=1)
    assert outs[2][1] == taken("b", seq=3)
    assert srv.holder == "b" and srv.queue == [("c", 3)]
    # b releases: c next; c releases: idle
    srv.on_message(at(1.5), "b", ack(FLOOR_GRANTED))
    assert shape(srv.on_message(at(2.0), "b", rel()))[0] == ("c", FLOOR_GRANTED)
    srv.on_message(at(2.5), "c", ack(FLOOR_GRANTED))
    outs = srv.on_message(at(3.0), "c", rel())
    assert outs == [("a", idle(5)), ("b", idle(5)), ("c", idle(5)), ("d", idle(5))]
    assert srv.state == G_IDLE and srv.holder is None and srv.queue == []
    assert srv.counters["releases"] == 3 and srv.counters["queued"] == 2


def test_queue_ordered_by_priority_then_arrival():
    srv = group(n=6)
    srv.on_message(at(0.1), "a", req(prio=9))
    srv.on_message(at(0.2), "b", req(prio=2))
    srv.on_message(at(0.3), "c", req(prio=6))
    srv.on_message(at(0.4), "d", req(prio=2))
    assert srv.on_message(at(0.5), "e", req(prio=6)) == [("e", qpi(2, 6))]
    assert srv.queue == [("c", 6), ("e", 6), ("b", 2), ("d", 2)]
    # a repeated request with the same rank keeps its place among equals
    assert srv.on_message(at(0.6), "c", req(prio=6)) == [("c", qpi(1, 6))]
    assert srv.queue == [("c", 6), ("e", 6), ("b", 2), ("d", 2)]
    assert srv.counters["queued"] == 4


def test_queue_position_request_and_info():
    srv = group(n=4)
    srv.on_message(at(0.1), "a", req(prio=5))
    srv.on_message(at(0.2), "b", req(prio=4))
    srv.on_message(at(0.3), "c", req(prio=4))
    pq = FloorMsg(FLOOR_QUEUE_POSITION_REQUEST, ssrc=0x1234)
    assert srv.on_message(at(0.4), "c", pq) == [("c", qpi(2, 4))]
    assert srv.on_message(at(0.5), "d", pq) == [("d", qpi(QUEUE_POS_NOT_QUEUED, 0))]
    srv.on_message(at(0.6), "b", rel())  # b gives up its place
    assert srv.on_message(at(0.7), "c", pq) == [("c", qpi(1, 4))]
    assert srv.counters["queue_position_requests"] == 3


def test_queued_participant_release_leaves_queue_and_gets_floor_state():
    srv = group(n=3)
    srv.on_message(at(0.1), "a", req(prio=5))
    srv.on_message(at(0.2), "b", req(prio=4))
    assert srv.on_message(at(0.3), "b", rel()) == [("b", taken("a", seq=2))]
    assert srv.queue == [] and srv.holder == "a"
    assert srv.counters["queue_cancelled"] == 1 and srv.counters["releases"] == 0
    # a stray release in an idle group gets the idle state (no ack asked: it is an answer)
    srv.on_message(at(0.4), "a", rel())
    assert srv.on_message(at(0.5), "c", rel()) == [("c", idle(3, ack_req=False))]


def test_queue_full_denies_cause_7_and_a_higher_request_bumps_the_lowest():
    srv = group(n=5, queue_max=2)
    srv.on_message(at(0.1), "a", req(prio=9))
    srv.on_message(at(0.2), "b", req(prio=4))
    srv.on_message(at(0.3), "c", req(prio=3))
    assert srv.on_message(at(0.4), "d", req(prio=3)) == [("d", deny(7))]
    assert srv.queue == [("b", 4), ("c", 3)]
    outs = srv.on_message(at(0.5), "e", req(prio=5))
    assert outs == [("c", deny(7)), ("e", qpi(1, 5))]
    assert srv.queue == [("e", 5), ("b", 4)]
    assert srv.counters["deny_cause_7"] == 2 and srv.counters["queue_bumped"] == 1


# ---- pre-emption -----------------------------------------------------------------------------


def test_preemption_by_higher_priority_granted_on_holder_release():
    srv = group()
    srv.on_message(at(0.1), "a", req(prio=5))
    outs = srv.on_message(at(0.5), "b", req(prio=6, queue=False))
    assert outs == [("a", revoke(4)), ("b", qpi(1, 6))]
    assert srv.state == G_PENDING_REVOKE
    assert srv.participant_state("a") == U_PENDING_REVOKE
    assert srv.participant_state("b") == U_TAKEN
    assert srv.may_send_media("a")  # the grace period: the holder's last words still go out
    outs = srv.on_message(at(0.7), "a", rel())
    assert outs == [
        ("b", granted(6, "b")),
        ("a", taken("b", seq=3)),
        ("c", taken("b", seq=3)),
    ]
    assert srv.state == G_TAKEN and srv.holder == "b"
    assert srv.counters["preemptions"] == 1 and srv.counters["revoke_cause_4"] == 1


def test_preemption_grace_expiry_forces_release_and_drops_holder_media():
    srv = group()
    srv.on_message(at(0.1), "a", req(prio=5))
    srv.on_message(at(0.2), "a", ack(FLOOR_GRANTED))
    srv.on_message(at(1.0), "b", req(prio=200))
    assert srv.next_deadline() == at(2.0)  # T8: the revoke is repeated while the holder ignores it
    srv.on_media(at(1.5), "a")
    assert srv.poll(at(1.99)) == []
    assert srv.poll(at(2.0)) == [("a", revoke(4))]
    srv.on_media(at(2.5), "a")
    assert srv.poll(at(3.0)) == [("a", revoke(4))]
    assert srv.next_deadline() == at(4.0)  # T3 (1.0 + 3) and T8 coincide: the forced release wins
    outs = srv.poll(at(4.0))
    assert outs == [("b", granted(200, "b")), ("a", taken("b", seq=3)), ("c", taken("b", seq=3))]
    assert srv.counters["t3_forced_releases"] == 1 and srv.counters["t8_revoke_repeats"] == 2
    # the old holder keeps talking: dropped, counted and told once
    assert srv.on_media(at(4.1), "a") == [("a", revoke(3))]
    assert not srv.may_send_media("a")
    assert srv.participant_state("a") == U_SENDS_MEDIA
    assert srv.counters["media_dropped"] == 1


def test_a_lower_request_does_not_preempt_and_waits_behind_the_preemptor():
    srv = group(n=4)
    srv.on_message(at(0.1), "a", req(prio=5))
    srv.on_message(at(0.2), "b", req(prio=9))
    assert srv.on_message(at(0.3), "c", req(prio=5)) == [("c", qpi(2, 5))]
    # a third request that also outranks the revoked holder goes by rank, no second revoke
    assert srv.on_message(at(0.4), "d", req(prio=10, queue=False)) == [("d", qpi(1, 10))]
    assert srv.counters["revokes"] == 1
    assert shape(srv.on_message(at(0.5), "a", rel()))[0] == ("d", FLOOR_GRANTED)


def test_priority_is_capped_by_the_participant_ceiling():
    srv = group(ceilings={"b": 5})
    srv.on_message(at(0.1), "a", req(prio=5))
    # b asks for 200 but may only have 5: equal to the holder, so it waits
    assert srv.on_message(at(0.2), "b", req(prio=200)) == [("b", qpi(1, 5))]
    assert srv.state == G_TAKEN and srv.counters["preemptions"] == 0
    assert srv.queue == [("b", 5)]


def test_revoked_holder_asking_again_is_reminded_not_regranted():
    srv = group()
    srv.on_message(at(0.1), "a", req(prio=1))
    srv.on_message(at(0.2), "b", req(prio=2))
    assert srv.on_message(at(0.3), "a", req(prio=1)) == [("a", revoke(4))]
    assert srv.state == G_PENDING_REVOKE and srv.holder == "a"


# ---- emergency and imminent peril ------------------------------------------------------------


def test_emergency_preempts_flags_every_message_until_cancelled():
    srv = group()
    srv.on_message(at(0.1), "a", req(prio=250))
    outs = srv.on_message(at(0.2), "c", req(prio=1, ind=IND_EMERGENCY, queue=False))
    assert outs == [("a", revoke(4, IND_EMERGENCY)), ("c", qpi(1, 255))]
    assert srv.emergency and srv.counters["emergencies"] == 1
    outs = srv.on_message(at(0.3), "a", rel())
    assert outs == [
        ("c", granted(255, "c", ind=IND_EMERGENCY)),
        ("a", taken("c", seq=3, ind=IND_EMERGENCY)),
        ("b", taken("c", seq=3, ind=IND_EMERGENCY)),
    ]
    # a normal request while the emergency talker holds the floor waits
    assert srv.on_message(at(0.4), "a", req(prio=250)) == [("a", qpi(1, 250))]
    srv.on_message(at(0.5), "a", rel())
    outs = srv.on_message(at(1.0), "c", rel())
    assert outs == [
        ("a", idle(4, IND_EMERGENCY)),
        ("b", idle(4, IND_EMERGENCY)),
        ("c", idle(4, IND_EMERGENCY)),
    ]
    # only the member that raised it (or the system, pid None) may cancel
    assert srv.cancel_emergency(at(1.1), "b") == []
    assert srv.emergency and srv.counters["cancel_refused"] == 1
    outs = srv.cancel_emergency(at(1.2), "c")
    assert outs == [("a", idle(5)), ("b", idle(5)), ("c", idle(5))]
    assert not srv.emergency and srv.counters["emergency_cancels"] == 1
    assert srv.cancel_emergency(at(1.3), None) == []  # nothing left to cancel
    outs = srv.on_message(at(1.4), "b", req(prio=3))
    assert outs[0][1] == granted(3, "b")


def test_emergency_cancel_by_system_while_talking_updates_everyone():
    srv = group()
    srv.on_message(at(0.1), "b", req(prio=4, ind=IND_EMERGENCY))
    srv.on_message(at(0.2), "b", ack(FLOOR_GRANTED))
    outs = srv.cancel_emergency(at(1.0), None)
    # the talker keeps the floor at its own priority; T2 (30 s from 0.1) has 29.1 s left
    assert outs == [
        ("b", granted(4, "b", duration=30, ack_req=False)),
        ("a", taken("b", seq=3)),
        ("c", taken("b", seq=3)),
    ]
    # no longer an emergency talker: a higher normal request now pre-empts it
    assert srv.on_message(at(1.1), "a", req(prio=5))[0] == ("b", revoke(4))


def test_emergency_while_another_emergency_talks_is_queued_at_the_head():
    srv = group(n=4, queueing=False)
    srv.on_message(at(0.1), "a", req(ind=IND_EMERGENCY))
    # imminent peril cannot pre-empt an emergency, and queueing is off: denied
    assert srv.on_message(at(0.2), "b", req(ind=IND_IMMINENT_PERIL)) == [("b", deny(1, IND_EMERGENCY))]
    # a second emergency waits even with queueing off and no queueing support in the client
    outs = srv.on_message(at(0.3), "c", req(ind=IND_EMERGENCY, queue=False))
    assert outs == [("c", qpi(1, 255))]
    srv.on_message(at(0.35), "d", req(ind=IND_EMERGENCY, queue=False))
    assert srv.queue == [("c", 255), ("d", 255)]
    assert srv.state == G_TAKEN and srv.counters["revokes"] == 0
    assert srv._queue[0].cls == CLASS_EMERGENCY
    assert shape(srv.on_message(at(0.4), "a", rel()))[0] == ("c", FLOOR_GRANTED)


def test_holder_pressing_emergency_keeps_the_floor_and_alerts_the_group():
    srv = group()
    srv.on_message(at(0.1), "a", req(prio=3))
    srv.on_message(at(0.2), "a", ack(FLOOR_GRANTED))
    outs = srv.on_message(at(0.3), "a", req(ind=IND_EMERGENCY))
    assert outs == [
        ("a", granted(255, "a", ind=IND_EMERGENCY, ack_req=False)),
        ("b", taken("a", seq=3, ind=IND_EMERGENCY)),
        ("c", taken("a", seq=3, ind=IND_EMERGENCY)),
    ]
    assert srv.emergency and srv.holder == "a" and srv.counters["grants"] == 1


def test_imminent_peril_ranks_below_emergency_above_any_priority():
    srv = group(n=4)
    srv.on_message(at(0.1), "a", req(prio=255))
    # imminent peril pre-empts even the highest normal priority
    outs = srv.on_message(at(0.2), "b", req(prio=0, ind=IND_IMMINENT_PERIL))
    assert outs == [("a", revoke(4, IND_IMMINENT_PERIL)), ("b", qpi(1, 254))]
    assert srv.imminent_peril and not srv.emergency
    outs = srv.on_message(at(0.3), "a", rel())
    assert outs[0][1] == granted(254, "b", ind=IND_IMMINENT_PERIL)
    # emergency pre-empts imminent peril, and supersedes the group's imminent peril state
    outs = srv.on_message(at(0.4), "c", req(ind=IND_EMERGENCY))
    assert outs == [("b", revoke(4, IND_EMERGENCY)), ("c", qpi(1, 255))]
    assert srv.emergency and not srv.imminent_peril
    srv.on_message(at(0.5), "b", rel())
    assert srv.holder == "c"
    # imminent peril does not pre-empt an emergency talker: it waits
    assert srv.on_message(at(0.6), "d", req(ind=IND_IMMINENT_PERIL)) == [("d", qpi(1, 254))]
    assert srv.state == G_TAKEN
    assert srv.counters["imminent_perils"] == 1 and srv.counters["emergencies"] == 1


def test_imminent_peril_cancel():
    srv = group()
    srv.on_message(at(0.1), "a", req(ind=IND_IMMINENT_PERIL))
    srv.on_message(at(0.2), "a", rel())
    assert srv.cancel_emergency(at(0.3), None) == []  # not in emergency: nothing to do
    assert srv.cancel_imminent_peril(at(0.4), "b") == []
    outs = srv.cancel_imminent_peril(at(0.5), "a")
    assert outs == [("a", idle(4)), ("b", idle(4)), ("c", idle(4))]
    assert not srv.imminent_peril and srv.counters["imminent_peril_cancels"] == 1


# ---- timers ----------------------------------------------------------------------------------


def test_t1_end_of_media_returns_the_floor_to_idle():
    srv = group()
    srv.on_message(at(0.0), "a", req())
    srv.on_media(at(0.02), "a")  # implicit acknowledgement: no Floor Granted repeat follows
    for i in range(1, 100):
        assert srv.on_media(at(0.02 + 0.02 * i), "a") == []
    last = 0.02 + 0.02 * 99
    assert srv.next_deadline() == at(last + 4.0)
    assert srv.poll(at(last + 3.99)) == []
    assert srv.poll(at(last + 4.0)) == [("a", idle(3)), ("b", idle(3)), ("c", idle(3))]
    assert srv.state == G_IDLE and srv.counters["t1_expiries"] == 1
    assert srv.counters["t20_granted_repeats"] == 0


def test_t1_expiry_is_applied_before_a_late_event():
    # the driver did not poll: the request at 10 s finds the floor idle, as it should
    srv = group()
    srv.on_message(at(0.0), "a", req(prio=9))
    srv.on_message(at(0.1), "a", ack(FLOOR_GRANTED))
    outs = srv.on_message(at(10.0), "b", req(prio=1))
    assert shape(outs) == [
        ("a", FLOOR_IDLE),
        ("b", FLOOR_IDLE),
        ("c", FLOOR_IDLE),
        ("b", FLOOR_GRANTED),
        ("a", FLOOR_TAKEN),
        ("c", FLOOR_TAKEN),
    ]
    assert srv.holder == "b"


def test_t2_burst_too_long_revoke_cause_2_then_forced_release():
    srv = group(t2=10.0)
    srv.on_message(at(0.0), "a", req())
    assert srv.on_message(at(0.0), "b", req()) == [("b", qpi(1, 0))]
    t = 0.0
    outs = []
    while t < 13.5:  # a stuck PTT: media never stops
        t += 0.5
        outs += srv.on_media(at(t), "a")
    # T20 would have repeated Floor Granted, but the media acknowledged it. Revoke cause 2 at
    # T2 (10 s), repeated at T8 (11, 12); T3 forces the release at 13 and b gets the floor; the
    # packet from a that found the floor gone is answered with cause 3, the one at 13.5 is not.
    assert outs == [
        ("a", revoke(2)),
        ("a", revoke(2)),
        ("a", revoke(2)),
        ("b", granted(0, "b", duration=10)),
        ("a", taken("b", seq=3)),
        ("c", taken("b", seq=3)),
        ("a", revoke(3)),
    ]
    assert srv.state == G_TAKEN and srv.holder == "b"
    assert srv.counters["t2_expiries"] == 1 and srv.counters["t3_forced_releases"] == 1
    assert srv.counters["revoke_cause_2"] == 1 and srv.counters["revoke_cause_3"] == 1
    assert srv.participant_state("a") == U_SENDS_MEDIA
    assert srv.counters["media_dropped"] == 2


def test_t2_revoke_obeyed_by_release():
    srv = group(t2=10.0)
    srv.on_message(at(0.0), "a", req())
    srv.on_message(at(0.1), "a", ack(FLOOR_GRANTED))
    assert srv.next_deadline() == at(4.0)
    for i in range(1, 21):
        srv.on_media(at(0.5 * i), "a")
    # the media at 10.0 came after T2 fired: T2 expires first, since timers run before events
    assert srv.state == G_PENDING_REVOKE
    assert srv.on_message(at(10.2), "a", rel()) == [("a", idle(3)), ("b", idle(3)), ("c", idle(3))]
    assert srv.next_deadline() == at(11.2)  # only T7 now


def test_t20_repeats_floor_granted_until_floor_ack():
    srv = group()
    srv.on_message(at(0.0), "a", req(prio=2))
    assert srv.poll(at(1.0)) == [("a", granted(2, "a", duration=29))]
    assert srv.poll(at(1.5)) == []
    srv.on_message(at(1.5), "a", ack(FLOOR_GRANTED))
    assert srv.poll(at(2.0)) == [] and srv.next_deadline() == at(4.0)  # only T1 is left
    assert srv.counters["t20_granted_repeats"] == 1 and srv.counters["acks"] == 4  # 3 from settling


def test_t20_stops_after_c20_transmissions():
    srv = group()
    srv.on_message(at(0.0), "a", req())
    assert shape(srv.poll(at(1.0))) == [("a", FLOOR_GRANTED)]
    assert shape(srv.poll(at(2.0))) == [("a", FLOOR_GRANTED)]
    assert srv.poll(at(3.0)) == []  # three transmissions in all (C20 = 3)
    assert srv.counters["t20_granted_repeats"] == 2 and srv.counters["t20_gave_up"] == 1
    assert srv.next_deadline() == at(4.0)  # T1: the silent grant ends like any burst
    assert shape(srv.poll(at(4.0))) == [("a", FLOOR_IDLE), ("b", FLOOR_IDLE), ("c", FLOOR_IDLE)]


def test_t20_ack_from_another_member_does_not_stop_it():
    srv = group()
    srv.on_message(at(0.0), "a", req())
    srv.on_message(at(0.5), "b", ack(FLOOR_GRANTED))
    assert shape(srv.poll(at(1.0))) == [("a", FLOOR_GRANTED)]


def test_t7_repeats_floor_idle_to_members_that_have_not_acked():
    srv = group(settle=False, c7=3)
    assert srv.next_deadline() == at(1.0)
    srv.on_message(at(0.5), "b", ack(FLOOR_IDLE))
    srv.on_message(at(0.5), "c", ack(FLOOR_IDLE | 0x10))  # subtype echoed with its ack bit
    assert srv.poll(at(1.0)) == [("a", idle(1))]
    assert srv.poll(at(2.0)) == [("a", idle(1))]
    assert srv.poll(at(3.0)) == []  # C7 = 3 transmissions
    assert srv.next_deadline() is None
    assert srv.counters["t7_idle_repeats"] == 2


def test_t7_stops_when_everyone_acked_and_when_the_floor_is_taken():
    srv = group(settle=False)
    for pid in "abc":
        srv.on_message(at(0.1), pid, ack(FLOOR_IDLE))
    assert srv.next_deadline() is None
    srv = group(settle=False)
    srv.on_message(at(0.5), "a", req())
    assert srv.next_deadline() == at(1.5)  # T20, not T7
    srv.on_message(at(0.6), "a", ack(FLOOR_GRANTED))
    assert srv.next_deadline() == at(4.5)


def test_next_deadline_is_the_earliest_timer_and_polling_before_it_does_nothing():
    srv = group(t1=2.0, t2=5.0, t20=0.7)
    srv.on_message(at(0.0), "a", req())
    assert srv.next_deadline() == at(0.7)
    srv.on_message(at(0.1), "a", ack(FLOOR_GRANTED))
    assert srv.next_deadline() == at(2.0)
    srv.on_media(at(1.9), "a")
    assert srv.next_deadline() == at(3.9)
    srv.on_media(at(3.8), "a")
    assert srv.next_deadline() == at(5.0)  # T2 now earlier than T1
    assert srv.poll(at(4.99)) == [] and srv.state == G_TAKEN
    assert srv.poll(at(5.0)) == [("a", revoke(2))]
    assert srv.next_deadline() == at(5.8)  # T1 (3.8 + 2) before T8 (6.0) and T3 (8.0)


# ---- media gate ------------------------------------------------------------------------------


def test_media_from_non_holder_is_dropped_counted_and_answered():
    srv = group()
    srv.on_message(at(0.0), "a", req())
    assert srv.on_media(at(0.1), "b") == [("b", revoke(3))]
    assert srv.participant_state("b") == U_SENDS_MEDIA and not srv.may_send_media("b")
    assert srv.on_media(at(0.12), "b") == []  # one revoke, not one per packet
    assert srv.counters["media_dropped"] == 2 and srv.counters["revoke_cause_3"] == 1
    srv.on_message(at(0.2), "a", ack(FLOOR_GRANTED))
    srv.on_media(at(0.5), "a")
    # still sending at T8 (1.1): reminded; silent during the next T8: back to not permitted
    assert srv.poll(at(1.1)) == [("b", revoke(3))]
    assert srv.poll(at(2.1)) == []
    assert srv.participant_state("b") == U_TAKEN
    # media from a member in an idle group, then a Floor Release: it gets the floor state
    srv.on_message(at(2.2), "a", rel())
    srv.on_message(at(2.3), "c", ack(FLOOR_IDLE))
    assert srv.on_media(at(3.0), "c") == [("c", revoke(3))]
    assert srv.on_message(at(3.1), "c", rel()) == [("c", idle(3, ack_req=False))]
    assert srv.participant_state("c") == U_IDLE
    # media from a stranger is dropped without an answer
    assert srv.on_media(at(3.15), "zz") == [] and srv.counters["media_dropped"] == 4


def test_media_just_after_release_is_dropped_silently():
    srv = group()
    srv.on_message(at(0.0), "a", req())
    srv.on_media(at(0.02), "a")
    srv.on_message(at(1.0), "a", rel())
    assert srv.on_media(at(1.1), "a") == []  # in flight when the release was sent
    assert srv.counters["media_tail_dropped"] == 1
    assert srv.on_media(at(1.6), "a") == [("a", revoke(3))]  # past tail_grace: a real offence


# ---- membership ------------------------------------------------------------------------------


def test_holder_leaving_releases_the_floor():
    srv = group()
    srv.on_message(at(0.0), "a", req())
    assert srv.leave(at(0.5), "a") == [("b", idle(3)), ("c", idle(3))]
    assert srv.state == G_IDLE and srv.holder is None
    assert srv.participant_state("a") is None and srv.members == ["b", "c"]
    assert srv.counters["holder_left"] == 1
    assert srv.on_message(at(0.6), "a", req()) == [] and srv.counters["unknown_participant"] == 1


def test_holder_leaving_grants_the_next_in_queue_and_queued_leaver_is_forgotten():
    srv = group(n=4)
    srv.on_message(at(0.0), "a", req())
    srv.on_message(at(0.1), "b", req())
    srv.on_message(at(0.2), "c", req())
    assert srv.leave(at(0.3), "b") == []
    assert srv.queue == [("c", 0)]
    outs = srv.leave(at(0.4), "a")
    assert outs == [("c", granted(0, "c")), ("d", taken("c", seq=3))]
    assert srv.leave(at(0.5), "zz") == []


def test_late_entry_gets_floor_taken_at_once():
    srv = group()
    srv.on_message(at(0.0), "a", req(prio=7))
    srv.on_media(at(0.1), "a")
    assert srv.join(at(1.0), "d", "d@no", ssrc_of("d")) == [("d", taken("a", seq=2))]
    assert srv.participant_state("d") == U_TAKEN
    # a receive-only late entrant is told it may not request
    outs = srv.join(at(1.1), "e", "e@no", ssrc_of("e"), receive_only=True)
    assert outs == [("e", taken("a", seq=2, permission=0))]
    # entering an idle group that is still in emergency: Floor Idle, flagged, in the current burst
    srv = group()
    srv.on_message(at(0.0), "a", req(ind=IND_EMERGENCY))
    srv.on_message(at(0.1), "a", rel())
    assert srv.join(at(0.2), "d", "d@no", ssrc_of("d")) == [("d", idle(3, IND_EMERGENCY))]


def test_rejoin_updates_details_and_holder_keeps_the_floor():
    srv = group()
    srv.on_message(at(0.0), "a", req(prio=4))
    srv.on_message(at(0.1), "a", ack(FLOOR_GRANTED))
    # handover: same participant, new SSRC; the call goes on
    outs = srv.join(at(1.0), "a", "a@no", 0xABCD)
    assert outs == [
        (
            "a",
            FloorMsg(
                FLOOR_GRANTED,
                SRV,
                duration=29,
                priority=4,
                user_id="a@no",
                ssrc_field=0xABCD,
                queue_size=0,
                indicator=IND_NORMAL,
            ),
        )
    ]
    assert srv.holder == "a" and srv.members == ["a", "b", "c"]
    # a holder that becomes receive-only loses the floor
    outs = srv.join(at(1.5), "a", "a@no", 0xABCD, receive_only=True)
    assert shape(outs) == [("a", FLOOR_IDLE), ("b", FLOOR_IDLE), ("c", FLOOR_IDLE)]


def test_close_enters_releasing_and_ignores_everything():
    srv = group()
    srv.on_message(at(0.0), "a", req())
    srv.on_message(at(0.1), "b", req())
    assert srv.close(at(0.2)) == []
    assert srv.state == G_RELEASING and srv.participant_state("a") == U_RELEASING
    assert srv.holder is None and srv.queue == [] and srv.next_deadline() is None
    assert srv.on_message(at(0.3), "c", req()) == []
    assert srv.on_media(at(0.4), "a") == [] and not srv.may_send_media("a")
    assert srv.join(at(0.5), "d", "d@no", ssrc_of("d")) == []
    assert srv.counters["ignored_closed"] == 2


def test_unexpected_messages_are_counted_and_ignored():
    srv = group()
    assert srv.on_message(at(0.1), "a", FloorMsg(FLOOR_TAKEN, 1, seq=3)) == []
    assert srv.on_message(at(0.1), "a", FloorMsg(FLOOR_ACK, 1)) == []  # no message type: nothing acked
    assert srv.counters["unexpected_message"] == 1 and srv.counters["acks"] == 4  # 3 from settling


def test_bad_configuration_and_arguments_are_refused():
    raises(ValueError, FloorConfig, t1=0)
    raises(ValueError, FloorConfig, t2=-1.0)
    raises(ValueError, FloorConfig, t2=70000)
    raises(ValueError, FloorConfig, c7=0)
    raises(ValueError, FloorConfig, c20=1.5)
    raises(ValueError, FloorConfig, queue_max=0)
    raises(ValueError, FloorConfig, queue_max=254)
    raises(ValueError, FloorConfig, emergency_priority=256)
    raises(ValueError, FloorConfig, tail_grace=-0.1)
    raises(ValueError, FloorServer, "g@no", None, -1)
    srv = FloorServer("g@no")
    raises(ValueError, srv.join, at(0.0), "a", "a@no", 1, 256)
    raises(ValueError, srv.join, at(0.0), "a", "a@no", 1 << 32)
    assert srv.state == G_START_STOP and srv.members == []


def test_sequence_number_advances_per_burst_and_wraps():
    srv = group()
    srv._seq = 0xFFFE
    assert srv.on_message(at(0.0), "a", req())[1][1].seq == 0xFFFF
    assert srv.on_message(at(0.1), "a", rel())[0][1].seq == 0
    # repeats of a burst keep its number
    assert srv.poll(at(1.1))[0][1].seq == 0


# ---- random sequences ------------------------------------------------------------------------

_PIDS = ("p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7")  # p7 is receive-only


def _check(srv, now, outs, targets_ok):
    assert srv.state in G_STATES and srv.state != G_INITIALISING
    h = srv.holder
    members = srv.members
    q = srv._queue
    qpids = [c.pid for c in q]
    if srv.state in (G_TAKEN, G_PENDING_REVOKE):
        assert h in members
        assert not srv._members[h].receive_only
    else:
        assert h is None
    if srv.state in (G_IDLE, G_START_STOP):
        assert q == []
    if srv.state != G_IDLE:
        # Floor Idle repeats belong to the idle floor only
        assert srv._t7 is None and not srv._idle_pending
    assert h not in qpids
    assert len(set(qpids)) == len(qpids) <= srv.cfg.queue_max
    for pid in qpids:
        assert pid in members and not srv._members[pid].receive_only
    for i in range(1, len(q)):
        assert q[i - 1].before(q[i])
    permitted = 0
    for pid in members:
        st = srv.participant_state(pid)
        assert st in U_STATES
        if st in (U_PERMITTED, U_PENDING_REVOKE):
            permitted += 1
            assert pid == h
        assert srv.may_send_media(pid) == (pid == h)
    assert permitted == (0 if h is None else 1)
    # the count that spares next_deadline a walk of the members matches the members
    assert srv._rogues == len([p for p in members if srv._members[p].rogue_t8 is not None])
    d = srv.next_deadline()
    assert d is None or tdiff(d, now) > 0
    # the last floor-state message sent describes the state the call ends in
    last = None
    for i, (pid, m) in enumerate(outs):
        if m.kind in (FLOOR_GRANTED, FLOOR_TAKEN, FLOOR_IDLE):
            last = i
    if last is not None:
        pid, m = outs[last]
        if m.kind == FLOOR_GRANTED:
            # granted, then possibly pre-empted within the same call
            revoked = [p for p, x in outs[last:] if x.kind == FLOOR_REVOKE and p == h]
            assert pid == h and srv.state == (G_PENDING_REVOKE if revoked else G_TAKEN)
        elif m.kind == FLOOR_TAKEN:
            assert h is not None and m.granted_party == h + "@no"
        else:
            assert h is None and srv.state == G_IDLE
    for pid, m in outs:
        assert pid in targets_ok
        assert m.ssrc == srv.server_ssrc
        if m.kind in (FLOOR_GRANTED, FLOOR_TAKEN, FLOOR_IDLE, FLOOR_REVOKE, FLOOR_DENY):
            assert m.indicator in (IND_NORMAL, IND_EMERGENCY, IND_IMMINENT_PERIL)
    for k in srv.counters:
        assert srv.counters[k] >= 0
    assert srv.poll(now) == []  # everything due has fired


def _random_run(seed, steps):
    rng = Rng(seed)
    cfg = FloorConfig(t1=3.0, t2=6.0, t3=2.0, c7=3, c20=2, queue_max=2)
    srv = FloorServer("g@no", cfg, SRV)
    now = T0
    for _ in range(steps):
        now = tadd(now, rng.below(1200))
        pid = _PIDS[rng.below(len(_PIDS))]
        before = srv.members
        r = rng.below(100)
        if r < 10:
            ceiling = rng.below(256)
            outs = srv.join(
                now, pid, pid + "@no", 0x2000 + rng.below(8), ceiling=ceiling, receive_only=(pid == "p7")
            )
        elif r < 12:
            outs = srv.leave(now, pid)
        elif r < 40:
            ind = 0
            x = rng.below(100)
            if x < 4:
                ind = IND_EMERGENCY
            elif x < 9:
                ind = IND_IMMINENT_PERIL
            if rng.below(10) < 6:
                ind |= Q
            prio = rng.below(256) if rng.below(4) else None
            old_holder = srv.holder
            old_state = srv.state
            outs = srv.on_message(now, pid, FloorMsg(FLOOR_REQUEST, 1, priority=prio, indicator=ind or None))
            if old_state == G_TAKEN and srv.state == G_PENDING_REVOKE and srv.holder == old_holder:
                assert (old_holder, FLOOR_REVOKE) in shape(outs)
        elif r < 52:
            if srv.holder is not None and rng.below(2):
                pid = srv.holder
            outs = srv.on_message(now, pid, FloorMsg(FLOOR_RELEASE, 1, ack_req=rng.below(2) == 1))
        elif r < 74:
            if srv.holder is not None and rng.below(3):
                pid = srv.holder
            outs = srv.on_media(now, pid)
        elif r < 78:
            outs = srv.on_message(now, pid, FloorMsg(FLOOR_QUEUE_POSITION_REQUEST, 1))
            if pid in srv.members:
                pos = srv.queue_position(pid)
                assert outs[-1] == (
                    pid,
                    qpi(QUEUE_POS_NOT_QUEUED, 0) if pos is None else qpi(pos, srv.queue[pos - 1][1]),
                )
        elif r < 88:
            kind = FLOOR_GRANTED if rng.below(2) else FLOOR_IDLE
            outs = srv.on_message(now, pid, FloorMsg(FLOOR_ACK, 1, source=0, msg_type=kind))
        elif r < 90:
            outs = srv.cancel_emergency(now, None if rng.below(2) else pid)
        elif r < 91:
            outs = srv.cancel_imminent_peril(now, None if rng.below(2) else pid)
        else:
            outs = srv.poll(now)
        _check(srv, now, outs, set(before) | set(srv.members))
    # no stuck floor: with no more voice, timers alone bring the group back to idle and quiet
    for _ in range(100):
        d = srv.next_deadline()
        if d is None:
            break
        now = d
        _check(srv, now, srv.poll(now), set(srv.members))
    assert srv.next_deadline() is None
    assert srv.holder is None and srv.queue == []
    assert srv.state in (G_IDLE, G_START_STOP)
    return srv


def test_random_sequences_keep_invariants_and_never_stick():
    total = {}
    for seed in (1, 7, 42, 2024, 31337, 65521):
        srv = _random_run(seed, 3000)
        for k in (
            "grants",
            "releases",
            "holder_left",
            "preemptions",
            "deny_cause_7",
            "queue_bumped",
            "t2_expiries",
            "t3_forced_releases",
            "t20_gave_up",
            "emergency_cancels",
            "imminent_peril_cancels",
        ):
            total[k] = total.get(k, 0) + srv.counters[k]
    # the runs must actually reach the interesting paths, or they prove little
    for k in total:
        assert total[k] > 0, k


def test_release_by_everyone_returns_to_idle():
    srv = group(n=5)
    srv.on_message(at(0.0), "a", req(prio=1))
    for i, pid in enumerate("bcde"):
        srv.on_message(at(0.1 * (i + 1)), pid, req(prio=i))
    t = 1.0
    while srv.holder is not None:
        srv.on_message(at(t), srv.holder, rel())
        t += 0.1
    assert srv.state == G_IDLE and srv.queue == [] and srv.counters["grants"] == 5
