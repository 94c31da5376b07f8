"""opmob.sim: the virtual clock, the timer heap and the in-memory network (both runtimes)."""

from fwtest import Rng, raises
from opmob import ticks
from opmob.sim import Sim, SimError
from opmob.ticks import DAY_MS, PERIOD, due, tadd, tdiff

A = ("10.0.0.1", 7700)
B = ("10.0.0.2", 7700)
C = "c"  # addresses are opaque: any hashable value


class Sink:
    """Records what reaches it: (virtual ms, now, src, data); answers nothing."""

    def __init__(self, sim):
        self.sim = sim
        self.got = []
        self.polls = 0

    def on_datagram(self, now, src, data):
        assert now == self.sim.now
        self.got.append((self.sim.t, now, src, data))
        return []

    def poll(self, now):
        self.polls += 1
        return []

    def next_deadline(self):
        return None


class Echo(Sink):
    """Answers every datagram with b"re:" + it."""

    def on_datagram(self, now, src, data):
        Sink.on_datagram(self, now, src, data)
        return [(src, b"re:" + data)]


class Ticker:
    """A core with a periodic timer, kept as ticks: polled only when due, never early."""

    def __init__(self, now, period, dst=None):
        self.period = period
        self.deadline = tadd(now, period)
        self.fired = []
        self.dst = dst
        self.early = 0

    def on_datagram(self, now, src, data):
        return []

    def poll(self, now):
        if not due(now, self.deadline):
            self.early += 1
            return []
        self.fired.append(now)
        self.deadline = tadd(self.deadline, self.period)
        return [(self.dst, b"tick")] if self.dst is not None else []

    def next_deadline(self):
        return self.deadline


def test_rng_is_fwtest_rng():
    from opmob.sim import Rng as SimRng

    a, b = SimRng(12345), Rng(12345)
    assert [a.u32() for _ in range(50)] == [b.u32() for _ in range(50)]
    assert SimRng(9)(8) == Rng(9).bytes(8)


def test_same_instant_fifo_by_send_order():
    s = Sim()
    sink = s.attach(Sink(s), B)
    s.send(A, [(B, b"1"), (B, b"2")])
    s.send(C, [(B, b"3")])
    s.send(A, [(B, b"4")])
    assert sink.got == []  # nothing runs until the clock is run
    s.settle()
    assert [g[3] for g in sink.got] == [b"1", b"2", b"3", b"4"]
    assert [g[2] for g in sink.got] == [A, A, C, A]
    assert s.counters["sent"] == 4 and s.counters["delivered"] == 4 and s.t == 0


def test_one_instant_actions_then_deadlines_by_attach_order_then_datagrams():
    s = Sim()
    order = []

    class Rec(Ticker):
        def __init__(self, name, now, period):
            Ticker.__init__(self, now, period, "sink")
            self.name = name

        def poll(self, now):
            order.append(("wake", self.name))
            return Ticker.poll(self, now)

    class Log(Sink):
        def on_datagram(self, now, src, data):
            order.append(("got", src))
            return []

    s.attach(Log(s), "sink")
    late = s.attach(Rec("b", s.now, 10), "b")
    s.attach(Rec("a", s.now, 10), "a")
    late.deadline = tadd(s.now, 30)  # pushed again, after a's: b still wakes first at 10
    s.touch(late)
    late.deadline = tadd(s.now, 10)
    s.touch(late)
    s.at(10, lambda: order.append(("action", None)) or s.send("x", [("sink", b"1")]))
    s.run_until(10)
    assert order == [("action", None), ("wake", "b"), ("wake", "a"), ("got", "x"), ("got", "b"), ("got", "a")]


def test_replies_leave_from_the_address_reached_polls_from_the_first():
    s = Sim()
    sink = s.attach(Sink(s), C)
    echo = Echo(s)
    s.attach(echo, A, B)
    assert s.node_at(A) is echo and s.node_at(B) is echo
    s.send(C, [(A, b"x"), (B, b"y")])
    s.settle()
    assert [(g[2], g[3]) for g in sink.got] == [(A, b"re:x"), (B, b"re:y")]
    t = s.attach(Ticker(s.now, 10, C), "t1", "t2")
    s.run_for(10)
    assert t.fired and sink.got[-1][2:] == ("t1", b"tick")


