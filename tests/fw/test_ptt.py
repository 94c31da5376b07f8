"""The PTT client (TS 24.380 floor participant, on-network): every state and transition, timer
repeats and counter exhaustion, the exact messages sent, tones and LED patterns, revoke, queue,
emergency, lost relay; then the client against the real relay and floor server, on both
runtimes."""

from fwtest import raises
from opmob import mcpt
from opmob.accessory import ptt as P
from opmob.accessory.ptt import PttClient, PttConfig
from opmob.mcpt import FloorMsg
from opmob.ticks import DAY_MS, MASK, due, tadd, tdiff
from relaynet import G2, World, ident

SRV = 0x5EC0F100
GROUP = "fire-2@no"
ME = "ann@no"
Q = mcpt.IND_QUEUEING_SUPPORTED


def client(cfg=None, started=True):
    c = PttClient(cfg, group=GROUP, identity=ME)
    if started:
        c.start(0)
        c.effects = []
    return c


def effects(c, kind=None):
    """Drain the client's effects (only those of ``kind``, if given)."""
    if kind is None:
        e = c.effects
        c.effects = []
        return e
    got = [e for e in c.effects if e[0] == kind]
    c.effects = [e for e in c.effects if e[0] != kind]
    return got


def tones(c):
    return [e[1] for e in effects(c, "tone")]


def granted(**kw):
    return FloorMsg(mcpt.FLOOR_GRANTED, SRV, True, duration=30, user_id=ME, indicator=mcpt.IND_NORMAL, **kw)


def deny(cause=mcpt.DENY_ANOTHER_HAS_PERMISSION):
    return FloorMsg(mcpt.FLOOR_DENY, SRV, True, reject_cause=cause, indicator=mcpt.IND_NORMAL)


def revoke(cause=mcpt.REVOKE_PREEMPTED):
    return FloorMsg(mcpt.FLOOR_REVOKE, SRV, reject_cause=cause, indicator=mcpt.IND_NORMAL)


def taken(who="bob@no", ssrc=0x77):
    return FloorMsg(mcpt.FLOOR_TAKEN, SRV, granted_party=who, permission=1, seq=3, ssrc_field=ssrc)


def idle():
    return FloorMsg(mcpt.FLOOR_IDLE, SRV, True, seq=4, indicator=mcpt.IND_NORMAL)


def qpi(pos, prio=0):
    return FloorMsg(mcpt.FLOOR_QUEUE_POSITION_INFO, SRV, queue_info=(pos, prio))


def is_request(m, prio=None, ind=mcpt.IND_NORMAL | Q):
    return m.kind == mcpt.FLOOR_REQUEST and m.priority == prio and m.indicator == ind


def is_release(m):
    return m.kind == mcpt.FLOOR_RELEASE and m.fields() == {}


def talking(c, t=0):
    """A client holding the floor (PTT held)."""
    c.press(t)
    c.on_floor(t + 20, granted())
    effects(c)
    return c


# --- Start-stop and the request ---------------------------------------------------------------------


def test_start_stop_refuses_ptt_until_the_call_is_up():
    c = client(started=False)
    assert c.state == P.START_STOP and c.led == P.LED_REST
    assert c.press(0) == []
    assert tones(c) == [P.TONE_DENY]
    assert c.led == P.LED_DENIED and c.counters["presses_refused"] == 1
    assert c.release(100) == [] and c.state == P.START_STOP
    assert c.on_floor(200, granted()) == [] and c.state == P.START_STOP
    assert c.emergency(300) == [] and not c.emergency_on
    c.start(500)
    assert c.state == P.U_NO_PERMISSION
    assert ("state", P.U_NO_PERMISSION) in effects(c)
    c.poll(2000)
    assert c.led == P.LED_REST


