"""The relay core on the C extension's SRTP sessions (``Relay(srtp=opmob_c.SrtpSession)``).

Every in-memory relay scenario of tests/fw/test_relay.py runs again with the C session injected
(and with the fan-out through the extension's batch call), each datagram on the wire recorded; the
scenario must pass and every datagram must be the one the pure twin's relay sent, byte for byte,
given the same seeded inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import opmob_c
import pytest
import relaynet
import test_relay
from opmob.errors import WireError
from opmob.relay import Relay
from opmob.srtp import SrtpSession as PureSession
from opmob_host import accel
from opmob_host.relay_cmd import BATCH_FROM, fanout_for

SCENARIOS = sorted(
    name
    for name, fn in vars(test_relay).items()
    if name.startswith("test_") and inspect.isfunction(fn) and not inspect.signature(fn).parameters
)
C = accel.select("c")

# name -> Relay keyword arguments
BACKENDS: dict[str, dict[str, Any]] = {
    "c": {"srtp": opmob_c.SrtpSession},
    "c_batch": {"srtp": opmob_c.SrtpSession, "fanout": C.protect_batch},
    "c_run": {"srtp": opmob_c.SrtpSession, "fanout": fanout_for(C)},  # as `opmob relay run`
}


def _wire(monkeypatch: pytest.MonkeyPatch, fn: Callable[[], None], **relay_kw: Any) -> list[tuple[Any, ...]]:
    """Run scenario ``fn`` with ``Relay(**relay_kw)``; every datagram any World sent, in order."""
    wire: list[tuple[Any, ...]] = []
    init = relaynet.World.__init__
    made: list[Relay] = []

    def recording_init(self: relaynet.World, *a: Any, **kw: Any) -> None:
        # Every datagram put on the World's network (opmob.sim), by the test or by a core.
        init(self, *a, **kw)
        self.sim.taps.append(
            lambda ev, t, src, dst, data: ev == "sent" and wire.append((src, dst, bytes(data)))
        )

    def relay(*a: Any, **kw: Any) -> Relay:
        r = Relay(*a, **dict(kw, **relay_kw))
        made.append(r)
        return r

    with monkeypatch.context() as m:
        m.setattr(relaynet.World, "__init__", recording_init)
        m.setattr(relaynet, "Relay", relay)
        fn()
    srtp = relay_kw.get("srtp", PureSession)
    for r in made:
        for s in r._by_identity.values():
            assert s.srtp_rx is None or type(s.srtp_rx) is srtp
    return wire


@pytest.fixture(scope="module")
def pure_wire() -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    yield {}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_sends_the_same_datagrams_on_the_c_sessions(
    monkeypatch: pytest.MonkeyPatch,
    pure_wire: dict[str, list[tuple[Any, ...]]],
    scenario: str,
    backend: str,
) -> None:
    fn = getattr(test_relay, scenario)
    if scenario not in pure_wire:
        pure_wire[scenario] = _wire(monkeypatch, fn)
    want = pure_wire[scenario]
    assert want, scenario
    got = _wire(monkeypatch, fn, **BACKENDS[backend])
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, (scenario, i)


def test_the_scenarios_carry_voice() -> None:
    assert len(SCENARIOS) >= 40
    assert any("voice" in s for s in SCENARIOS)


def test_fan_out_past_the_batch_threshold_matches_the_pure_loop() -> None:
    """A group larger than BATCH_FROM: the `relay run` fan-out takes the batch call; same bytes,
    same counters as the pure relay, and a protect failure counted as the pure loop counts it."""
    from fwtest import Rng
    from opmob.registry import Registry
    from opmob.store import MemoryStore

    people = {f"t{i:02d}": (100, [relaynet.G2]) for i in range(BATCH_FROM + 4)}
    saved = dict(relaynet.PEOPLE)
    relaynet.PEOPLE.update(people)
    try:
        results = []
        for kw in ({}, BACKENDS["c_run"], BACKENDS["c_batch"]):
            store = MemoryStore()
            Registry(store, "no").load_export(relaynet.export_doc(people))
            w = relaynet.World(seed=9, store=store)
            w.relay = Relay(w.cfg, w.registry, store, Rng(9).bytes, w.now, **kw)
            wire: list[tuple[Any, Any, bytes]] = []
            w.tap = lambda s, d, b, wire=wire: wire.append((s, d, bytes(b)))
            for n in sorted(people):
                w.device(n, groups=[relaynet.G2])
            w.run(1000)
            w.request("t00", relaynet.G2)
            w.talk("t00", 5)
            heard = {n: w.heard(n) for n in sorted(people)}
            results.append((wire, heard, dict(w.relay.counters)))
        assert results[0] == results[1] == results[2]
        wire, heard, c = results[0]
        assert c["voice_in"] == 5 and c["voice_out"] == 5 * (len(people) - 1)
        assert all(len(heard[n]) == 5 for n in sorted(people) if n != "t00")
    finally:
        relaynet.PEOPLE.clear()
        relaynet.PEOPLE.update(saved)


def test_fanout_for_reports_errors_as_values_like_the_batch() -> None:
    f = fanout_for(C)
    assert f is not None and fanout_for(accel.select("pure")) is None
    good = bytes([0x80, 5, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9]) + bytes(84)
    want = PureSession(bytes(16), bytes(14)).protect(good)
    bad = b"\x80"  # too short to protect
    for n in (2, BATCH_FROM + 1):
        ss = [opmob_c.SrtpSession(bytes(16), bytes(14)) for _ in range(n)]
        pk = [good] * (n - 1) + [bad]
        loop = f(ss, pk)
        batch = C.protect_batch([opmob_c.SrtpSession(bytes(16), bytes(14)) for _ in range(n)], pk)
        assert [type(r) for r in loop] == [type(r) for r in batch]
        assert isinstance(loop[-1], WireError) and loop[:-1] == batch[:-1]
        assert loop[0] == want


def test_bench_rows_measure_both_backends_on_the_same_bytes() -> None:
    from opmob_host import bench_cext

    rows = {r[0]: r for r in bench_cext.relay_rows(quick=True)}  # raises if the bytes differ
    assert set(rows) == {
        "relay.cpu_per_packet_us.c_ext",
        "relay.cpu_per_packet_us.pure",
        "relay.cpu_per_packet_us.c_ext_batch",
    }
    assert all(r[1] > 0 and r[2] == "us" for r in rows.values())
