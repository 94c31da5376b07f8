# The accessory's sans-I/O core (accessory/core.py) alone, against a real relay core in memory
# (relaynet.World): registration and affiliation, PTT granted / queued / denied, the call heard and
# its voice, emergency, group selection, relay and link loss; from boot, after 60 days of uptime and
# across the 2^30 tick wrap. Both runtimes.
from opmob import rtp
from opmob.accessory.core import LOST_TONE_REPEAT_MS, AccessoryCore
from opmob.accessory.groups import Groups
from opmob.ticks import DAY_MS, MASK, tadd
from relaynet import G1, G2, RELAY, World, ident, secret_of

RELAY_ENTRY = {"identity": "relay-1@no", "host": RELAY[0], "port": RELAY[1], "ssid": "opmob-no-1"}
STARTS = (0, 60 * DAY_MS, MASK - 3000)  # from boot, after 60 days, 3 s before the 2^30 wrap


class Acc:
    """An accessory core on the world's network, as the app drives it (minus the asyncio)."""

    def __init__(self, w, name, talk=(G1, G2), scan=()):
        self.w = w
        self.name = name
        n = len(w.devs) + 2
        self.addr = ("10.0.1.%d" % n, 5000)
        groups = Groups(
            [{"identity": g, "priority": 100, "label": g} for g in talk],
            [{"identity": g, "priority": 50, "label": g} for g in scan],
        )
        from fwtest import Rng

        self.core = AccessoryCore(
            ident(name), secret_of(name), Rng(n).bytes, groups, relays=[RELAY_ENTRY], home="no"
        )
        self.heard = []  # (seq, n) of each voice packet the core gave to play
        self.core.play = self._play
        w.devs[name] = self.core
        w.addr[name] = self.addr
        w.by_addr[self.addr] = self.core
        if hasattr(w, "sim"):
            w.sim.attach(self.core, self.addr)  # a World on opmob.sim: the core is a node like any
        self.log = []

    def _play(self, now, buf, n):
        self.heard.append(((buf[2] << 8) | buf[3], n))

    def do(self, out):
        self.w.act(self.name, out)

    def connect(self):
        self.do(self.core.connect(self.w.now, RELAY_ENTRY))

    def events(self, kind=None):
        """Drain the core's events (as the app does after every call), keep them in ``log``."""
        ev = self.core.events
        self.core.events = []
        self.log.extend(ev)
        if kind is None:
            return ev
        return [e for e in ev if e[0] == kind]

    def tones(self):
        return [e[1] for e in self.events("tone")]


def world(start=0, names=("ann", "bob", "cat"), **cfg):
    w = World(start=start, **cfg)
    accs = [Acc(w, n) for n in names]
    for a in accs:
        a.connect()
    w.step(100)
    return w, accs


def test_registration_and_affiliation():
    for start in STARTS:
        w, (ann,) = world(start, ("ann",))
        ev = ann.events()
        kinds = [e[0] for e in ev]
        assert kinds[0] == "session" and ev[0][1] is RELAY_ENTRY, ev
        assert "persist" in kinds and ("registered", RELAY_ENTRY) in ev, ev
        # The persist event comes before the registration it protects (the app writes it first).
        assert kinds.index("persist") < kinds.index("registered")
        assert ("affiliation", G1, True, 0) in ev, ev
        assert ("ptt", "U: has no permission") in ev and ev[-1] == ("led", "registered"), ev
        c = ann.core
        assert c.dev.registered and c.dev.affiliated == [G1] and list(c.clients) == [G1]
        assert c.led() == "registered" and c.quiet() and not c.needs_session(RELAY_ENTRY)
        # Nothing is due before the keep-alive: the relay and the core agree on the deadline.
        d = c.next_deadline()
        assert d is not None and not c.poll(w.now)


def test_ptt_granted_queued_and_the_call_heard():
    for start in STARTS:
        w, (ann, bob, cat) = world(start)
        for a in (ann, bob, cat):
            a.events()
        ann.do(ann.core.press_ptt(w.now, at=tadd(w.now, -30)))
        ev = ann.events()
        assert ("transmit", True) in ev and ("tone", "talk_permit") in ev, ev
        assert ("floor", "granted", ()) in ev and ("led", "talking") in ev, ev
        access = [e for e in ev if e[0] == "access"]
        assert access == [("access", "granted", 30)], access  # from the key's edge, in ms
        assert ann.core.transmitting and not ann.core.quiet()
        ssrc = ann.core.dev.ssrc
        for b in (bob, cat):
            assert ("rx", G1, "ann@no", ssrc) in b.events() and b.core.led() == "receiving"
        # ann's voice reaches bob's playback (the core's play), and moves T103
        for k in range(5):
            pkt = rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, 100 + k, 160 * k, 0, marker=k == 0), bytes(84))
            ann.do(ann.core.dev.send_voice(w.now, pkt))
            w.step(20)
        assert [h[0] for h in bob.heard] == [100, 101, 102, 103, 104] and bob.heard[0][1] == 96
        assert bob.core.clients[G1].next_deadline() is not None  # T103 runs
        # bob asks while ann talks: queued; ann releases: bob is granted from the queue
        bob.do(bob.core.press_ptt(w.now))
        ev = bob.events()
        assert ("floor", "queued", (1,)) in ev and ("tone", "queued") in ev and bob.core.led() == "queued"
        ann.do(ann.core.release_ptt(w.now))
        ev = ann.events()
        assert ("transmit", False) in ev and ("rx", G1, "bob@no", bob.core.dev.ssrc) in ev, ev
        ev = bob.events()
        assert ("transmit", True) in ev and ("floor", "granted", ()) in ev, ev
        assert ("rx", None, None, None) in ev  # bob's own burst: nothing to play
        # While bob talks nothing plays at bob's (half duplex), whoever sends.
        n = len(bob.heard)
        pkt = rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, 105, 800, 0), bytes(84))
        ann.do(ann.core.dev.send_voice(w.now, pkt))
        assert len(bob.heard) == n
        bob.do(bob.core.release_ptt(w.now))
        w.step(100)
        for a in (ann, bob, cat):
            a.events()
            assert a.core.rx_group is None and a.core.led() == "registered", (a.name, a.core.led())
        assert w.relay.status()["groups"][0]["floor_state"] == "G: Floor Idle"