def test_press_sends_a_floor_request_and_waits():
    c = client()
    out = c.press(1000)
    assert len(out) == 1 and is_request(out[0])
    assert c.state == P.U_PENDING_REQUEST and not c.transmit
    assert effects(c) == [("state", P.U_PENDING_REQUEST)]
    assert c.next_deadline() == 1000 + 250
    # the request carries what the press asked for
    c = client(PttConfig(priority=40, queueing=False))
    out = c.press(0)
    assert is_request(out[0], prio=40, ind=mcpt.IND_NORMAL)
    c = client()
    out = c.press(0, priority=9, imminent_peril=True)
    assert is_request(out[0], prio=9, ind=mcpt.IND_IMMINENT_PERIL | Q)
    # the message encodes (what DeviceSession.send_floor will do with it)
    assert mcpt.decode(mcpt.encode(out[0])) == out[0]


def test_granted_gives_permission_talk_permit_and_the_mic():
    c = client()
    c.press(0)
    effects(c)
    assert c.on_floor(30, granted()) == []
    e = effects(c)
    assert e == [
        ("state", P.U_HAS_PERMISSION),
        ("transmit", True),
        ("tone", P.TONE_TALK_PERMIT),
        ("granted",),
        ("led", P.LED_TALKING),
    ], e
    assert c.transmit and c.may_transmit and c.granted_duration == 30
    assert c.next_deadline() is None  # T101 stopped
    # A repeated Floor Granted (the server's T20) changes nothing.
    assert c.on_floor(500, granted()) == [] and effects(c) == []


def test_t101_repeats_then_the_relay_counts_as_lost():
    c = client()
    first = c.press(0)[0]
    effects(c)
    sent = []
    t = 0
    while t < 2000:
        t += 10
        sent.extend((t, m) for m in c.poll(t))
    # C101 = 4 transmissions, T101 = 0.25 s apart; then the request has failed.
    assert [s[0] for s in sent] == [250, 500, 750]
    assert all(s[1] is first for s in sent)
    assert c.state == P.U_NO_PERMISSION and c.counters["request_repeats"] == 3
    e = effects(c)
    assert ("tone", P.TONE_LOST) in e and ("no_answer", "request") in e
    assert c.led == P.LED_LOST and not c.transmit
    assert c.next_deadline() is None


def test_nist_timer_values():
    c = client(PttConfig(**P.NIST))
    c.press(0)
    out = []
    for t in (40, 80, 120):
        out.append(len(c.poll(t)))
    assert out == [1, 1, 0] and c.state == P.U_NO_PERMISSION


def test_timers_due_before_an_event_fire_first():
    c = client()
    c.press(0)
    # The Granted arrives late (0.6 s): the repeats due at 0.25 and 0.5 go out first.
    out = c.on_floor(600, granted())
    assert len(out) == 2 and all(m.kind == mcpt.FLOOR_REQUEST for m in out)
    assert c.state == P.U_HAS_PERMISSION
    nd = c.next_deadline()
    assert nd is None or nd > 600


def test_deny_returns_to_no_permission_with_the_deny_tone():
    c = client()
    c.press(0)
    effects(c)
    c.on_floor(20, deny(mcpt.DENY_QUEUE_FULL))
    e = effects(c)
    assert ("state", P.U_NO_PERMISSION) in e
    assert ("tone", P.TONE_DENY) in e and ("denied", mcpt.DENY_QUEUE_FULL) in e
    assert c.led == P.LED_DENIED and c.counters["denies"] == 1
    # the denied pattern shows for denied_show seconds, then the state's own
    assert c.next_deadline() == 20 + 1500
    c.poll(1600)
    assert c.led == P.LED_REST and effects(c) == [("led", P.LED_REST)]


def test_queue_position_grant_and_deny():
    c = client()
    c.press(0)
    effects(c)
    c.on_floor(20, qpi(2, 50))
    e = effects(c)
    assert e == [("state", P.U_QUEUED), ("tone", P.TONE_QUEUED), ("queued", 2), ("led", P.LED_QUEUED)], e
    assert c.queue_position == 2 and c.queue_priority == 50 and c.next_deadline() is None
    c.on_floor(1000, qpi(1, 50))
    assert c.queue_position == 1 and effects(c) == []
    # someone else talks meanwhile: still queued
    c.on_floor(1100, taken())
    assert c.state == P.U_QUEUED and c.led == P.LED_QUEUED
    c.on_floor(2000, granted())
    assert c.state == P.U_HAS_PERMISSION and c.transmit and tones(c) == [P.TONE_TALK_PERMIT]
    assert c.queue_position is None
    # from the queue, a Deny (e.g. bumped out of a full queue)
    c = client()
    c.press(0)
    c.on_floor(20, qpi(3))
    effects(c)
    c.on_floor(1000, deny(mcpt.DENY_QUEUE_FULL))
    assert c.state == P.U_NO_PERMISSION and tones(c) == [P.TONE_DENY]