def test_delay_and_jitter_bounds():
    s = Sim(seed=3)
    sink = s.attach(Sink(s), B)
    s.path(A, B, delay=30, jitter=10)
    sent_at = {}
    for i in range(600):
        data = b"%d" % i
        sent_at[data] = s.t
        s.send(A, [(B, data)])
        s.run_for(1)
    s.run_for(100)
    assert len(sink.got) == 600
    lat = [g[0] - sent_at[g[3]] for g in sink.got]
    assert min(lat) == 30 and max(lat) == 40, (min(lat), max(lat))
    # Jitter lets packets of one path overtake each other.
    order = [int(g[3]) for g in sink.got]
    assert order != sorted(order)
    # The other direction keeps the default: instant.
    back = s.attach(Sink(s), A)
    s.send(B, [(A, b"back")])
    s.settle()
    assert back.got[0][0] == s.t


def test_default_and_wildcard_paths():
    s = Sim()
    sinks = [s.attach(Sink(s), x) for x in (A, B, C)]
    s.set_default(delay=5)
    s.path(None, C, delay=50)
    s.send("z", [(A, b"a"), (C, b"c")])
    s.run_for(100)
    assert sinks[0].got[0][0] == 5 and sinks[2].got[0][0] == 50
    raises(ValueError, s.path, A, B, delay=-1)
    raises(ValueError, s.path, A, B, loss=1.5)


def test_loss_rate_and_counters():
    s = Sim(seed=11)
    sink = s.attach(Sink(s), B)
    s.path(A, B, loss=0.2)
    n = 5000
    for _ in range(n):
        s.send(A, [(B, b"v")])
    s.settle()
    got = len(sink.got)
    assert 0.77 * n <= got <= 0.83 * n, got
    c = s.counters
    assert c["sent"] == n and c["delivered"] == got and c["lost"] == n - got
    s.path(A, B, loss=1.0)
    s.path(A, C, loss=0.0)
    s.attach(Sink(s), C)
    s.send(A, [(B, b"v")] * 100 + [(C, b"w")] * 100)
    s.settle()
    assert len(sink.got) == got and c["delivered"] == got + 100


def test_discard_in_flight():
    s = Sim()
    sink = s.attach(Sink(s), B)
    t = s.attach(Ticker(s.now, 10), C)
    s.path(A, B, delay=50)
    s.send(A, [(B, b"1"), (B, b"2")])
    s.run_for(10)
    assert s.discard_in_flight() == 2 and s.in_flight() == 0 and s.idle()
    s.run_for(100)
    assert sink.got == [] and len(t.fired) == 11 and s.counters["discarded"] == 2


def test_drop_if_and_nowhere():
    s = Sim()
    sink = s.attach(Sink(s), B)
    s.drop_if = lambda src, dst, data: data == b"drop"
    s.send(A, [(B, b"drop"), (B, b"keep"), ("nobody", b"x")])
    s.settle()
    assert [g[3] for g in sink.got] == [b"keep"]
    assert s.counters["lost"] == 1 and s.counters["nowhere"] == 1


def test_partitions():
    s = Sim()
    sa, sb, sc = s.attach(Sink(s), A), s.attach(Sink(s), B), s.attach(Sink(s), C)
    cut = s.cut([A], [B])
    s.send(A, [(B, b"ab"), (C, b"ac")])
    s.send(B, [(A, b"ba"), (C, b"bc")])
    s.settle()
    assert sb.got == [] and sa.got == [] and len(sc.got) == 2
    assert s.counters["cut"] == 2
    s.restore(cut)
    s.send(A, [(B, b"ab")])
    s.settle()
    assert len(sb.got) == 1
    # Isolated from everyone; its own set still talks inside.
    s.cut([A, "a2"])
    sa2 = s.attach(Sink(s), "a2")
    s.send(A, [(B, b"x"), ("a2", b"in")])
    s.send(C, [(A, b"y")])
    s.settle()
    assert len(sb.got) == 1 and sa.got == [] and [g[3] for g in sa2.got] == [b"in"]
    s.restore()
    # In flight when the cut comes: lost on arrival. Sent during the cut: lost at once.
    s.path(A, B, delay=100)
    s.send(A, [(B, b"flying")])
    s.run_for(50)
    c = s.cut([B])
    s.send(A, [(B, b"during")])
    s.run_for(60)
    s.restore(c)
    s.run_for(200)
    assert len(sb.got) == 1 and s.counters["cut"] == 6
    assert s.is_cut(A, B) is False


