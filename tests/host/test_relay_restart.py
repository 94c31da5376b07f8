"""Killing the relay during a call and starting it again (issue 3, Robustness).

``opmob relay run`` (CPython, SQLite store) serves four devices (``DeviceSession`` on their own
loopback sockets) affiliated to one group. One of them has the floor and is talking when the relay
process is killed with SIGKILL: no clean stop, no last write. The relay is started again on the
same configuration and store. Then:

- its status shows every registration and affiliation at once, restored from the store, before any
  device has spoken to it;
- the devices notice and register again by themselves (fresh keys, new SSRC), one of them as a
  freshly rebooted accessory that names no groups, so only the relay's store can give it its group;
- every member is told the call before the restart is over (Floor Idle), and the group's floor is
  idle with nobody holding or queued: no floor stays stuck;
- a new Floor Request is granted, its voice reaches every other member packet for packet, and the
  talker from before the restart gets the floor after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from opmob import mcpt, rtp
from opmob.device import DeviceSession
from opmob_host.udp_driver import Endpoint
from test_relay_server import Lines, free_tcp_port, free_udp_port

ROOT = Path(__file__).resolve().parents[2]
GROUP = "engine-7@no"
NAMES = ("ann", "bob", "cat", "dan")
T = TypeVar("T")


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(main())


def ident(name: str) -> str:
    return f"rs-{name}@no"


def export(secrets: dict[str, bytes]) -> dict[str, Any]:
    return {
        "format": "opmob-registry",
        "version": 1,
        "system": "no",
        "devices": [
            {
                "identity": ident(n),
                "secret": secrets[n].hex(),
                "groups": [GROUP],
                "ceiling": 100,
                "status": "active",
                "vid": 0,
                "cseq": 0,
            }
            for n in NAMES
        ],
        "groups": [{"identity": GROUP, "policy": "members", "e2e": False, "key_ids": [], "receive_only": []}],
    }


def write_config(tmp: Path, udp: int, status: int, secrets: dict[str, bytes]) -> Path:
    (tmp / "registry.json").write_text(json.dumps(export(secrets)))
    cfg = tmp / "relay.toml"
    cfg.write_text(
        "\n".join(
            [
                "[relay]",
                'identity = "relay-rs@no"',
                "[listen]",
                'host = "127.0.0.1"',
                f"port = {udp}",
                "[status]",
                'host = "127.0.0.1"',
                f"port = {status}",
                "[registry]",
                'path = "state/registry.sqlite"',
                'import = "registry.json"',
                "[timers]",
                "keepalive = 1",  # the devices notice a restart within about a second
                "expiry = 600",
                "[floor]",
                "t1 = 30.0",  # the burst in progress must not end by itself while the relay is down
                "t2 = 60.0",
            ]
        )
        + "\n"
    )
    return cfg


class RelayProcess:
    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[str] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opmob_host.cli", "relay", "run", "--config", str(self.cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        lines = Lines(self.proc)
        await asyncio.to_thread(lines.wait_for, "opmob relay relay-rs@no: serving udp 127.0.0.1:", 30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(20) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)


def fetch_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def entry(status: dict[str, Any], identity: str) -> dict[str, Any]:
    for d in status["devices"]:
        if d["identity"] == identity:
            e: dict[str, Any] = d
            return e
    raise AssertionError(f"{identity} not in the relay's status: {status['devices']}")


def group_entry(status: dict[str, Any]) -> dict[str, Any]:
    for g in status["groups"]:
        if g["identity"] == GROUP:
            e: dict[str, Any] = g
            return e
    raise AssertionError(f"{GROUP} not in the relay's status: {status['groups']}")


def floor_kinds(dev: DeviceSession, since: int = 0) -> list[int]:
    return [e[2].kind for e in dev.events[since:] if e[0] == "floor"]


def heard(dev: DeviceSession, ssrc: int, since: int = 0) -> list[bytes]:
    return [
        e[1][12:] for e in dev.events[since:] if e[0] == "voice" and int.from_bytes(e[1][8:12], "big") == ssrc
    ]


class Talker:
    """Sends 20 ms DVI4-sized voice packets from ``dev`` until stopped."""

    def __init__(self, dev: DeviceSession, ep: Endpoint, seq0: int) -> None:
        self.dev = dev
        self.ep = ep
        self.seq = seq0
        self.sent: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def packet(self) -> bytes:
        self.seq += 1
        payload = bytes((self.seq * 13 + i) & 0xFF for i in range(84))
        return bytes(rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, self.seq & 0xFFFF, self.seq * 160, 0), payload))

    def send_one(self) -> None:
        p = self.packet()
        if self.dev.state == "registered":
            self.sent.append(p[12:])
        self.ep.act(lambda now: self.dev.send_voice(now, p), "voice")

    async def _run(self, count: int | None) -> None:
        n = 0
        while count is None or n < count:
            self.send_one()
            n += 1
            await asyncio.sleep(0.02)

    def start(self, count: int | None = None) -> None:
        self._task = asyncio.create_task(self._run(count))

    async def join(self) -> None:
        assert self._task is not None
        await self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def request_floor(ep: Endpoint, dev: DeviceSession) -> None:
    msg = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_QUEUEING_SUPPORTED)
    assert ep.act(lambda now: dev.send_floor(now, msg, GROUP), "floor request")


def release_floor(ep: Endpoint, dev: DeviceSession) -> None:
    assert ep.act(lambda now: dev.send_floor(now, mcpt.FloorMsg(mcpt.FLOOR_RELEASE), GROUP), "release")


async def wait_for(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def test_sigkill_during_a_call_then_restart(tmp_path: Path) -> None:
    secrets = {n: os.urandom(16) for n in NAMES}
    udp, status_port = free_udp_port(), free_tcp_port()
    cfg = write_config(tmp_path, udp, status_port, secrets)
    relay_addr = ("127.0.0.1", udp)

    def device(name: str, groups: list[str]) -> DeviceSession:
        return DeviceSession(ident(name), secrets[name], relay_addr, os.urandom, groups=groups)

    devs = {n: device(n, [GROUP]) for n in NAMES}
    relay = RelayProcess(cfg)

    async def status() -> dict[str, Any]:
        return await asyncio.to_thread(fetch_status, status_port)

    async def main() -> None:
        eps = {n: Endpoint(devs[n]) for n in NAMES}
        for ep in eps.values():
            await ep.open("127.0.0.1", 0)
        try:
            await relay.start()
            # --- before: four members, a call in progress ---------------------------------------------
            for n in NAMES:
                eps[n].act(devs[n].start, "start")
            await wait_for(
                lambda: all(d.registered and GROUP in d.affiliated for d in devs.values()), 20, "registration"
            )
            ann, ann_ep = devs["ann"], eps["ann"]
            mark = len(ann.events)
            request_floor(ann_ep, ann)
            await wait_for(lambda: mcpt.FLOOR_GRANTED in floor_kinds(ann, mark), 5, "ann's Floor Granted")
            talk = Talker(ann, ann_ep, 1000)
            talk.start()
            await wait_for(
                lambda: all(len(heard(devs[n], ann.ssrc)) >= 10 for n in NAMES if n != "ann"),
                10,
                "ann's voice at every listener",
            )
            st = await status()
            g = group_entry(st)
            assert g["floor_state"] == "G: Floor Taken" and g["holder"] == ident("ann"), g
            old_ssrc = {n: d.ssrc for n, d in devs.items()}

            # --- SIGKILL mid-call ---------------------------------------------------------------------
            relay.kill()
            await asyncio.sleep(0.3)  # ann keeps talking into the void
            # dan's accessory reboots too: a new session that names no groups.
            eps["dan"].close()
            devs["dan"] = device("dan", [])
            eps["dan"] = Endpoint(devs["dan"])
            await eps["dan"].open("127.0.0.1", 0)
            await relay.start()
            st = await status()
            # The relay's store kept every registration and affiliation through the kill.
            assert st["counters"]["restored"] == len(NAMES), st["counters"]
            assert st["counters"]["restore_dropped"] == 0
            for n in NAMES:
                e = entry(st, ident(n))
                assert e["state"] in ("stale", "registered") and e["groups"] == [GROUP], e
            eps["dan"].act(devs["dan"].start, "start")

            # --- the devices come back by themselves ----------------------------------------------------
            marks = {n: len(d.events) for n, d in devs.items()}
            await wait_for(
                lambda: all(d.state == "registered" and d.ssrc != old_ssrc[n] for n, d in devs.items()),
                30,
                "every device registered again with fresh keys",
            )
            await talk.stop()
            await wait_for(
                lambda: all(mcpt.FLOOR_IDLE in floor_kinds(d, marks[n]) for n, d in devs.items()),
                10,
                "Floor Idle at every member: the call before the restart is over",
            )
            for n in NAMES[:3]:
                assert GROUP in devs[n].affiliated, (n, devs[n].affiliated)
            assert devs["dan"].affiliated == []  # it asked for nothing; the relay remembered for it
            st = await status()
            for n in NAMES:
                e = entry(st, ident(n))
                assert e["state"] == "registered" and e["groups"] == [GROUP], e
            g = group_entry(st)
            assert g["floor_state"] == "G: Floor Idle" and g["holder"] is None and g["queue"] == [], g
            assert sorted(m[0] for m in g["members"]) == sorted(ident(n) for n in NAMES), g
            assert st["counters"]["registrations"] == len(NAMES)

            # --- the group carries on -----------------------------------------------------------------------
            bob, bob_ep = devs["bob"], eps["bob"]
            marks = {n: len(d.events) for n, d in devs.items()}
            request_floor(bob_ep, bob)
            await wait_for(
                lambda: mcpt.FLOOR_GRANTED in floor_kinds(bob, marks["bob"]), 5, "bob's Floor Granted"
            )
            btalk = Talker(bob, bob_ep, 5000)
            btalk.start(25)
            await btalk.join()
            await wait_for(
                lambda: all(len(heard(devs[n], bob.ssrc, marks[n])) >= 25 for n in NAMES if n != "bob"),
                5,
                "bob's voice at every listener",
            )
            for n in NAMES:
                if n != "bob":
                    assert heard(devs[n], bob.ssrc, marks[n]) == btalk.sent, n
                    assert mcpt.FLOOR_TAKEN in floor_kinds(devs[n], marks[n]), n
            release_floor(bob_ep, bob)
            # The talker from before the restart is not stuck either.
            mark = len(ann.events)
            await wait_for(
                lambda: group_entry(fetch_status(status_port))["floor_state"] == "G: Floor Idle", 5, "idle"
            )
            request_floor(ann_ep, ann)
            await wait_for(lambda: mcpt.FLOOR_GRANTED in floor_kinds(ann, mark), 5, "ann's Floor Granted")
            release_floor(ann_ep, ann)
            st = await status()
            drv = st["driver"]
            assert drv["driver_errors"] == 0 and drv["send_dropped"] == 0
            assert st["counters"]["rx_datagrams"] == st["counters"]["accepted"] + sum(
                v for k, v in st["counters"].items() if k.startswith("drop_")
            )
            for n, d in devs.items():
                assert d.counters["rx_datagrams"] == d.counters["accepted"] + sum(
                    v for k, v in d.counters.items() if k.startswith("drop_")
                ), (n, d.counters)
        finally:
            relay.stop()
            for ep in eps.values():
                ep.close()

    arun(main())