def test_queue_position_request_repeats_and_gives_up():
    c = client()
    c.press(0)
    c.on_floor(20, qpi(2))
    effects(c)
    out = c.query_queue(1000)
    assert len(out) == 1 and out[0].kind == mcpt.FLOOR_QUEUE_POSITION_REQUEST
    assert c.next_deadline() == 1500
    # answered: T104 stops
    c.on_floor(1100, qpi(1))
    assert c.next_deadline() is None and c.queue_position == 1
    # unanswered: C104 = 3 transmissions, T104 = 0.5 s apart, then the queue is taken as lost
    c.query_queue(2000)
    assert len(c.poll(2500)) == 1 and len(c.poll(3000)) == 1
    assert c.poll(3500) == []
    assert c.state == P.U_NO_PERMISSION and c.queue_position is None
    e = effects(c)
    assert ("no_answer", "queue") in e and ("tone", P.TONE_LOST) in e
    assert c.counters["queue_requests_sent"] == 2 and c.counters["queue_request_repeats"] == 2
    # only in the queue
    assert c.query_queue(4000) == []


def test_queue_lost_when_the_relay_forgets_us():
    # Floor Idle or "not queued" while queued: PTT held asks again, released does not.
    for lost in (idle(), qpi(254)):
        c = client()
        c.press(0)
        c.on_floor(20, qpi(2))
        out = c.on_floor(1000, lost)
        assert len(out) == 1 and is_request(out[0]) and c.state == P.U_PENDING_REQUEST
    c = client(PttConfig(c101=1))
    c.emergency(0)  # latched: wanted without PTT
    c.on_floor(20, qpi(1))
    c.release(500)  # PTT press/release ends the latch: Floor Release
    assert c.state == P.U_PENDING_RELEASE
    # and in "pending Request", a "not queued" answer to an older question is ignored
    c = client()
    c.press(0)
    assert c.on_floor(20, qpi(254)) == [] and c.state == P.U_PENDING_REQUEST


# --- talking, release, revoke ---------------------------------------------------------------------


def test_release_stops_the_mic_and_releases():
    c = talking(client())
    out = c.release(5000)
    assert len(out) == 1 and is_release(out[0])
    assert effects(c)[:2] == [("transmit", False), ("state", P.U_PENDING_RELEASE)]
    assert not c.transmit and c.state == P.U_PENDING_RELEASE
    assert c.next_deadline() == 5250
    c.on_floor(5050, idle())
    assert c.state == P.U_NO_PERMISSION and c.next_deadline() is None
    assert tones(c) == []  # a release needs no tone
    # Floor Taken (someone else got it next) settles the release as well
    c = talking(client())
    c.release(1000)
    c.on_floor(1020, taken("cat@no"))
    assert c.state == P.U_NO_PERMISSION and c.talker == "cat@no" and c.led == P.LED_RECEIVING


def test_t100_repeats_then_the_release_is_taken_as_done():
    c = talking(client())
    first = c.release(1000)
    times = []
    t = 1000
    while t < 3000:
        t += 10
        if c.poll(t):
            times.append(t)
    assert times == [1250, 1500, 1750]
    assert c.state == P.U_NO_PERMISSION and c.counters["release_repeats"] == 3
    assert ("no_answer", "release") in effects(c) and c.led == P.LED_LOST
    assert is_release(first[0])


