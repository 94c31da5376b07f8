# Benchmarks of the firmware core, runnable unchanged under CPython and MicroPython.
#
# CPython imports this module; the MicroPython unix port runs it as a script
# (``micropython bench_core.py [quick]``) and it prints one JSON row per line. Keeping one source
# for both runtimes means the two columns of the bench table measure the same work.
import json
import sys
import time

if False:  # type checkers only: MicroPython has no typing module
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    from opmob.store import MemoryStore

IS_MICROPYTHON = sys.implementation.name == "micropython"

if IS_MICROPYTHON:

    def _now_us() -> int:
        return time.ticks_us()  # type: ignore[attr-defined]

    def _elapsed_us(t0: int) -> int:
        return time.ticks_diff(time.ticks_us(), t0)  # type: ignore[attr-defined]

else:

    def _now_us() -> int:
        return time.perf_counter_ns() // 1000

    def _elapsed_us(t0: int) -> int:
        return time.perf_counter_ns() // 1000 - t0


def one_group_store(names: "Iterable[str]", group: str) -> "MemoryStore":
    """A MemoryStore holding a registry of system "no": devices ``names`` (secrets 1, 2, ...), all
    allowed in the open group ``group``. Shared by the relay benchmarks of both runtimes."""
    from opmob.registry import Registry
    from opmob.store import MemoryStore

    doc = {
        "format": "opmob-registry",
        "version": 1,
        "system": "no",
        "devices": [
            {
                "identity": n + "@no",
                "secret": "%032x" % (i + 1),
                "groups": [group],
                "ceiling": 100,
                "status": "active",
                "vid": 0,
                "cseq": 0,
            }
            for i, n in enumerate(names)
        ],
        "groups": [{"identity": group, "policy": "open", "e2e": False, "key_ids": [], "receive_only": []}],
    }
    store = MemoryStore()
    Registry(store, "no").load_export(doc)
    return store


def per_call_us(fn: "Callable[[], object]", n: int, repeats: int = 5) -> float:
    """Best of ``repeats`` runs of ``n`` calls: the least disturbed by the shared machine."""
    best = -1.0
    for _ in range(repeats):
        t0 = _now_us()
        for _ in range(n):
            fn()
        dt = _elapsed_us(t0) / n
        if best < 0 or dt < best:
            best = dt
    return best


def _speech_frame() -> bytes:
    try:
        with open("/usr/share/codec2/raw/hts1a.raw", "rb") as f:
            f.read(3200)
            return f.read(320)
    except OSError:
        return bytes(320)


