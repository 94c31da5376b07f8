"""The relay load generator behind the ``relay.*`` bench rows (host_tools/opmob_host/relay_load.py)
and the voice-latency histogram the relay's CPython driver keeps (latency.py, relay_server.py).

Functional checks only: the layout is what the bench's notes say, a small load runs end to end
against a real relay process, every forwarded copy is recorded once and delivered, and everything
is cleaned up. How fast is measured by ``make bench``, never asserted here.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

from opmob import rtp
from opmob.registry import Registry
from opmob.store import MemoryStore
from opmob_host.latency import LatencyHistogram, bucket_bounds, bucket_of
from opmob_host.relay_load import (
    LoadConfig,
    LoadGen,
    device_id,
    group_id,
    groups_of,
    percentile,
    registry_export,
    run_load,
    talker_of,
)
from opmob_host.udp_driver import UdpDriver

# --- the layout ---------------------------------------------------------------------------------------


def test_default_layout_is_200_devices_20_groups_of_1_talker_and_10_listeners() -> None:
    cfg = LoadConfig()
    assert cfg.devices == 200
    members: dict[str, list[int]] = {}
    for i in range(cfg.devices):
        gs = groups_of(cfg, i)
        assert 1 <= len(gs) <= 2
        for g in gs:
            members.setdefault(g, []).append(i)
    assert sorted(members) == [group_id(g) for g in range(20)]
    talkers = set()
    for g in range(cfg.groups):
        t = talker_of(cfg, g)
        talkers.add(t)
        m = members[group_id(g)]
        assert len(m) == 11 and t in m
        assert sorted(x for x in m if x != t) == list(range(10 * g, 10 * g + 10))  # its 10 listeners
        assert len(groups_of(cfg, t)) == 2  # the talker listens in its own block's group
    assert len(talkers) == 20
    # The export loads, and the registry lets each device into exactly its groups.
    store = MemoryStore()
    reg = Registry(store, "no")
    reg.load_export(registry_export(cfg, [bytes(16)] * cfg.devices))
    assert len(list(reg.devices())) == 200
    for i in (0, 1, 10, 199):
        for g in range(cfg.groups):
            assert reg.may_affiliate(device_id(i), group_id(g)) == (group_id(g) in groups_of(cfg, i))


def test_percentile_is_nearest_rank() -> None:
    xs = [float(x) for x in range(1, 101)]
    random.Random(1).shuffle(xs)
    assert percentile(xs, 50) == 50.0 and percentile(xs, 95) == 95.0 and percentile(xs, 100) == 100.0
    assert percentile([7.0], 95) == 7.0


# --- a small load against a real relay process ------------------------------------------------------------


def test_small_load_end_to_end() -> None:
    cfg = LoadConfig(groups=3, listeners=3, duration_s=1.5, burst_packets=10, gap_s=(0.05, 0.1))
    gen = LoadGen(cfg)
    res = run_load(cfg, limit_s=120, gen=gen)
    assert res.floor_access_ms and res.grant_timeouts == 0
    assert res.voice_sent >= 3 * 10
    # The relay forwarded each voice packet to each of the group's listeners, and its driver
    # recorded every copy once, inside the window.
    assert res.relay_added.count == res.voice_sent * cfg.listeners, (res.relay_added.count, res.voice_sent)
    assert res.voice_expected == res.voice_sent * cfg.listeners
    assert res.voice_received == res.voice_expected  # nothing lost on loopback at this load
    assert len(res.e2e_ms) == res.voice_received and min(res.e2e_ms) > 0
    c = res.relay_counters
    assert c["registrations"] == cfg.devices
    assert c["voice_in"] == res.voice_sent and c["voice_out"] == res.voice_sent * cfg.listeners
    assert c["rx_datagrams"] == c["accepted"] + sum(v for k, v in c.items() if k.startswith("drop_"))
    assert not any(k.startswith("drop_") for k in c), c  # the load itself is all legitimate
    s = res.summary()
    assert s["devices"] == 9 and s["floor_requests"] == len(res.floor_access_ms)
    # Cleaned up: the relay process has ended and its directory is gone.
    assert gen.relay is not None and gen.relay.proc is not None and gen.relay.proc.returncode is not None
    assert gen.workdir is not None and not gen.workdir.exists()


# --- the histogram ------------------------------------------------------------------------------------------


def test_buckets_are_contiguous_and_narrow() -> None:
    keys = sorted({bucket_of(v) for v in range(0, 200_000)})
    for a, b in zip(keys, keys[1:], strict=False):
        assert bucket_bounds(a)[1] + 1 == bucket_bounds(b)[0]
    rng = random.Random(3)
    for v in [rng.randrange(1 << 34) for _ in range(20_000)] + list(range(200)):
        lo, hi = bucket_bounds(bucket_of(v))
        assert lo <= v <= hi and hi - lo <= v // 32


def test_percentiles_within_a_bucket_and_windows_subtract() -> None:
    rng = random.Random(4)
    xs = [rng.randrange(30, 5000) for _ in range(5000)]
    h = LatencyHistogram()
    for x in xs:
        h.add_ns(x * 1000 + 999)
    s = sorted(xs)
    for p in (50, 95, 99):
        exact = s[-(-len(s) * p // 100) - 1]
        got = h.percentile(p)
        assert got is not None and exact <= got <= exact + exact // 32 + 1, (p, exact, got)
    assert h.percentile(100) == max(xs) == h.max_us
    snap = h.summary()
    for _ in range(100):
        h.add_ns(20_000_000)  # 20 ms
    window = LatencyHistogram.from_summary(h.summary()) - LatencyHistogram.from_summary(snap)
    assert window.count == 100
    p50 = window.percentile(50)
    assert p50 is not None and 20_000 <= p50 <= 20_000 * 33 // 32
    assert LatencyHistogram().summary()["p95"] is None


# --- the driver records voice in -> each copy out ----------------------------------------------------------------


class FanOut:
    """A fake core: RTP in -> one RTP copy to each listener and one RTCP; anything else -> one RTP."""

    def __init__(self, listeners: list[tuple[str, int]]) -> None:
        self.listeners = listeners

    def on_datagram(self, now: int, addr: Any, data: bytes) -> Any:
        out: list[tuple[Any, bytes]] = []
        if data[1] == 204:
            return [(self.listeners[0], data)]
        for a in self.listeners:
            out.append((a, data))
        out.append((self.listeners[0], bytes([0x80, 204, 0, 1, 0, 0, 0, 1])))
        return out

    def poll(self, now: int) -> Any:
        return []

    def next_deadline(self) -> int | None:
        return None


def test_driver_records_each_forwarded_voice_copy() -> None:
    async def main() -> dict[str, Any]:
        socks = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        core = FanOut([s.getsockname() for s in socks])
        drv = UdpDriver(core)
        host, port = await drv.open("127.0.0.1", 0)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        voice = bytes(rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, 1, 160, 7), bytes(84)))
        for _ in range(5):
            tx.sendto(voice, (host, port))
        tx.sendto(bytes([0x80, 204, 0, 1, 0, 0, 0, 9]), (host, port))  # RTCP in: not voice
        await drv.wait_until(lambda: drv.counters["datagrams_in"] == 6, 5)
        st = drv.driver_status()
        drv.close()
        tx.close()
        for s in socks:
            s.close()
        return st

    st = asyncio.run(main())
    lat = st["voice_latency_us"]
    assert lat["count"] == 15  # 5 voice datagrams x 3 copies; the RTCP and its answer are not voice
    assert lat["p95"] is not None and lat["p95"] >= lat["p50"] >= 0
    assert sum(n for _, n in lat["buckets"]) == 15