def test_release_while_requesting_or_queued_cancels():
    c = client()
    c.press(0)
    out = c.release(100)
    assert is_release(out[0]) and c.state == P.U_PENDING_RELEASE
    assert c.next_deadline() == 100 + 250  # T100, not T101
    c = client()
    c.press(0)
    c.on_floor(20, qpi(1))
    out = c.release(500)
    assert is_release(out[0]) and c.state == P.U_PENDING_RELEASE
    # A Floor Granted that crosses our release is not taken up
    assert c.on_floor(520, granted()) == [] and not c.transmit
    c.on_floor(600, taken("bob@no"))
    assert c.state == P.U_NO_PERMISSION


def test_revoke_stops_the_mic_at_once_and_releases():
    c = talking(client())
    out = c.on_floor(3000, revoke(mcpt.REVOKE_PREEMPTED))
    e = effects(c)
    assert e[0] == ("transmit", False), e  # before anything else
    assert ("tone", P.TONE_REVOKED) in e and ("revoked", mcpt.REVOKE_PREEMPTED) in e
    assert len(out) == 1 and is_release(out[0])
    assert c.state == P.U_PENDING_RELEASE and c.led == P.LED_DENIED and c.counters["revokes"] == 1
    # the pre-empting talker is announced: our release is settled; PTT is still down, but a
    # revoked talker must press again
    assert c.on_floor(3050, taken("cat@no")) == []
    assert c.state == P.U_NO_PERMISSION and not c.transmit


def test_floor_lost_while_talking():
    # The relay ended our burst (its T1 saw no media from us, a forced release): Floor Idle or
    # Floor Taken for someone else while we hold the floor.
    for m in (idle(), taken("cat@no")):
        c = talking(client())
        assert c.on_floor(2000, m) == []
        e = effects(c)
        assert ("transmit", False) in e and ("floor_lost",) in e and ("tone", P.TONE_REVOKED) in e
        assert c.state == P.U_NO_PERMISSION
    # A Floor Taken that names us (the late-entry copy after a re-join) is not a loss.
    c = talking(client())
    assert c.on_floor(2000, taken(ME)) == [] and c.transmit


def test_unexpected_messages_are_ignored_and_stray_grants_handed_back():
    c = client()
    for m in (revoke(), deny(), qpi(1), FloorMsg(mcpt.FLOOR_ACK, SRV, msg_type=4)):
        assert c.on_floor(0, m) == []
    assert c.state == P.U_NO_PERMISSION and c.counters["ignored"] == 4
    # A grant nobody asked for goes back at once, so no floor stays stuck with us.
    out = c.on_floor(100, granted())
    assert len(out) == 1 and is_release(out[0]) and c.state == P.U_PENDING_RELEASE
    # But a late grant while PTT is still held (the request had been given up) is taken.
    c = client()
    c.press(0)
    c.poll(1000)
    assert c.state == P.U_NO_PERMISSION
    c.on_floor(1200, granted())
    assert c.state == P.U_HAS_PERMISSION and c.transmit
    # Deny and queue info while talking are ignored; Revoke while releasing too.
    assert c.on_floor(1300, deny()) == [] and c.on_floor(1300, qpi(1)) == [] and c.transmit
    c.release(1400)
    assert c.on_floor(1450, revoke()) == [] and c.state == P.U_PENDING_RELEASE


def test_press_during_pending_release_asks_again_once_settled():
    c = talking(client())
    c.release(1000)
    c.press(1020)
    assert c.state == P.U_PENDING_RELEASE
    out = c.on_floor(1050, idle())
    assert len(out) == 1 and is_request(out[0]) and c.state == P.U_PENDING_REQUEST
    # pressed and released again before the release settled: nothing more
    c = talking(client())
    c.release(1000)
    c.press(1020)
    c.release(1030)
    assert c.on_floor(1050, idle()) == [] and c.state == P.U_NO_PERMISSION


# --- receiving --------------------------------------------------------------------------------------