def test_taps_see_every_datagram_with_times():
    s = Sim()
    s.attach(Echo(s), B)
    s.path(A, B, delay=7)
    log = []
    s.taps.append(lambda ev, t, src, dst, data: log.append((ev, t, src, dst, data)))
    cap = s.capture(("delivered", "nowhere"))
    s.send(A, [(B, b"p"), ("gone", b"q")])
    s.run_for(10)
    assert cap == [
        ("nowhere", 0, A, "gone", b"q"),
        ("delivered", 7, A, B, b"p"),
        ("nowhere", 7, B, A, b"re:p"),
    ]
    assert log == [
        ("sent", 0, A, B, b"p"),
        ("sent", 0, A, "gone", b"q"),
        ("nowhere", 0, A, "gone", b"q"),
        ("delivered", 7, A, B, b"p"),
        ("sent", 7, B, A, b"re:p"),
        ("nowhere", 7, B, A, b"re:p"),
    ]


def test_buffers_are_copied_at_send():
    s = Sim()
    sink = s.attach(Sink(s), B)
    buf = bytearray(b"abc")
    s.send(A, [(B, buf)])
    buf[0] = 0x7A
    s.settle()
    assert sink.got[0][3] == b"abc" and type(sink.got[0][3]) is bytes


def _ticker_run(start):
    s = Sim(start=start)
    t = s.attach(Ticker(s.now, 250), A)
    s.run_for(5000)
    return s, t


def test_deadlines_across_the_wrap():
    for start in (0, PERIOD - 1000, PERIOD - 1, 60 * DAY_MS, 200 * DAY_MS + 12345):
        s, t = _ticker_run(start)
        assert s.now == (start + 5000) % PERIOD, start
        assert len(t.fired) == 20 and t.early == 0, (start, len(t.fired), t.early)
        for i, now in enumerate(t.fired):
            assert tdiff(now, ticks.tadd(start, 0)) == 250 * (i + 1), (start, i, now)
    s, t = _ticker_run(PERIOD - 1000)
    assert any(now > PERIOD - 1000 for now in t.fired) and any(now < 5000 for now in t.fired)
    assert s.abs_of(s.now) == s.t and s.abs_of(tadd(s.now, -300)) == s.t - 300
    assert s.ticks(0) == PERIOD - 1000


def test_past_deadline_fires_at_once_and_a_stuck_timer_is_caught():
    class Late(Ticker):
        def poll(self, now):
            self.fired.append(now)
            self.deadline = None
            return []

    s = Sim(start=5)
    late = s.attach(Late(s.now, -(10**6)), A)  # long overdue: woken at once
    s.settle()
    assert late.fired == [5] and s.t == 0

    class Stuck(Ticker):
        def poll(self, now):
            return []

    s = Sim()
    s.max_same_instant = 1000
    s.attach(Stuck(s.now, 10), A)
    e = raises(SimError, s.run_for, 100)
    assert "t=10" in str(e)


def test_only_due_nodes_are_woken():
    s = Sim()
    sleepers = [s.attach(Ticker(s.now, 10**6), "n%d" % i) for i in range(200)]
    busy = s.attach(Ticker(s.now, 20), "busy")
    s.run_for(1000)
    assert len(busy.fired) == 50
    assert all(n.fired == [] and n.early == 0 for n in sleepers)
    assert s.counters["wakes"] == 50 and s.counters["events"] == 50