def run(quick: bool = False) -> "Iterator[tuple[str, float, str, float | None, str]]":
    """Yield rows (name, value, unit, goal, note)."""
    from opmob import dvi4, mcpt, rtp, srtp

    scale = 1 if quick else 10
    # First, before the other rows import the rest of the core: the accessory's heap is measured
    # from a clean start.
    yield from _accessory_rows(scale)
    yield from sim_rows(scale)
    key, salt = bytes(range(16)), bytes(range(16, 30))
    tx = srtp.SrtpSession(key, salt)
    rx = srtp.SrtpSession(key, salt)
    pcm = _speech_frame()
    enc = dvi4.Dvi4Encoder()
    dec = dvi4.Dvi4Decoder()
    payload_buf = bytearray(dvi4.payload_len(dvi4.FRAME_SAMPLES))
    pcm_buf = bytearray(2 * dvi4.FRAME_SAMPLES)
    payload = bytes(enc.encode(pcm, payload_buf))

    seq = [0]

    def protect() -> bytes:
        seq[0] += 1
        h = rtp.RtpHeader(rtp.PT_DVI4_8K, seq[0] & 0xFFFF, seq[0] * 160, 0x1234ABCD)
        return tx.protect(rtp.encode(h, payload))

    n = 100 * scale
    us = per_call_us(protect, n)
    yield ("rtp_srtp.protect_us", us, "us", None, "RTP header encode + SRTP protect, 80-byte DVI4 payload")

    packets = [protect() for _ in range(n * 5)]
    it = [0]

    def unprotect() -> None:
        i = it[0]
        it[0] = i + 1
        rtp.decode(rx.unprotect(packets[i]))

    us = per_call_us(unprotect, n)
    yield ("rtp_srtp.unprotect_us", us, "us", None, "SRTP unprotect (tag, replay, ROC) + RTP decode")

    yield (
        "dvi4.encode_frame_us",
        per_call_us(lambda: enc.encode(pcm, payload_buf), 20 * scale),
        "us",
        None,
        "160 samples (20 ms) into a caller buffer",
    )
    yield (
        "dvi4.decode_frame_us",
        per_call_us(lambda: dec.decode(payload, pcm_buf), 20 * scale),
        "us",
        None,
        "80+4 bytes into a caller buffer",
    )

    granted = mcpt.FloorMsg(
        mcpt.FLOOR_GRANTED,
        0x11223344,
        ack_req=True,
        duration=30,
        user_id="alice@no",
        ssrc_field=0x55667788,
        queue_size=0,
        indicator=mcpt.IND_NORMAL,
    )
    wire = mcpt.encode(granted)
    yield (
        "mcpt.encode_us",
        per_call_us(lambda: mcpt.encode(granted), 50 * scale),
        "us",
        None,
        "Floor Granted, 5 fields",
    )
    yield (
        "mcpt.decode_us",
        per_call_us(lambda: mcpt.decode(wire), 50 * scale),
        "us",
        None,
        "Floor Granted, 5 fields",
    )

    from opmob import authvec, sig

    keys = authvec.derive(bytes(16), bytes(16), bytes(16))
    dev_tx = sig.keys(keys, False)[0]
    net_rx = sig.keys(keys, True)[1]
    ka = sig.SigMsg(sig.KEEPALIVE, txid=7, session=0x01020304)
    ka_wire = sig.encode(ka, dev_tx)
    yield (
        "sig.encode_protected_us",
        per_call_us(lambda: sig.encode(ka, dev_tx), 50 * scale),
        "us",
        None,
        "KEEPALIVE with HMAC-SHA256-128 tag and AES-CTR",
    )
    yield (
        "sig.decode_protected_us",
        per_call_us(lambda: sig.decode(ka_wire, net_rx), 50 * scale),
        "us",
        None,
        "KEEPALIVE, tag checked",
    )

    from opmob.floor_server import FloorServer

    srv = FloorServer("bench@no")
    for pid in range(10):
        srv.join(0, pid, "user%d@no" % pid, 0x1000 + pid)
    req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, 0x1001, priority=5)
    rel = mcpt.FloorMsg(mcpt.FLOOR_RELEASE, 0x1001)
    clock = [1000]  # int ms, the cores' clock

    def floor_cycle() -> None:
        clock[0] += 1
        srv.on_message(clock[0], 1, req)
        srv.on_message(clock[0], 1, rel)

    yield (
        "floor.request_release_cycle_us",
        per_call_us(floor_cycle, 20 * scale),
        "us",
        None,
        "server side: Request -> Granted + 9 Taken, Release -> 10 Idle (messages built, not encoded)",
    )


# --- the simulator: a mixed load ------------------------------------------------------------------


def _load_store(relay: int, groups: int, members: int) -> "MemoryStore":
    """Relay ``relay``'s registry: ``groups`` open groups of ``members`` devices each."""
    from opmob.registry import Registry
    from opmob.store import MemoryStore

    devices = []
    for g in range(groups):
        for m in range(members):
            devices.append(
                {
                    "identity": "d%d-%d-%d@no" % (relay, g, m),
                    "secret": "%032x" % (relay * 100003 + g * 1009 + m + 1),
                    "groups": ["g%d-%d@no" % (relay, g)],
                    "ceiling": 100,
                    "status": "active",
                    "vid": 0,
                    "cseq": 0,
                }
            )
    doc = {
        "format": "opmob-registry",
        "version": 1,
        "system": "no",
        "devices": devices,
        "groups": [
            {
                "identity": "g%d-%d@no" % (relay, g),
                "policy": "open",
                "e2e": False,
                "key_ids": [],
                "receive_only": [],
            }
            for g in range(groups)
        ],
    }
    store = MemoryStore()
    Registry(store, "no").load_export(doc)
    return store