def test_receiving_follows_floor_taken_idle_and_t103():
    c = client()
    c.on_floor(0, taken("bob@no", 0x1234))
    assert c.led == P.LED_RECEIVING and c.talker == "bob@no" and c.talker_ssrc == 0x1234
    c.on_floor(1000, idle())
    assert c.led == P.LED_REST and c.talker is None
    # Voice alone (a Floor Taken lost on the way) shows receiving; T103 ends it.
    c.on_media(2000)
    assert c.led == P.LED_RECEIVING and c.next_deadline() == 6000
    c.on_media(3000)  # restarts T103 ...
    # ... looked at when the first packet's T103 falls due, then moved on to the last voice
    # heard + T103 (no deadline computed per packet: a float each, on MicroPython)
    assert c.next_deadline() == 6000
    c.poll(6500)
    assert c.led == P.LED_RECEIVING and c.next_deadline() == 7000
    c.poll(7000)
    assert c.led == P.LED_REST and c.next_deadline() is None
    # T103 also ends a Floor Taken whose talker went silent
    c.on_floor(8000, taken())
    c.on_media(8100)
    c.poll(12200)
    assert c.led == P.LED_REST and c.talker is None


# --- emergency ------------------------------------------------------------------------------------


def test_emergency_button_latches_an_emergency_call():
    c = client()
    out = c.emergency(0)
    assert len(out) == 1 and is_request(out[0], prio=255, ind=mcpt.IND_EMERGENCY | Q)
    e = effects(c)
    assert ("emergency", GROUP) in e and ("tone", P.TONE_EMERGENCY) in e
    assert c.emergency_on and c.led == P.LED_EMERGENCY
    c.on_floor(50, granted())
    assert c.transmit and c.led == P.LED_TALKING
    # open microphone: no PTT is held and the floor is kept
    c.poll(10000)
    assert c.transmit
    # a PTT press-and-release ends the open microphone
    assert c.press(11000) == []
    out = c.release(11500)
    assert is_release(out[0]) and not c.transmit
    c.on_floor(11550, idle())
    assert c.led == P.LED_EMERGENCY  # the emergency itself is still in force
    # while it is, every request is an emergency request
    out = c.press(12000)
    assert is_request(out[0], prio=255, ind=mcpt.IND_EMERGENCY | Q)
    c.release(12100)
    c.on_floor(12200, idle())
    effects(c)
    # the second long press cancels
    assert c.emergency(13000) == []
    e = effects(c)
    assert ("cancel_emergency", GROUP) in e and ("tone", P.TONE_EMERGENCY_CANCEL) in e
    assert not c.emergency_on and c.led == P.LED_REST
    assert c.counters["emergencies"] == 1 and c.counters["emergency_cancels"] == 1


def test_cancel_of_a_latched_call_releases_the_floor():
    c = client()
    c.emergency(0)
    c.on_floor(50, granted())
    out = c.emergency(5000)
    assert len(out) == 1 and is_release(out[0]) and not c.transmit
    # cancelled while still waiting for the floor: the request is withdrawn
    c = client()
    c.emergency(0)
    c.on_floor(50, qpi(1))
    out = c.emergency(1000)
    assert len(out) == 1 and is_release(out[0]) and c.state == P.U_PENDING_RELEASE


def test_emergency_while_talking_raises_the_floor_held():
    c = talking(client())
    out = c.emergency(1000)
    assert len(out) == 1 and is_request(out[0], prio=255, ind=mcpt.IND_EMERGENCY | Q)
    assert c.state == P.U_HAS_PERMISSION and c.transmit
    c.on_floor(1050, granted())  # the relay's re-grant
    assert c.transmit
    # PTT was held when it was pressed: not latched, PTT release ends the talk
    out = c.release(2000)
    assert is_release(out[0]) and not c.transmit


def test_emergency_while_queued_asks_again_with_the_emergency_rank():
    c = client()
    c.press(0)
    c.on_floor(20, qpi(3))
    out = c.emergency(1000)
    assert is_request(out[0], prio=255, ind=mcpt.IND_EMERGENCY | Q)
    assert c.state == P.U_PENDING_REQUEST and c.next_deadline() == 1250


# --- the link ---------------------------------------------------------------------------------------