def test_deadline_moves_lazy_invalidation():
    class Moving(Sink):
        # A datagram "at:N" sets its deadline N ms from now; "off" clears it.
        def __init__(self, sim):
            Sink.__init__(self, sim)
            self.deadline = None
            self.fired = []

        def on_datagram(self, now, src, data):
            if data == b"off":
                self.deadline = None
            else:
                self.deadline = tadd(now, int(data[3:]))
            return []

        def poll(self, now):
            assert self.deadline is not None and due(now, self.deadline), (now, self.deadline)
            self.fired.append(self.sim.t)
            self.deadline = None
            return []

        def next_deadline(self):
            return self.deadline

    s = Sim(start=PERIOD - 50)
    m = s.attach(Moving(s), B)
    s.send(A, [(B, b"at:500")])
    s.run_for(100)
    s.send(A, [(B, b"at:900")])  # later: the entry at 500 is stale
    s.run_for(100)
    s.send(A, [(B, b"at:100")])  # earlier
    s.run_for(2000)
    assert m.fired == [300], m.fired
    s.send(A, [(B, b"at:100")])
    s.send(A, [(B, b"off")])
    s.run_for(1000)
    assert m.fired == [300] and s.counters["wakes"] == 1
    # Changed from outside the simulator: touch() reads the deadline again.
    m.deadline = tadd(s.now, 40)
    s.touch(m)
    s.run_for(100)
    assert m.fired == [300, s.t - 60]


def test_attach_replaces_and_detach():
    s = Sim()
    old = s.attach(Ticker(s.now, 10, C), A)
    sink = s.attach(Sink(s), C)
    s.run_for(10)
    new = s.attach(Ticker(s.now, 5, C), A)  # power-cycled in place
    s.run_for(20)
    assert len(old.fired) == 1 and len(new.fired) == 4
    s.detach(A)
    s.send(B, [(A, b"x")])
    s.run_for(100)
    assert len(new.fired) == 4 and s.counters["nowhere"] == 1 and len(sink.got) == 5


def test_a_node_detached_by_a_hook_mid_call():
    s = Sim()
    t = s.attach(Ticker(s.now, 10, C), A)
    sink = s.attach(Sink(s), C)
    s.after_call = lambda addr, node: s.detach(A) if node is t else None
    s.run_for(100)
    assert len(t.fired) == 1 and len(sink.got) == 1 and s.node_at(A) is None


def test_actions_in_order_and_at_the_right_time():
    s = Sim()
    seen = []
    s.at(30, lambda: seen.append(("b", s.t)))
    s.at(10, lambda: seen.append(("a", s.t)))
    s.at(30, lambda: seen.append(("c", s.t)))
    s.after(30, lambda: s.after(5, lambda: seen.append(("d", s.t))))
    s.run_until(29)
    assert seen == [("a", 10)] and s.t == 29
    s.run_until(100)
    assert seen == [("a", 10), ("b", 30), ("c", 30), ("d", 35)] and s.t == 100
    s.at(3, lambda: seen.append(("past", s.t)))  # in the past: runs now
    s.settle()
    assert seen[-1] == ("past", 100)


def test_run_until_idle_bounded():
    s = Sim()
    s.attach(Echo(s), A)
    s.attach(Sink(s), B)
    s.attach(Ticker(s.now, 1000), C)  # timers do not keep it busy
    s.path(B, A, delay=40)
    s.send(B, [(A, b"q")])
    assert s.run_until_idle() is True and s.t == 40 and s.idle()

    class Ping(Sink):
        def on_datagram(self, now, src, data):
            return [(src, data)]

    s = Sim()
    s.attach(Ping(s), A)
    s.attach(Ping(s), B)
    s.set_default(delay=10)
    s.send(A, [(B, b"x")])
    assert s.run_until_idle(1000) is False and s.t == 1000 and s.in_flight() == 1
    # At zero delay the same ping-pong never leaves the instant: a livelock, reported.
    s.set_default()
    s.max_same_instant = 1000
    raises(SimError, s.run_for, 100)


def _scenario(seed):
    s = Sim(seed=seed, start=PERIOD - 2000)
    log = []
    s.taps.append(lambda ev, t, src, dst, data: log.append((ev, t, src, dst, data)))
    s.attach(Echo(s), A)
    s.attach(Sink(s), C)
    s.attach(Ticker(s.now, 33, A), B)
    s.path(B, A, delay=20, jitter=15, loss=0.1)
    s.path(A, B, delay=5, jitter=30, loss=0.3)
    s.at(1000, lambda: s.cut([A], [B]))
    s.at(1500, lambda: s.restore())
    s.run_for(4000)
    c = dict(s.counters)
    c["in_flight"] = s.in_flight()
    return log, c