def test_ptt_denied_without_queueing():
    w, (ann, bob) = world(0, ("ann", "bob"), queueing=False)
    ann.do(ann.core.press_ptt(w.now))
    bob.events()
    bob.do(bob.core.press_ptt(w.now))
    ev = bob.events()
    assert ("tone", "deny") in ev and [e for e in ev if e[0] == "floor"][0][1] == "denied", ev
    assert bob.core.led() == "denied" and not bob.core.transmitting
    w.step(2000)  # the denied pattern's time
    bob.events()
    assert bob.core.led() == "receiving"


def test_emergency_preempts_alerts_and_is_cancelled():
    w, (ann, bob, dan) = world(0, ("ann", "bob", "dan"))
    ann.do(ann.core.press_ptt(w.now))
    for a in (ann, bob, dan):
        a.events()
    # dan (ceiling 50) uses the emergency button: an emergency call that pre-empts ann
    dan.do(dan.core.emergency(w.now))
    ev = dan.events()
    assert ("emergency", G1, True) in ev and ("tone", "emergency") in ev, ev
    assert ("transmit", True) in ev and dan.core.led() == "emergency"
    ev = ann.events()
    assert ("transmit", False) in ev and ("tone", "revoked") in ev, ev
    assert ("rx", G1, "dan@no", dan.core.dev.ssrc) in ev
    ev = bob.events()
    assert ("alert", G1, "dan@no") in ev and ("tone", "emergency") in ev, ev
    # the second long press cancels: the relay clears the group's emergency state
    dan.do(dan.core.emergency(w.now))
    w.step(500)
    ev = dan.events()
    assert ("emergency", G1, False) in ev and ("tone", "emergency_cancel") in ev, ev
    assert not dan.core.transmitting
    assert ("alert_cancel", G1, "dan@no") in bob.events()
    assert w.relay.status()["groups"][0]["emergency"] is False


def test_group_step_and_scan():
    w, (ann, bob) = world(0, ("ann", "bob"))
    ann.events()
    ann.do(ann.core.step_group(w.now, 1))
    ev = ann.events()
    assert ("group", "step", G2, False) in ev and ("affiliation", G2, True, 0) in ev, ev
    assert ann.core.dev.affiliated == [G2] and list(ann.core.clients) == [G2]
    # refused while the floor is being asked for
    ann.do(ann.core.press_ptt(w.now))
    ann.events()
    ann.do(ann.core.step_group(w.now, 1))
    assert ann.tones() == ["deny"] and ann.core.groups.selected == G2
    # a scan group heard while the talk group is quiet
    w2 = World()
    cat = Acc(w2, "cat", talk=(G1,), scan=(G2,))
    eve = Acc(w2, "eve", talk=(G2,))
    for a in (cat, eve):
        a.connect()
    ev = cat.events()
    assert ("affiliation", G1, True, 0) in ev and ("affiliation", G2, True, 0) in ev, ev
    cat.do(cat.core.toggle_scan(w2.now))
    ev = cat.events()
    assert ("group", "scan", G1, False) in ev and cat.core.dev.affiliated == [G1], ev
    cat.do(cat.core.toggle_scan(w2.now))
    assert ("group", "scan", G1, True) in cat.events() and G2 in cat.core.dev.affiliated
    eve.do(eve.core.press_ptt(w2.now))
    assert ("rx", G2, "eve@no", eve.core.dev.ssrc) in cat.events()
    assert cat.core.led() == "receiving"


def test_relay_loss_lost_link_and_back():
    for start in STARTS:
        w, (ann, bob) = world(start, ("ann", "bob"))
        ann.events()
        w.lose = lambda src, dst, data: True  # the relay has gone
        ann.do(ann.core.press_ptt(w.now))
        w.step(1500)
        ev = ann.events()
        assert ("floor", "no_answer", ("request",)) in ev and ("tone", "lost_link") in ev, ev
        assert ann.core.led() == "lost_link"
        w.step(20000)
        ev = ann.events()
        assert [e for e in ev if e[0] == "session_lost"][0][1] == "relay_lost", ev
        assert ("lost",) in ev and ann.core.lost
        # the relay is back: the session registers again by itself, the lost state goes
        w.lose = None
        w.step(70000)
        ev = ann.events()
        assert ("registered", RELAY_ENTRY) in ev and not ann.core.lost, ev
        assert ann.core.led() == "registered"