def test_link_lost_and_back():
    c = talking(client())
    assert c.link_lost(1000) == []
    e = effects(c)
    assert e[0] == ("transmit", False) and ("tone", P.TONE_LOST) in e
    assert c.state == P.U_NO_PERMISSION and c.led == P.LED_LOST
    # registered again with PTT still held: the request goes out again
    out = c.link_up(3000)
    assert len(out) == 1 and is_request(out[0]) and c.led != P.LED_LOST
    # a latched emergency call is asked for again too
    c = client()
    c.emergency(0)
    for t in (250, 500, 750, 1000):
        c.poll(t)
    assert c.state == P.U_NO_PERMISSION and c.led == P.LED_LOST and c.emergency_on
    out = c.link_up(5000)
    assert is_request(out[0], prio=255, ind=mcpt.IND_EMERGENCY | Q)
    # nothing wanted: nothing sent
    c = client()
    c.link_lost(0)
    assert c.link_up(1000) == [] and c.led == P.LED_REST
    # any floor message means the relay answers: the lost-link pattern goes
    c.link_lost(2000)
    c.on_floor(2100, idle())
    assert c.led == P.LED_REST


def test_stop_returns_to_start_stop():
    c = talking(client())
    c.on_media(1000)
    assert c.stop(2000) == []
    assert c.state == P.START_STOP and not c.transmit and c.next_deadline() is None
    assert c.on_floor(2100, idle()) == [] and c.counters["ignored"] == 1


def test_config_checks():
    raises(ValueError, PttConfig, t101=0)
    raises(ValueError, PttConfig, c101=0)
    raises(ValueError, PttConfig, priority=256)
    raises(ValueError, PttConfig, emergency_priority=None)
    raises(ValueError, PttConfig, denied_show=-1)
    raises(ValueError, PttConfig.from_dict, {"t1O1": 0.1})
    cfg = PttConfig.from_dict({"t101": 0.1, "c101": 2, "priority": 10})
    assert cfg.t101 == 0.1 and cfg.t101_ms == 100 and cfg.c101 == 2 and cfg.priority == 10


def test_deadline_is_never_in_the_past():
    c = client()
    c.press(0)
    c.on_floor(20, deny())
    c.on_media(500)
    t = 0
    while c.next_deadline() is not None:
        t = c.next_deadline()
        c.poll(t)
        nd = c.next_deadline()
        assert nd is None or nd > t
    assert t == 4500  # T103 last


# --- long uptimes -----------------------------------------------------------------------------------

UPTIMES = (0, 60 * DAY_MS, MASK - 600)  # from boot, after 60 days, 600 ms before the 2^30 wrap


def _timers_from(base):
    """A press whose request repeats (T101) and is granted, a release repeated (T100) and settled,
    then a talker heard until T103: every deadline at its offset from ``base``, wrap or not."""
    c = client()
    c.start(base)
    effects(c)
    c.press(base)
    assert c.next_deadline() == tadd(base, 250)
    assert c.poll(tadd(base, 249)) == []
    assert len(c.poll(tadd(base, 250))) == 1 and c.next_deadline() == tadd(base, 500)
    c.on_floor(tadd(base, 300), granted())
    assert c.transmit and c.next_deadline() is None
    c.release(tadd(base, 1000))
    assert c.next_deadline() == tadd(base, 1250)
    assert c.poll(tadd(base, 1249)) == [] and len(c.poll(tadd(base, 1250))) == 1
    c.on_floor(tadd(base, 1300), idle())
    assert c.state == P.U_NO_PERMISSION and c.next_deadline() is None
    c.on_floor(tadd(base, 2000), taken("bob@no", 5))
    c.on_media(tadd(base, 2000))
    c.on_media(tadd(base, 3000))
    d = c.next_deadline()
    assert d == tadd(base, 6000) and not due(tadd(base, 5999), d)
    c.poll(tadd(base, 6000))
    assert c.led == P.LED_RECEIVING and c.next_deadline() == tadd(base, 7000)
    c.poll(tadd(base, 7000))
    assert c.led == P.LED_REST and c.talker is None and c.next_deadline() is None
    # The denied pattern's 1.5 s, too.
    c.press(tadd(base, 8000))
    c.on_floor(tadd(base, 8020), deny())
    assert tdiff(c.next_deadline(), base) == 9520
    c.poll(tadd(base, 9519))
    assert c.led == P.LED_DENIED
    c.poll(tadd(base, 9520))
    assert c.led == P.LED_REST