def test_deterministic_from_seed():
    log1, c1 = _scenario(7)
    log2, c2 = _scenario(7)
    assert log1 == log2 and c1 == c2
    log3, _ = _scenario(8)
    assert log3 != log1
    assert c1["cut"] > 0 and c1["lost"] > 0 and c1["delivered"] > 0
    # Every datagram sent has one fate, or is still on its way.
    fates = c1["delivered"] + c1["lost"] + c1["cut"] + c1["nowhere"] + c1["in_flight"]
    assert c1["sent"] == fates, c1


def test_after_call_hook():
    s = Sim()
    seen = []
    s.after_call = lambda addr, node: seen.append(addr)
    s.attach(Echo(s), A)
    s.attach(Ticker(s.now, 10), B)
    s.send(C, [(A, b"x")])
    s.run_for(10)
    assert seen == [A, B]


def test_real_cores_over_a_lossy_network_across_the_wrap():
    # A relay and four DeviceSessions, 20..35 ms apart with 5 % loss each way, starting 3 s before
    # the clock wraps: they register (retransmitting what is lost), one takes the floor and talks,
    # and the others hear most of it -- all on the cores' own timers, across the wrap.
    from opmob import mcpt, rtp
    from opmob.device import DeviceSession
    from opmob.registry import Registry
    from opmob.relay import Relay
    from opmob.store import MemoryStore
    from relaynet import G1, config, export_doc, ident, secret_of

    s = Sim(seed=21, start=PERIOD - 3000)
    store = MemoryStore()
    Registry(store, "no").load_export(export_doc())
    relay = s.attach(Relay(config(), Registry(store, "no"), store, Rng(4).bytes, s.now), A)
    s.set_default(delay=20, jitter=15, loss=0.05)
    seen = []  # the relay's typed events
    dev_events = {}  # address -> the session's events

    def on_events(addr, t, evs):
        if addr == A:
            seen.extend((addr, t, e) for e in evs)
        else:
            dev_events.setdefault(addr, []).extend(evs)

    s.on_events = on_events
    devs = []
    for i, name in enumerate(("ann", "bob", "cat", "dan")):
        d = DeviceSession(ident(name), secret_of(name), A, Rng(50 + i).bytes, groups=[G1])
        addr = ("10.0.1.%d" % (i + 2), 5000)
        s.attach(d, addr)
        s.send(addr, d.start(s.now))
        devs.append((addr, d))
    s.run_for(8000)
    assert all(d.state == "registered" for _, d in devs), [d.state for _, d in devs]
    assert s.now < 6000  # the clock has wrapped
    ann_addr, ann = devs[0]
    req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_QUEUEING_SUPPORTED)
    s.send(ann_addr, ann.send_floor(s.now, req, G1))
    s.run_for(1000)
    # The sessions' event lists are drained too, as a driver drains them.
    assert ann.events == []
    granted = [e for e in dev_events[ann_addr] if e[0] == "floor" and e[2].kind == mcpt.FLOOR_GRANTED]
    assert granted, dev_events[ann_addr]
    # The relay's typed events, drained by the simulator as a driver drains them.
    kinds = [e[2][0] for e in seen]
    assert all(addr == A for addr, _t, _e in seen)
    assert sorted(e[2][1] for e in seen if e[2][0] == "registered") == [
        ident(n) for n in ("ann", "bob", "cat", "dan")
    ]
    assert ("floor_granted", G1, ident("ann")) in [e[2] for e in seen], kinds
    assert not relay.events()
    for i in range(100):
        pkt = rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, i, i * 160, 0), bytes(84))
        s.send(ann_addr, ann.send_voice(s.now, pkt))
        s.run_for(20)
    s.run_for(200)
    for _, d in devs[1:]:
        heard = d.counters["voice_rx"]
        assert 80 <= heard <= 100, (d.identity, heard)  # about 10 % lost over two hops
    c = relay.counters
    assert c["rx_datagrams"] == c["accepted"] + relay.dropped(), c
    assert s.counters["lost"] > 0