class SimLoad:
    """A few relays and many DeviceSessions in one ``opmob.sim.Sim``, 60 days into the clock: every
    device registers (half name their group in REGISTER, half AFFILIATE afterwards), then in every
    group one member after another takes the floor, talks 1 s (50 voice packets) and releases.
    Paths have a 2..5 ms delay. The ``sim.events_per_s`` row runs it and refuses a figure when the
    load did not happen (registrations, grants, voice heard: checked after the run)."""

    def __init__(self, relays: int = 3, groups: int = 10, members: int = 10, seed: int = 1) -> None:
        from opmob import ticks
        from opmob.device import DeviceSession
        from opmob.registry import Registry
        from opmob.relay import Relay
        from opmob.relay_config import RelayConfig
        from opmob.sim import Sim

        self.sim = sim = Sim(seed, start=60 * ticks.DAY_MS)
        sim.set_default(delay=2, jitter=3)
        self.groups: "list[tuple[object, str, list[tuple[object, Any]]]]" = []
        self.devs: "list[Any]" = []
        self.relay_addrs: "list[object]" = []
        self.bursts = 0
        self.voice_sent = 0
        for r in range(relays):
            addr = ("10.0.%d.1" % r, 7700)
            self.relay_addrs.append(addr)
            store = _load_store(r, groups, members)
            cfg = RelayConfig.from_dict(
                {
                    "relay": {"identity": "relay-%d@no" % r},
                    "registry": {"path": "unused"},
                    "limits": {"max_devices": groups * members + 10},
                }
            )
            sim.attach(Relay(cfg, Registry(store, "no"), store, Rand(seed + 7 * r), sim.now), addr)
            for g in range(groups):
                group = "g%d-%d@no" % (r, g)
                people: "list[tuple[object, Any]]" = []
                for m in range(members):
                    n = len(self.devs)
                    d = DeviceSession(
                        "d%d-%d-%d@no" % (r, g, m),
                        (r * 100003 + g * 1009 + m + 1).to_bytes(16, "big"),
                        addr,
                        Rand(1000 + n),
                        groups=[group] if m % 2 == 0 else [],
                    )
                    a = ("10.%d.%d.%d" % (1 + r, g, m + 2), 5000)
                    sim.attach(d, a)
                    people.append((a, d))
                    self.devs.append(d)
                    sim.at(n % 997, self._starter(a, d))
                    if m % 2:
                        sim.at(3000 + n % 997, self._affiliator(a, d, group))
                self.groups.append((addr, group, people))
        # Every core's events are drained after each call, as a driver drains them; the relays'
        # typed events are counted (a monitor's view), the sessions' dropped.
        self.relay_events: "dict[str, int]" = {}
        sim.on_events = self._count

    def _count(self, addr: object, t: int, evs: "Any") -> None:
        if addr not in self.relay_addrs:
            return
        c = self.relay_events
        for e in evs:
            c[e[0]] = c.get(e[0], 0) + 1

    def _starter(self, a: object, d: "Any") -> "Callable[[], None]":
        sim = self.sim
        return lambda: sim.send(a, d.start(sim.now))

    def _affiliator(self, a: object, d: "Any", group: str) -> "Callable[[], None]":
        sim = self.sim
        return lambda: sim.send(a, d.affiliate(sim.now, [group]))

    def talk(self, until_ms: int) -> None:
        """Bursts in every group, one after another, from 5 s until ``until_ms`` (virtual)."""
        for k, g in enumerate(self.groups):
            self.sim.at(5000 + 37 * k, self._burst(g, 0, until_ms))

    def _burst(
        self, g: "tuple[object, str, list[tuple[object, Any]]]", turn: int, until_ms: int
    ) -> "Callable[[], None]":
        from opmob import mcpt, rtp

        sim = self.sim
        _relay, group, people = g
        a, d = people[turn % len(people)]
        state = [0]
        payload = bytes(range(84))

        def step() -> None:
            i = state[0]
            state[0] = i + 1
            if i == 0:
                self.bursts += 1
                req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_QUEUEING_SUPPORTED)
                sim.send(a, d.send_floor(sim.now, req, group))
                sim.after(100, step)
            elif i <= 50:
                seq = (turn * 64 + i) & 0xFFFF
                pkt = rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, seq, seq * 160, 0), payload)
                sim.send(a, d.send_voice(sim.now, pkt))
                self.voice_sent += 1
                sim.after(20, step)
            else:
                sim.send(a, d.send_floor(sim.now, mcpt.FloorMsg(mcpt.FLOOR_RELEASE), group))
                if sim.t + 300 < until_ms:
                    sim.after(300, self._burst(g, turn + 1, until_ms))

        return step

    def registered(self) -> int:
        return sum(1 for d in self.devs if d.state == "registered")

    def voice_heard(self) -> int:
        return sum(d.counters["voice_rx"] for d in self.devs)