def test_timers_after_60_days_and_across_the_tick_wrap():
    # Float seconds lost 100 ms steps after about 30 days on an ESP32 (single precision): the
    # timers are integer milliseconds modulo 2^30 and fire at the same offsets at any uptime,
    # across the wrap too (the last start puts every deadline after it).
    for base in UPTIMES:
        _timers_from(base)
    assert tadd(MASK - 600, 6000) < MASK - 600  # the wrap was crossed


# --- against the real relay -------------------------------------------------------------------------


def at(w):
    """The world's time: the cores' integer milliseconds (opmob.ticks)."""
    return w.now


class Acc:
    """A PTT client wired to a DeviceSession of the in-memory world, as the app wires them."""

    def __init__(self, w, name, cfg=None):
        self.w = w
        self.name = name
        self.dev = w.devs[name]
        self.ptt = PttClient(cfg, group=G2, identity=ident(name))
        self.ptt.start(at(w))
        self.log = []  # effects
        self.cancels = 0

    def send(self, msgs):
        for m in msgs:
            self.w.act(self.name, self.dev.send_floor(self.w.now, m, G2))

    def deliver(self):
        moved = False
        for e in self.w.events(self.name):
            if e[0] == "floor" and e[1] == G2:
                self.send(self.ptt.on_floor(at(self.w), e[2]))
                moved = True
            elif e[0] == "voice":
                self.ptt.on_media(at(self.w))
        for e in self.ptt.effects:
            self.log.append(e)
            if e[0] == "cancel_emergency":
                self.w.act(self.name, self.dev.cancel_emergency(self.w.now, e[1]))
                self.cancels += 1
        self.ptt.effects = []
        return moved

    def tones(self):
        got = [e[1] for e in self.log if e[0] == "tone"]
        self.log = [e for e in self.log if e[0] != "tone"]
        return got


def settle(accs):
    for _ in range(100):
        if not any([a.deliver() for a in accs]):
            return
    raise AssertionError("floor messages never settle")


def advance(accs, dt):
    w = accs[0].w
    end = tadd(w.now, dt)
    while tdiff(end, w.now) > 0:
        w.step(10)
        for a in accs:
            a.send(a.ptt.poll(at(w)))
        settle(accs)


def world(names=("ann", "bob", "cat"), cfg=None):
    w = World()
    for n in names:
        w.device(n, [G2])
    w.step(100)
    accs = [Acc(w, n, cfg) for n in names]
    settle(accs)
    for a in accs:
        a.log = []
    return w, accs


def do(acc, out):
    acc.send(out)
    settle([acc] + acc.peers)


def test_against_the_relay_talk_and_listen():
    w, (ann, bob, cat) = world()
    for a in (ann, bob, cat):
        a.peers = [x for x in (ann, bob, cat) if x is not a]
    do(ann, ann.ptt.press(at(w)))
    assert ann.ptt.state == P.U_HAS_PERMISSION and ann.ptt.transmit
    assert ann.tones() == [P.TONE_TALK_PERMIT]
    for b in (bob, cat):
        assert b.ptt.state == P.U_NO_PERMISSION and b.ptt.led == P.LED_RECEIVING
        assert b.ptt.talker == "ann@no"
    # ann talks: the voice reaches the others, who keep "receiving"
    sent = w.talk("ann", 10)
    bob.deliver()
    assert len(sent) == 10 and bob.ptt.led == P.LED_RECEIVING
    do(ann, ann.ptt.release(at(w)))
    assert ann.ptt.state == P.U_NO_PERMISSION and not ann.ptt.transmit
    advance([ann, bob, cat], 5000)  # T103 runs out after the last voice
    for a in (ann, bob, cat):
        assert a.ptt.led == P.LED_REST, (a.name, a.ptt.led)
    assert w.relay.status()["groups"][0]["floor_state"] == "G: Floor Idle"
    w.check_counters()


