"""A load generator for the relay: 200 devices on loopback, 20 groups busy at once (``make bench``).

It starts ``opmob relay run`` (CPython, SQLite store, a registry export made for the run with fresh
random secrets) as its own process and drives every device from this one: each device is a real
``DeviceSession`` on its own UDP socket (``relay_server.Endpoint``), all of them in one asyncio
loop, so the relay gets one core and the devices the other.

Layout (the issue's words: 200 registered devices, 20 groups busy at once, 10 listeners each):
device ``ld-NNN@no`` belongs to block ``NNN // 10``; group ``load-GG@no`` has the 10 devices of
block GG as its listeners, and its talker is the first device of the next block (GG + 1, modulo
20), which therefore listens in one group while it talks in another. So every group has 1 talker
and 10 listeners (11 members), 20 of the 200 devices talk at once, and the relay forwards each voice
packet to 10 listeners: 1,000 packets/s in, 10,000 out.

Each talker loops for the run's duration: Floor Request (its group named in the SSRC field) ->
Floor Granted -> a 1 s burst of 50 voice packets (20 ms DVI4 frames of real speech: 80 bytes of
samples + the 4-byte state header, RTP payload type 5), one every 20 ms on a fixed schedule ->
Floor Release -> 100..200 ms of silence. Talkers start spread over the first second.

What it reports (``LoadResult``):
- floor access: Floor Request handed to the socket -> Floor Granted processed by the talker's
  session, per request (TS 22.179's access time without the radio);
- added latency at the relay: from the relay's CPython driver (``voice_latency_us`` in /status): a
  voice datagram read off the relay's socket -> each listener's copy handed to the socket; the two
  status snapshots around the window are subtracted, so registration and ramp-up are left out;
- end-to-end voice latency on loopback: ``send_voice`` called -> the listener's session has the
  packet authenticated and decrypted (both clocks are this process's), so it also holds the
  kernel's loopback, the relay's socket queue and this process's own event-loop delay;
- delivery: the listener copies that arrived, out of (packets sent x 10);
- the relay process's CPU use over the window (/proc).

It stops by itself: every wait has a limit, the relay process is stopped (SIGTERM, then SIGKILL)
and the temporary directory removed whatever happens, and the relay is told by the kernel to stop
should this process die first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opmob_host.latency import LatencyHistogram
from opmob_host.udp_driver import Endpoint

SPEECH = "/usr/share/codec2/raw/hts1a.raw"
RELAY_ID = "relay-load@no"


@dataclass
class LoadConfig:
    groups: int = 20
    listeners: int = 10  # per group; devices = groups * listeners
    duration_s: float = 10.0
    burst_packets: int = 50  # 1 s of voice per floor grant
    packet_s: float = 0.02
    gap_s: tuple[float, float] = (0.1, 0.2)
    grant_timeout_s: float = 2.0
    register_timeout_s: float = 90.0
    seed: int = 1

    @property
    def devices(self) -> int:
        return self.groups * self.listeners


@dataclass
class LoadResult:
    config: LoadConfig
    floor_access_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    relay_added: LatencyHistogram = field(default_factory=LatencyHistogram)
    grant_timeouts: int = 0
    voice_sent: int = 0
    voice_expected: int = 0
    voice_received: int = 0
    late_ticks: int = 0  # talker ticks this process ran more than 20 ms late (it was overloaded)
    relay_cpu_pct: float = 0.0
    generator_cpu_pct: float = 0.0
    register_s: float = 0.0
    window_s: float = 0.0
    relay_counters: dict[str, Any] = field(default_factory=dict)

    @property
    def delivered_pct(self) -> float:
        return 100.0 * self.voice_received / self.voice_expected if self.voice_expected else 0.0

    def summary(self) -> dict[str, Any]:
        def pct(xs: list[float], p: float) -> float | None:
            return percentile(xs, p) if xs else None

        h = self.relay_added
        return {
            "devices": self.config.devices,
            "groups": self.config.groups,
            "listeners_per_group": self.config.listeners,
            "window_s": round(self.window_s, 2),
            "register_s": round(self.register_s, 2),
            "floor_requests": len(self.floor_access_ms),
            "grant_timeouts": self.grant_timeouts,
            "floor_access_ms": {p: pct(self.floor_access_ms, p) for p in (50, 95, 99)},
            "relay_added_latency_ms": {
                "count": h.count,
                **{p: (v / 1000 if (v := h.percentile(p)) is not None else None) for p in (50, 95, 99)},
            },
            "e2e_voice_latency_ms": {p: pct(self.e2e_ms, p) for p in (50, 95, 99)},
            "voice_sent": self.voice_sent,
            "voice_delivered_pct": round(self.delivered_pct, 3),
            "late_ticks": self.late_ticks,
            "relay_cpu_pct": round(self.relay_cpu_pct, 1),
            "generator_cpu_pct": round(self.generator_cpu_pct, 1),
        }


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


# --- layout ------------------------------------------------------------------------------------------------


def device_id(i: int) -> str:
    return f"ld-{i:03d}@no"


def group_id(g: int) -> str:
    return f"load-{g:02d}@no"


def talker_of(cfg: LoadConfig, g: int) -> int:
    return cfg.listeners * ((g + 1) % cfg.groups)


def groups_of(cfg: LoadConfig, i: int) -> list[str]:
    """The device's groups: its block's (where it listens), and the one it talks in, if any."""
    gs = [group_id(i // cfg.listeners)]
    if i % cfg.listeners == 0:
        gs.append(group_id((i // cfg.listeners - 1) % cfg.groups))
    return gs


def registry_export(cfg: LoadConfig, secrets: list[bytes]) -> dict[str, Any]:
    return {
        "format": "opmob-registry",
        "version": 1,
        "system": "no",
        "devices": [
            {
                "identity": device_id(i),
                "secret": secrets[i].hex(),
                "groups": groups_of(cfg, i),
                "ceiling": 100,
                "status": "active",
                "vid": 0,
                "cseq": 0,
            }
            for i in range(cfg.devices)
        ],
        "groups": [
            {"identity": group_id(g), "policy": "members", "e2e": False, "key_ids": [], "receive_only": []}
            for g in range(cfg.groups)
        ],
    }


def speech_payloads(n: int = 50) -> list[bytes]:
    """``n`` 20 ms DVI4 payloads of real speech (a tone when the codec2 examples are missing)."""
    from opmob import dvi4

    try:
        with open(SPEECH, "rb") as f:
            pcm = f.read(320 * n)
    except OSError:
        pcm = b""
    if len(pcm) < 320 * n:
        import math

        pcm = b"".join(
            int(8000 * math.sin(2 * math.pi * 440 * t / 8000)).to_bytes(2, "little", signed=True)
            for t in range(160 * n)
        )
    enc = dvi4.Dvi4Encoder()
    return [bytes(enc.encode(pcm[k * 320 : (k + 1) * 320])) for k in range(n)]


# --- the relay process ---------------------------------------------------------------------------------------


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Linux: the relay gets SIGTERM if this process dies first, so no relay outlives its bench.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RelayProcess:
    def __init__(self, workdir: Path, export: dict[str, Any]) -> None:
        self.workdir = workdir
        (workdir / "registry.json").write_text(json.dumps(export))
        self.status_port = _free_tcp_port()
        self.cfg = workdir / "relay.toml"
        self.cfg.write_text(
            "\n".join(
                [
                    "[relay]",
                    f'identity = "{RELAY_ID}"',
                    "[listen]",
                    'host = "127.0.0.1"',
                    "port = 0",
                    "[status]",
                    'host = "127.0.0.1"',
                    f"port = {self.status_port}",
                    "[registry]",
                    'path = "state/registry.sqlite"',
                    'import = "registry.json"',
                ]
            )
            + "\n"
        )
        self.log = workdir / "relay.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.udp: tuple[str, int] | None = None

    async def start(self) -> None:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root / "host_tools"), str(root / "firmware"), env.get("PYTHONPATH", "")]
        )
        with open(self.log, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "opmob_host.cli",
                "relay",
                "run",
                "--config",
                str(self.cfg),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                preexec_fn=_die_with_parent,
            )
        assert self.proc.stdout is not None
        prefix = f"opmob relay {RELAY_ID}: serving udp 127.0.0.1:"
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
            if not line:
                raise RuntimeError(f"the relay did not start: {self.log_tail()}")
            if line.startswith(prefix):
                self.udp = ("127.0.0.1", int(line[len(prefix) :].split(",")[0]))
                return

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return "(no log)"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=10) as r:
            doc: dict[str, Any] = json.loads(r.read())
        return doc

    def cpu_s(self) -> float:
        """CPU seconds the relay process has used (user + system)."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        p = self.proc
        if p is None or p.returncode is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(p.wait(), 10)
        except TimeoutError:
            p.kill()
            await p.wait()