class _Chatter:
    """A node that does nothing but keep a periodic timer and send one datagram per tick: what
    the simulator itself costs per event, without the cores."""

    def __init__(self, now: int, period: int, peers: "list[object]", k: int) -> None:
        from opmob.ticks import tadd

        self.tadd = tadd
        self.period = period
        self.deadline = tadd(now, period)
        self.peers = peers
        self.k = k

    def on_datagram(self, now: int, src: object, data: bytes) -> "list[tuple[object, bytes]]":
        return []

    def poll(self, now: int) -> "list[tuple[object, bytes]]":
        self.deadline = self.tadd(self.deadline, self.period)
        self.k = (self.k * 1103515245 + 12345) & 0x7FFFFFFF
        return [(self.peers[self.k % len(self.peers)], b"x")]

    def next_deadline(self) -> int:
        return self.deadline


def _run_sim(sim: "Any", until_ms: int) -> None:
    """``sim.run_until(until_ms)``; on MicroPython with a collection each virtual second, timed
    with the rest. Left to itself the unix port's collector runs only once the heap is full, and
    until then each allocation of more than one block scans past all the garbage made since the
    last collection (the run slows tenfold), and the heap ends so fragmented that the event heap's
    list cannot grow in one piece (a MemoryError at the bench's 16 MB)."""
    if IS_MICROPYTHON:
        import gc

        for t in range(sim.t + 1000, until_ms + 1, 1000):
            sim.run_until(t)
            gc.collect()
    sim.run_until(until_ms)