def test_against_the_relay_queue_deny_and_preemption():
    w, (ann, bob, cat) = world()
    accs = [ann, bob, cat]
    for a in accs:
        a.peers = [x for x in accs if x is not a]
    do(ann, ann.ptt.press(at(w), priority=100))
    # bob queues (our client says it supports queueing)
    do(bob, bob.ptt.press(at(w)))
    assert bob.ptt.state == P.U_QUEUED and bob.ptt.queue_position == 1
    assert bob.tones() == [P.TONE_QUEUED] and bob.ptt.led == P.LED_QUEUED
    # bob asks where he stands
    do(bob, bob.ptt.query_queue(at(w)))
    assert bob.ptt.queue_position == 1 and bob.ptt.next_deadline() is None
    # cat (ceiling 200) pre-empts ann
    do(cat, cat.ptt.press(at(w), priority=200))
    assert ann.ptt.state == P.U_NO_PERMISSION and not ann.ptt.transmit
    assert P.TONE_REVOKED in ann.tones()
    assert cat.ptt.state == P.U_HAS_PERMISSION and cat.tones() == [P.TONE_QUEUED, P.TONE_TALK_PERMIT]
    assert ann.ptt.talker == "cat@no"
    # bob, still queued behind cat, gives up; ann asks without queueing and is denied
    do(bob, bob.ptt.release(at(w)))
    assert bob.ptt.state == P.U_NO_PERMISSION
    ann.ptt.cfg = PttConfig(queueing=False)
    ann.ptt.release(at(w))
    do(ann, ann.ptt.press(at(w)))
    assert ann.ptt.state == P.U_NO_PERMISSION and P.TONE_DENY in ann.tones()
    do(cat, cat.ptt.release(at(w)))
    assert w.relay.status()["groups"][0]["floor_state"] == "G: Floor Idle"
    w.check_counters()


def test_against_the_relay_emergency_preempts_and_is_cancelled():
    w, (ann, bob, dan) = world(("ann", "bob", "dan"))
    accs = [ann, bob, dan]
    for a in accs:
        a.peers = [x for x in accs if x is not a]
    do(ann, ann.ptt.press(at(w), priority=100))
    # dan (ceiling 50) uses the emergency button: pre-empts, and talks without holding PTT
    do(dan, dan.ptt.emergency(at(w)))
    assert dan.ptt.state == P.U_HAS_PERMISSION and dan.ptt.transmit
    assert dan.tones() == [P.TONE_EMERGENCY, P.TONE_QUEUED, P.TONE_TALK_PERMIT]
    assert not ann.ptt.transmit and ann.ptt.state == P.U_NO_PERMISSION
    assert ann.ptt.group_indicator == mcpt.IND_EMERGENCY
    assert w.relay.status()["groups"][0]["emergency"] is True
    advance(accs, 2000)
    assert dan.ptt.transmit  # latched: the floor is kept
    # the second long press cancels: the app sends EMERGENCY_CANCEL, the relay clears the state,
    # and the latched call is released
    do(dan, dan.ptt.emergency(at(w)))
    advance(accs, 500)
    assert dan.cancels == 1 and not dan.ptt.transmit
    assert w.relay.status()["groups"][0]["emergency"] is False
    assert dan.ptt.state == P.U_NO_PERMISSION
    w.check_counters()


def test_against_a_silent_relay_the_request_fails_with_the_lost_link_tone():
    w, (ann, bob) = world(("ann", "bob"))
    ann.peers = [bob]
    bob.peers = [ann]
    w.lose = lambda src, dst, data: True  # the relay has gone
    do(ann, ann.ptt.press(at(w)))
    assert ann.ptt.state == P.U_PENDING_REQUEST
    advance([ann, bob], 1100)
    assert ann.ptt.state == P.U_NO_PERMISSION and ann.ptt.led == P.LED_LOST
    assert ann.tones() == [P.TONE_LOST] and ann.ptt.counters["request_repeats"] == 3
    # the relay comes back: the next press works
    w.lose = None
    ann.ptt.release(at(w))
    do(ann, ann.ptt.press(at(w)))
    advance([ann, bob], 100)
    assert ann.ptt.state == P.U_HAS_PERMISSION