# --- the devices ---------------------------------------------------------------------------------------------


class Probe:
    """A ``DeviceSession`` as the driver's core: passes everything through and timestamps what the
    measurement needs (Floor Granted, voice) as the session reports it."""

    def __init__(self, gen: LoadGen, idx: int, dev: Any) -> None:
        self.gen = gen
        self.idx = idx
        self.dev = dev
        self.grant: asyncio.Future[float] | None = None
        self.grant_ssrc = 0

    def on_datagram(self, now: int, addr: Any, data: bytes) -> Any:
        out = self.dev.on_datagram(now, addr, data)
        if self.dev.events:
            self._events()
        return out

    def poll(self, now: int) -> Any:
        out = self.dev.poll(now)
        if self.dev.events:
            self._events()
        return out

    def next_deadline(self) -> int | None:
        d: int | None = self.dev.next_deadline()
        return d

    def _events(self) -> None:
        from opmob import mcpt

        t = time.perf_counter()
        gen = self.gen
        for e in self.dev.events:
            k = e[0]
            if k == "voice":
                gen.heard(e[1], t)
            elif k == "floor" and e[2].kind == mcpt.FLOOR_GRANTED:
                f = self.grant
                if f is not None and not f.done() and e[2].ssrc == self.grant_ssrc:
                    f.set_result(t)
        self.dev.events = []