def sim_rows(scale: int) -> "Iterator[tuple[str, float, str, float | None, str]]":
    # The same load on both runtimes (the ratio row compares them): MicroPython's pure-Python
    # SRTP and HMAC make it some 20x slower, so the load is sized for a minute there.
    relays, groups, members = (3, 5, 8) if scale > 1 else (2, 2, 6)
    virtual_ms = 12000 if scale > 1 else 7000
    load = SimLoad(relays, groups, members)
    load.talk(virtual_ms)
    sim = load.sim
    t0 = _now_us()
    _run_sim(sim, virtual_ms)
    el = _elapsed_us(t0)
    # Every packet reaches the other members of its group, or the load is not what it claims.
    ev = load.relay_events
    if (
        load.registered() != len(load.devs)
        or ev.get("registered", 0) < len(load.devs)
        or ev.get("floor_granted", 0) < load.bursts
        or load.voice_heard() < load.voice_sent * (members - 1) * 0.95
    ):
        raise RuntimeError(
            "sim load: %d of %d registered, %d voice packets heard for %d sent, relay events %r"
            % (load.registered(), len(load.devs), load.voice_heard(), load.voice_sent, ev)
        )
    events = sim.counters["events"]
    row = (
        "sim.events_per_s",
        events * 1e6 / el,
        "ev/s",
        None,
        "opmob.sim throughput (events: datagrams delivered, deadlines, script steps) on a mixed load: "
        "%d relays, %d DeviceSessions registering, affiliating, %d talk bursts, %d voice packets; "
        "%d events in %.0f s virtual, %.2f s wall"
        % (relays, len(load.devs), load.bursts, load.voice_sent, events, virtual_ms / 1000, el / 1e6),
    )
    del load, sim  # let it go before the next run (on MicroPython each collection marks it)
    yield row
    # The harness alone: nodes that only keep a timer and send one datagram per tick.
    from opmob.sim import Sim

    n_nodes = 200
    bare_ms = 2000 * scale
    bare = Sim(2, start=60 * 86400000)
    bare.set_default(delay=1, jitter=4)
    addrs: "list[object]" = [("10.9.%d.%d" % (i // 250, i % 250 + 1), 9) for i in range(n_nodes)]
    for i, a in enumerate(addrs):
        bare.attach(_Chatter(bare.now, 20 + (i * 37) % 181, addrs, i + 1), a)
    t0 = _now_us()
    _run_sim(bare, bare_ms)
    el = _elapsed_us(t0)
    bc = bare.counters
    yield (
        "sim.bare_events_per_s",
        bc["events"] * 1e6 / el,
        "ev/s",
        None,
        "opmob.sim alone: %d nodes with a 20..200 ms timer, one datagram a tick over 1..5 ms paths; "
        "%d events (%d wakes, %d deliveries) in %d s virtual"
        % (n_nodes, bc["events"], bc["wakes"], bc["delivered"], bare_ms // 1000),
    )


# --- the accessory: a simulated call -------------------------------------------------------------


class Rand:
    """Deterministic bytes (xorshift32) for relays and devices built in memory by the benchmarks
    and ``link_chain``: two built alike (same seeds) have the same keys."""

    def __init__(self, seed: int) -> None:
        self.s = seed or 1

    def __call__(self, n: int) -> bytes:
        out = bytearray(n)
        s = self.s
        for i in range(n):
            s ^= (s << 13) & 0xFFFFFFFF
            s ^= s >> 17
            s ^= (s << 5) & 0xFFFFFFFF
            out[i] = s & 0xFF
        self.s = s
        return bytes(out)


class _Call:
    """One relay and two accessories (DeviceSession + PTT client + audio paths) in an
    ``opmob.sim.Sim``, as the accessory app wires them; "ann" is the accessory measured, "bob" the
    other party."""

    RELAY = ("10.0.0.1", 7700)
    GROUP = "bench@no"

    def __init__(self) -> None:
        from opmob.device import DeviceSession
        from opmob.registry import Registry
        from opmob.relay import Relay
        from opmob.relay_config import RelayConfig
        from opmob.sim import Sim

        names = ("ann", "bob")
        store = one_group_store(names, self.GROUP)
        cfg = RelayConfig.from_dict({"relay": {"identity": "relay-1@no"}, "registry": {"path": "unused"}})
        self.sim = Sim()  # instant delivery in send order; the clock starts at 0 (no wrap near)
        self.relay = Relay(cfg, Registry(store, "no"), store, Rand(7), self.now)
        self.sim.attach(self.relay, self.RELAY)
        self.addr = {}
        self.devs = {}
        self.hold: "list[bytes] | None" = None  # when a list: datagrams to ann are kept, not delivered
        self.sim.drop_if = self._held
        for i, n in enumerate(names):
            a = ("10.0.1.%d" % (i + 2), 5000)
            d = DeviceSession(
                n + "@no", bytes(15) + bytes((i + 1,)), self.RELAY, Rand(100 + i), groups=[self.GROUP]
            )
            self.addr[n] = a
            self.devs[n] = d
            self.sim.attach(d, a)
            self.send(a, d.start(self.now))
        self.pump()
        self.step(100)
        for d in self.devs.values():
            assert d.state == "registered", d.state

    @property
    def now(self) -> int:
        now: int = self.sim.now
        return now

    def _held(self, src: object, dst: object, data: bytes) -> bool:
        if self.hold is not None and dst == self.addr["ann"]:
            self.hold.append(data)
            return True
        return False

    def send(self, src: object, outs: "list[tuple[object, bytes]]") -> None:
        self.sim.send(src, outs)

    def pump(self) -> None:
        self.sim.settle()

    def step(self, dt: int) -> None:
        self.sim.run_for(dt)

    def floor(self, name: str, msgs: "list[object]") -> None:
        d = self.devs[name]
        for m in msgs:
            self.send(self.addr[name], d.send_floor(self.now, m, self.GROUP))
        self.pump()


def _accessory_rows(scale: int) -> "Iterator[tuple[str, float, str, float | None, str]]":
    import gc

    gc.collect()
    before_import = gc.mem_alloc() if IS_MICROPYTHON else 0  # type: ignore[attr-defined]
    from opmob import device, mcpt, rtp, srtp  # noqa: F401 - what an accessory imports
    from opmob.accessory import audio, jitter, ptt, tones  # noqa: F401

    gc.collect()
    code_kb = ((gc.mem_alloc() if IS_MICROPYTHON else 0) - before_import) / 1024  # type: ignore[attr-defined]

    call = _Call()
    pcm = _speech_frame()
    ann = call.devs["ann"]
    bob = call.devs["bob"]
    out = bytearray(320)

    # ann's accessory: its PTT client and audio paths, wired as the app does (voice_sink in,
    # send_voice_into out; the bytes copy below stands for the socket)
    ann_ptt = ptt.PttClient(group=call.GROUP, identity="ann@no")
    ann_ptt.start(call.now)
    cap = audio.CapturePath(0, 0x1234, 0x56789ABC)
    pb = audio.PlaybackPath()
    clock = [0]  # ms, for the voice sink

    def sink(now: int, buf: bytearray, n: int) -> None:
        ann_ptt.on_media(now)
        pb.on_voice(clock[0], buf, n)

    ann.voice_sink = sink

    def ann_events(now_ms: int) -> None:
        clock[0] = now_ms
        ev = ann.events
        while ev:
            e = ev.pop(0)
            if e[0] == "floor":
                call.floor("ann", ann_ptt.on_floor(call.now, e[2]))
        ann_ptt.effects.clear()

    def ann_sends() -> None:
        k = ann.send_voice_into(call.now, cap.buf, audio.PACKET_LEN)
        call.send(call.addr["ann"], [(call.RELAY, bytes(cap.buf[:k]))])

    # ann talks for 2 s (capture, SRTP, relay, bob hears), then bob talks for 3 s (ann plays)
    call.floor("ann", ann_ptt.press(call.now))
    ann_events(0)
    assert ann_ptt.transmit
    t_ms = 0
    cap.start_burst(t_ms)
    for _ in range(100):
        cap.frame(pcm)
        ann_sends()
        call.pump()
        pb.next_frame(t_ms, out)
        bob.events.clear()
        call.step(20)
        t_ms += 20
        ann_events(t_ms)
    call.floor("ann", ann_ptt.release(call.now))
    ann_events(t_ms)
    call.step(100)
    t_ms += 100
    ann_events(t_ms)
    bob_cap = audio.CapturePath(0, 7, 0)
    req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_NORMAL)
    call.floor("bob", [req])
    bob.events.clear()
    bob_cap.start_burst(0)
    halfway = 0
    for k in range(150):
        ann_events(t_ms)
        call.send(call.addr["bob"], bob.send_voice(call.now, bob_cap.frame(pcm)))
        call.pump()
        ann_events(t_ms)
        pb.next_frame(t_ms, out)
        call.step(20)
        t_ms += 20
        if k == 74:
            gc.collect()
            halfway = gc.mem_alloc() if IS_MICROPYTHON else 0  # type: ignore[attr-defined]
    assert pb.jitter.counters["played"] > 100, pb.jitter.counters
    # steady state in the middle of bob's talk: what ann's accessory holds, found by letting it go
    gc.collect()
    full = gc.mem_alloc() if IS_MICROPYTHON else 0  # type: ignore[attr-defined]
    growth = full - halfway
    del ann_ptt, cap, pb, ann, sink
    call.devs["ann"] = None
    call.sim.detach(call.addr["ann"])
    gc.collect()
    data_kb = (full - (gc.mem_alloc() if IS_MICROPYTHON else 0)) / 1024  # type: ignore[attr-defined]
    if IS_MICROPYTHON:
        yield (
            "accessory.heap_kb",
            data_kb,
            "KB",
            64,
            "gc.mem_alloc() held by one accessory in a call (DeviceSession with SRTP, PTT client, capture and "
            "playback paths, jitter buffer, tones), found by freeing it; module code counted apart; "
            "whole heap grew %d bytes from 1.5 s to 3 s of listening" % growth,
        )
        yield (
            "accessory.code_heap_kb",
            code_kb,
            "KB",
            None,
            "module code an accessory imports (device, srtp, sig, ... accessory.*), on the heap when loaded from "
            ".py/.mpy; in flash when frozen into the ESP32 image",
        )

    # --- per-frame timings, on a fresh call: ann captures and sends; ann receives and plays
    call = _Call()
    ann = call.devs["ann"]
    bob = call.devs["bob"]
    ann_ptt = ptt.PttClient(group=call.GROUP, identity="ann@no")
    ann_ptt.start(call.now)
    cap = audio.CapturePath(0, 0, 0)
    cap.start_burst(0)
    n = 50 * scale
    call.floor("ann", ann_ptt.press(call.now))
    ann_events_now = ann.events
    while ann_events_now:
        e = ann_events_now.pop(0)
        if e[0] == "floor":
            ann_ptt.on_floor(call.now, e[2])
    assert ann_ptt.transmit

    buf = cap.buf

    def capture() -> None:
        cap.frame(pcm)
        ann.send_voice_into(None, buf, audio.PACKET_LEN)

    yield (
        "accessory.capture_frame_us",
        per_call_us(capture, n),
        "us",
        250,
        "one 20 ms frame: DVI4 encode + RTP header (CapturePath) + DeviceSession.send_voice_into (SSRC, SRTP protect in place)",
    )
    if IS_MICROPYTHON:
        yield (
            "accessory.capture_alloc_bytes",
            _alloc_per_call(capture, n),
            "B",
            None,
            "heap allocated per captured frame (gc off, mean of %d): one HMAC-SHA1's hashlib objects, nothing else"
            % n,
        )

    # bob talks; the relay's SRTP packets for ann are kept to be fed one per call
    call.floor("ann", [mcpt.FloorMsg(mcpt.FLOOR_RELEASE)])
    call.floor("bob", [mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_NORMAL)])
    ann.events.clear()
    call.hold = []
    bob_cap = audio.CapturePath(0, 0, 0)
    bob_cap.start_burst(0)
    reps = 5 + (2 if IS_MICROPYTHON else 0)  # best of 5 timings, then the allocation count
    for _ in range(reps * n + 10):
        call.send(call.addr["bob"], bob.send_voice(call.now, bob_cap.frame(pcm)))
        call.pump()
    held = call.hold
    call.hold = None
    assert len(held) >= reps * n, len(held)
    pb = audio.PlaybackPath()
    relay_addr = call.RELAY
    state = [0, 0]  # next packet, time in ms

    def sink2(now: int, buf: bytearray, k: int) -> None:
        pb.on_voice(state[1], buf, k)

    ann.voice_sink = sink2
    now = call.now

    def playback() -> None:
        i = state[0]
        state[0] = i + 1
        ann.on_datagram(now, relay_addr, held[i])
        pb.next_frame(state[1], out)
        state[1] += 20

    yield (
        "accessory.playback_frame_us",
        per_call_us(playback, n),
        "us",
        250,
        "one 20 ms frame: DeviceSession.on_datagram (SRTP unprotect in place, voice_sink) + RTP check + jitter buffer + DVI4 decode + tone mix",
    )
    if IS_MICROPYTHON:
        yield (
            "accessory.playback_alloc_bytes",
            _alloc_per_call(playback, n),
            "B",
            None,
            "heap allocated per played frame (gc off, mean of %d): one HMAC-SHA1's hashlib objects, nothing else; "
            "the socket's receive (in the driver) is not part of it" % n,
        )
        left = held[state[0] :]
        k = min(n, len(left) - 10)
        yield (
            "accessory.receive_alloc_bytes",
            _receive_alloc_per_packet(ann, left[: k + 10], k),
            "B",
            None,
            "heap allocated per voice packet received (gc off, mean of %d, one datagram per wake-up): "
            "relay_uasyncio.Driver (asyncio's wake-up, recvfrom, the time of arrival) + DeviceSession "
            "(SRTP unprotect: one HMAC-SHA1) + voice_sink + PlaybackPath.on_voice, over a loopback socket"
            % k,
        )
    assert pb.jitter.counters["played"] >= 5 * n - 10, pb.jitter.counters


class _SessionCore:
    """A DeviceSession as relay_uasyncio.Driver's core (what the accessory's app core adds, the
    PTT clients, allocates nothing more per packet: tests/fw/test_accessory_app.py)."""

    def __init__(self, dev: "Any") -> None:
        self.dev = dev

    def on_datagram(self, now: int, addr: "Any", data: bytes) -> "Any":
        return self.dev.on_datagram(now, addr, data)

    def poll(self, now: int) -> "Any":
        return self.dev.poll(now)

    def next_deadline(self) -> "int | None":
        return self.dev.next_deadline()


def _receive_alloc_per_packet(dev: "Any", packets: "list[bytes]", n: int) -> float:
    """Bytes allocated per packet as ``dev`` hears the last ``n`` of ``packets`` through the
    driver on loopback sockets, the collector off (MicroPython only)."""
    import asyncio
    import gc

    from opmob import compat
    from opmob.relay_uasyncio import Driver, open_udp

    relay = relay_addr = None
    for port in range(47100, 47200):  # the unix port has no getsockname: a free port, tried
        try:
            relay = open_udp("127.0.0.1", port)
            relay_addr = ("127.0.0.1", port)
            break
        except OSError:
            pass
    assert relay is not None, "no free UDP port on 127.0.0.1"
    sock = open_udp("127.0.0.1", 0)
    res = [0]
    try:
        dev.relay_addr = relay_addr
        drv = Driver(_SessionCore(dev), sock)
        c = drv.counters
        sock.sendto(b"hello", compat.addr_for_send(relay_addr))
        _hello, raw = relay.recvfrom(64)
        warm = len(packets) - n

        async def main() -> None:
            task = asyncio.create_task(drv._rx())
            before = 0
            for k in range(len(packets)):
                if k == warm:
                    gc.collect()
                    gc.disable()
                    before = gc.mem_alloc()  # type: ignore[attr-defined]
                # The next one once the driver has taken the last: one datagram per wake-up.
                want = c["datagrams_in"] + 1
                relay.sendto(packets[k], raw)
                while c["datagrams_in"] < want:
                    await asyncio.sleep_ms(1)  # type: ignore[attr-defined]
            res[0] = gc.mem_alloc() - before  # type: ignore[attr-defined]
            gc.enable()
            task.cancel()
            await asyncio.sleep_ms(0)  # type: ignore[attr-defined]

        asyncio.run(main())
    finally:
        sock.close()
        relay.close()
    assert dev.counters["voice_rx"] > 0
    return float(res[0]) / n


def _alloc_per_call(fn: "Callable[[], object]", n: int) -> float:
    import gc

    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()  # type: ignore[attr-defined]
        for _ in range(n):
            fn()
        return float(gc.mem_alloc() - before) / n  # type: ignore[attr-defined]
    finally:
        gc.enable()


def main() -> None:
    quick = len(sys.argv) > 1 and sys.argv[1] == "quick"
    for name, value, unit, goal, note in run(quick):
        print(json.dumps({"name": name, "value": value, "unit": unit, "goal": goal, "note": note}))


if IS_MICROPYTHON and __name__ == "__main__":
    main()