def test_link_down_tone_repeats_until_registered():
    for start in STARTS:
        w, (ann,) = world(start, ("ann",))
        ann.events()
        t0 = w.now
        ann.do(ann.core.link_down(w.now))
        ev = ann.events()
        assert ("lost",) in ev and ev.count(("tone", "lost_link")) == 1 and ann.core.led() == "lost_link"
        # once a minute while it lasts, from the core's own deadline
        assert ann.core.next_deadline() is not None
        w.step(LOST_TONE_REPEAT_MS - 1)
        assert ann.tones() == []
        w.run(tadd(t0, LOST_TONE_REPEAT_MS))
        assert ann.tones() == ["lost_link"]
        ann.connect()  # WiFi back at the same relay: registers again at once
        ev = ann.events()
        assert ("registered", RELAY_ENTRY) in ev and not ann.core.lost, ev
        assert ("session", RELAY_ENTRY) not in ev  # the same session


def test_no_session_yet_and_off_air():
    w = World()
    ann = Acc(w, "ann")
    assert ann.core.led() == "idle" and ann.core.next_deadline() is None
    assert ann.core.press_ptt(0) == [] and ann.tones() == ["lost_link"]
    assert ann.core.on_datagram(0, RELAY, b"\x00" * 20) == ()
    ann.core.killed = True
    assert ann.core.led() == "disabled"
    assert ann.core.emergency(0) == [] and ann.tones() == ["deny"]


def test_a_failing_event_is_counted_and_the_rest_still_handled():
    w, (ann,) = world(0, ("ann",))
    ann.events()
    dev = ann.core.dev
    dev.events.append(("affiliation", G1))  # not the shape of an ("affiliation", group, code)...
    dev.events.append(("deregistered",))
    ann.core.poll(w.now)
    ev = ann.events()
    faults = [e for e in ev if e[0] == "fault"]
    assert len(faults) == 1 and faults[0][1] == "event affiliation" and ann.core.event_errors == 1, ev
    assert ("deregistered",) in ev  # ... and the next event is still handled


def test_a_new_relay_is_a_new_session_and_the_old_floor_is_gone():
    w, (ann, bob) = world(0, ("ann", "bob"))
    ann.do(ann.core.press_ptt(w.now))
    assert ann.core.transmitting and bob.core.rx_group == G1
    ann.events()
    other = {"identity": "relay-2@no", "host": "10.0.0.2", "port": 7700, "ssid": "opmob-no-2"}
    assert ann.core.needs_session(other)
    old = ann.core.dev
    out = ann.core.connect(w.now, other)
    ev = ann.events()
    assert ("transmit", False) in ev and ("session", other) in ev, ev
    assert ann.core.dev is not old and ann.core.clients == {} and not ann.core.transmitting
    assert out and out[0][0] == ("10.0.0.2", 7700)  # the registration goes to the new relay


def test_a_poll_with_nothing_due_makes_no_object():
    # The driver wakes the core for T103's look every few seconds of a call: parts with nothing
    # due are not polled, and nothing to send is a shared empty tuple (MicroPython's heap counts).
    import gc

    from fwtest import IS_MICROPYTHON, SkipTest

    if not IS_MICROPYTHON:
        raise SkipTest("allocation is measured on MicroPython only")
    w, (ann,) = world(0, ("ann",))
    ann.events()
    core = ann.core
    assert not core.poll(w.now)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(100):
            core.poll(w.now)
            core.next_deadline()
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    assert used == 0, used


def test_a_late_entrants_floor_taken_that_overtakes_the_affiliation_answer_is_kept():
    # bob steps into G2 while ann talks there. The relay answers the affiliation and sends the
    # late entrant's Floor Taken; on a network that reorders, the Floor Taken comes first. It is
    # kept for the PTT client the answer makes: bob hears the running call at once.
    for reorder in (False, True):
        w, (ann, bob) = world(0, ("ann", "bob"))
        ann.do(ann.core.step_group(w.now, 1))
        ann.do(ann.core.press_ptt(w.now))
        assert ann.core.transmitting
        bob.events()
        held = []
        if reorder:
            w.lose = lambda src, dst, data: dst == bob.addr and held.append((src, dst, data)) is None
        bob.do(bob.core.step_group(w.now, 1))
        w.lose = None
        for src, dst, data in reversed(held):  # sent again in the reverse order: reordered
            w.send(src, [(dst, data)])
        w.pump()
        assert len(held) >= 2 or not reorder, held
        ev = bob.events()
        assert ("affiliation", G2, True, 0) in ev, ev
        assert ("rx", G2, "ann@no", ann.core.dev.ssrc) in ev, (reorder, ev)
        assert bob.core.led() == "receiving" and not bob.core._early_floor