def _send_floor(dev: Any, msg: Any, group: str, now: int) -> Any:
    return dev.send_floor(now, msg, group)


def _send_voice(dev: Any, pkt: bytes, now: int) -> Any:
    return dev.send_voice(now, pkt)


class LoadGen:
    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.res = LoadResult(cfg)
        self.rng = random.Random(cfg.seed)
        self.payloads = speech_payloads()
        # talker SSRC -> RTP timestamp -> when sent. Copies are matched by timestamp, which the
        # relay forwards as sent; the sequence number it may shift per listener (relay_media).
        self.sent: dict[int, dict[int, float]] = {}
        self.measuring = False
        self.workdir: Path | None = None
        self.relay: RelayProcess | None = None

    def heard(self, plain: bytes, t: float) -> None:
        if not self.measuring:
            return
        by_ts = self.sent.get(int.from_bytes(plain[8:12], "big"))
        if by_ts is None:
            return
        t0 = by_ts.get(int.from_bytes(plain[4:8], "big"))
        if t0 is not None:
            self.res.voice_received += 1
            self.res.e2e_ms.append((t - t0) * 1000)

    async def talker(self, g: int, probe: Probe, ep: Endpoint, start: float, end: float) -> None:
        from opmob import mcpt, rtp
        from opmob.floorid import floor_ssrc

        cfg = self.cfg
        res = self.res
        loop = asyncio.get_running_loop()
        dev = probe.dev
        group = group_id(g)
        fssrc = floor_ssrc(group)
        seq = self.rng.randrange(0x10000)
        ts = self.rng.getrandbits(32)
        await asyncio.sleep(max(0.0, start - loop.time()))
        while loop.time() < end:
            probe.grant = loop.create_future()
            probe.grant_ssrc = fssrc
            req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_QUEUEING_SUPPORTED)
            t0 = time.perf_counter()
            ep.act(functools.partial(_send_floor, dev, req, group), "floor request")
            try:
                t1 = await asyncio.wait_for(probe.grant, cfg.grant_timeout_s)
            except TimeoutError:
                res.grant_timeouts += 1
                await asyncio.sleep(cfg.gap_s[1])
                continue
            res.floor_access_ms.append((t1 - t0) * 1000)
            ssrc = dev.ssrc
            by_ts = self.sent.setdefault(ssrc, {})
            tick = loop.time()
            for k in range(cfg.burst_packets):
                seq = (seq + 1) & 0xFFFF
                ts = (ts + 160) & 0xFFFFFFFF
                pkt = bytes(
                    rtp.encode(
                        rtp.RtpHeader(rtp.PT_DVI4_8K, seq, ts, 0, marker=k == 0), self.payloads[k % 50]
                    )
                )
                by_ts[ts] = time.perf_counter()
                by_ts.pop((ts - 500 * 160) & 0xFFFFFFFF, None)
                ep.act(functools.partial(_send_voice, dev, pkt), "voice")
                res.voice_sent += 1
                res.voice_expected += cfg.listeners
                tick += cfg.packet_s
                delay = tick - loop.time()
                if delay < -cfg.packet_s:
                    res.late_ticks += 1
                await asyncio.sleep(max(0.0, delay))
            ep.act(functools.partial(_send_floor, dev, mcpt.FloorMsg(mcpt.FLOOR_RELEASE), group), "release")
            await asyncio.sleep(self.rng.uniform(*cfg.gap_s))

    async def run(self) -> LoadResult:
        from opmob.device import DeviceSession

        cfg = self.cfg
        res = self.res
        loop = asyncio.get_running_loop()
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="opmob-load-"))
        eps: list[Endpoint] = []
        relay: RelayProcess | None = None
        try:
            secrets = [os.urandom(16) for _ in range(cfg.devices)]
            relay = self.relay = RelayProcess(workdir, registry_export(cfg, secrets))
            await relay.start()
            assert relay.udp is not None
            probes: list[Probe] = []
            t_reg = time.perf_counter()
            for i in range(cfg.devices):
                dev = DeviceSession(device_id(i), secrets[i], relay.udp, os.urandom, groups=groups_of(cfg, i))
                probe = Probe(self, i, dev)
                ep = Endpoint(probe)
                await ep.open("127.0.0.1", 0)
                probes.append(probe)
                eps.append(ep)
            for k, (probe, ep) in enumerate(zip(probes, eps, strict=True)):
                ep.act(probe.dev.start, "start")
                if k % 10 == 9:
                    await asyncio.sleep(0.02)  # 500 registrations/s at most: a ramp, not a wall

            def ready() -> bool:
                return all(
                    p.dev.state == "registered" and len(p.dev.affiliated) == len(groups_of(cfg, p.idx))
                    for p in probes
                )

            end = loop.time() + cfg.register_timeout_s
            while not ready():
                if loop.time() > end:
                    n = sum(1 for p in probes if p.dev.state == "registered")
                    raise RuntimeError(
                        f"only {n} of {cfg.devices} devices registered; relay log: {relay.log_tail()}"
                    )
                await asyncio.sleep(0.05)
            res.register_s = time.perf_counter() - t_reg
            await asyncio.sleep(0.5)  # the relay's floor messages of the registrations settle

            # The measuring instrument must not add pauses of its own: the collector's full passes
            # over 200 sessions would show up as latency. Reference counting frees the voice path's
            # garbage; the collector runs again after the window.
            gc.collect()
            gc.freeze()
            gc.disable()
            before = await asyncio.to_thread(relay.status)
            cpu0, own0, wall0 = relay.cpu_s(), time.process_time(), time.perf_counter()
            self.measuring = True
            start = loop.time() + 0.05
            end = start + cfg.duration_s
            tasks = [
                asyncio.create_task(
                    self.talker(
                        g,
                        probes[talker_of(cfg, g)],
                        eps[talker_of(cfg, g)],
                        start + g * (1.0 / cfg.groups),
                        end,
                    )
                )
                for g in range(cfg.groups)
            ]
            await asyncio.wait_for(asyncio.gather(*tasks), cfg.duration_s + 30)
            await asyncio.sleep(0.3)  # the last packets arrive
            self.measuring = False
            gc.enable()
            gc.unfreeze()
            res.window_s = time.perf_counter() - wall0
            res.relay_cpu_pct = 100 * (relay.cpu_s() - cpu0) / res.window_s
            res.generator_cpu_pct = 100 * (time.process_time() - own0) / res.window_s
            after = await asyncio.to_thread(relay.status)
            res.relay_added = LatencyHistogram.from_summary(
                after["driver"]["voice_latency_us"]
            ) - LatencyHistogram.from_summary(before["driver"]["voice_latency_us"])
            res.relay_counters = after["counters"]
            drv = after["driver"]
            if drv["driver_errors"]:
                raise RuntimeError(f"the relay's driver counted {drv['driver_errors']} core errors")
            if not res.floor_access_ms or not res.relay_added.count or not res.e2e_ms:
                raise RuntimeError(f"no measurement: {res.summary()}")
            return res
        finally:
            gc.enable()
            gc.unfreeze()
            for ep in eps:
                ep.close()
            if relay is not None:
                await relay.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def run_load(cfg: LoadConfig, limit_s: float | None = None, gen: LoadGen | None = None) -> LoadResult:
    """Run the load in a fresh event loop; everything is stopped within ``limit_s``."""
    limit = limit_s if limit_s is not None else cfg.register_timeout_s + cfg.duration_s + 120
    g = gen if gen is not None else LoadGen(cfg)

    async def main() -> LoadResult:
        return await asyncio.wait_for(g.run(), limit)

    return asyncio.run(main())


# --- bench rows --------------------------------------------------------------------------------------------------


def bench_rows(quick: bool) -> list[dict[str, Any]]:
    """The ``relay.*`` rows of ``make bench`` (``--quick``: a 3 s window instead of 10 s)."""
    cfg = LoadConfig(duration_s=3.0 if quick else 10.0)
    load = os.getloadavg()[0]
    res = run_load(cfg)
    s = res.summary()
    layout = (
        f"{cfg.devices} devices on loopback, {cfg.groups} groups busy at once (1 talker + {cfg.listeners} "
        f"listeners each), 50 voice pkt/s per talker, {s['window_s']:.0f} s; machine load {load:.1f} at start"
    )
    h = res.relay_added

    def row(name: str, value: float, unit: str, goal: float | None, note: str) -> dict[str, Any]:
        return {"name": name, "value": value, "unit": unit, "goal": goal, "runtime": "cpython", "note": note}

    fa = res.floor_access_ms
    added50, added95 = h.percentile(50), h.percentile(95)
    assert added50 is not None and added95 is not None
    return [
        row(
            "relay.floor_access_ms.p50",
            percentile(fa, 50),
            "ms",
            None,
            f"Floor Request sent -> Floor Granted received, at the talker; {len(fa)} requests; {layout}",
        ),
        row(
            "relay.floor_access_ms.p95",
            percentile(fa, 95),
            "ms",
            20.0,
            f"as p50; {res.grant_timeouts} requests not granted within {cfg.grant_timeout_s:g} s",
        ),
        row(
            "relay.added_latency_ms.p50",
            added50 / 1000,
            "ms",
            None,
            f"at the relay's driver: voice datagram read -> each listener's copy sent; {h.count} copies; {layout}",
        ),
        row(
            "relay.added_latency_ms.p95",
            added95 / 1000,
            "ms",
            2.0,
            "as p50 (histogram buckets ~3 % wide, upper bound reported)",
        ),
        row(
            "relay.e2e_voice_latency_ms.p50",
            percentile(res.e2e_ms, 50),
            "ms",
            None,
            "loopback, talker's send_voice -> listener's session decrypted it; holds both processes' "
            f"event-loop delays; {len(res.e2e_ms)} copies",
        ),
        row("relay.e2e_voice_latency_ms.p95", percentile(res.e2e_ms, 95), "ms", None, "as p50"),
        row(
            "relay.voice_delivered_pct",
            res.delivered_pct,
            "%",
            100.0,
            f"listener copies received / (voice packets sent x {cfg.listeners}); {res.voice_sent} packets sent",
        ),
        row(
            "relay.load_relay_cpu_pct",
            res.relay_cpu_pct,
            "%",
            None,
            f"the relay process's CPU over the window (one core = 100 %); the load generator used "
            f"{res.generator_cpu_pct:.0f} %",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay load: 200 devices, 20 groups busy at once, on loopback")
    p.add_argument("--duration", type=float, default=10.0, help="measurement window in s (default 10)")
    p.add_argument("--groups", type=int, default=20)
    p.add_argument("--listeners", type=int, default=10)
    args = p.parse_args(argv)
    cfg = LoadConfig(groups=args.groups, listeners=args.listeners, duration_s=args.duration)
    print(json.dumps(run_load(cfg).summary(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
