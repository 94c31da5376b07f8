"""The real relay as a process on loopback: ``opmob relay run`` (CPython) and
``micropython -m opmob.relay_uasyncio`` (the unix port), with the registry example, and a device
(``DeviceSession``) driven over UDP by ``relay_server.Endpoint``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opmob.device import DeviceSession
from opmob_host.udp_driver import Endpoint
from test_relay_server import Lines, free_tcp_port, free_udp_port

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
EXAMPLE = ROOT / "boards" / "rpi-relay" / "registry-example.json"
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
DEVICE = "ola.nordmann@no"
GROUP = "fire-oslo@no"

T = TypeVar("T")


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


def secret_of(identity: str) -> bytes:
    for d in json.loads(EXAMPLE.read_text())["devices"]:
        if d["identity"] == identity:
            return bytes.fromhex(d["secret"])
    raise KeyError(identity)


def config(udp: int, status: int, registry: str, keepalive: int = 15) -> dict[str, Any]:
    return {
        "relay": {"identity": "relay-1@no"},
        "listen": {"host": "127.0.0.1", "port": udp},
        "status": {"host": "127.0.0.1", "port": status},
        "registry": {"path": registry, "import": str(EXAMPLE)},
        "timers": {"keepalive": keepalive, "expiry": 600},
    }


def toml(cfg: dict[str, Any]) -> str:
    lines = []
    for section, table in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@contextmanager
def cpython_relay(cfg_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "opmob_host.cli", "relay", "run", "--config", str(cfg_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = Lines(proc)
        lines.wait_for("opmob relay relay-1@no: serving udp 127.0.0.1:")
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def http_status(port: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", "relay", "status", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert bytes.hex(secret_of(DEVICE)) not in proc.stdout  # the status never shows a secret
    return doc


def device_entry(status: dict[str, Any], identity: str) -> dict[str, Any] | None:
    for d in status["devices"]:
        if d["identity"] == identity:
            entry: dict[str, Any] = d
            return entry
    return None


async def register(dev: DeviceSession, ep: Endpoint) -> None:
    ep.act(dev.start, "start")
    await ep.wait_until(
        lambda: dev.registered and GROUP in dev.affiliated, 20, f"{DEVICE} registered and affiliated"
    )


def test_a_device_registers_and_status_shows_it(tmp_path: Path) -> None:
    status_port = free_tcp_port()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(toml(config(0, status_port, "state/registry.sqlite")))
    with cpython_relay(cfg) as (proc, lines):
        udp = int(lines.seen[-1].split("serving udp 127.0.0.1:")[1].split(",")[0])
        dev = DeviceSession(DEVICE, secret_of(DEVICE), ("127.0.0.1", udp), os.urandom, groups=[GROUP])

        async def main() -> None:
            async with Endpoint(dev) as ep:
                await register(dev, ep)
                assert ep.counters["driver_errors"] == 0

        arun(main())
        st = http_status(status_port)
        entry = device_entry(st, DEVICE)
        assert entry is not None, st["devices"]
        assert entry["state"] == "registered" and GROUP in entry["groups"]
        assert [g["identity"] for g in st["groups"]] == [GROUP]
        assert st["groups"][0]["floor_state"] == "G: Floor Idle"
        assert st["counters"]["registrations"] == 1
        # Driver and core agree on every datagram (one snapshot): at least REGISTER (with the
        # affiliation) and AUTH_RESPONSE in; CHALLENGE, REGISTER_ACK and the group's Floor Idle out.
        drv = st["driver"]
        assert drv["driver_errors"] == 0 and drv["send_dropped"] == 0 and drv["send_errors"] == 0
        assert drv["datagrams_in"] == st["counters"]["rx_datagrams"] >= 2
        assert drv["datagrams_out"] == st["counters"]["tx_datagrams"] >= 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stderr is not None
        assert "INFO relay stopped" in (err := proc.stderr.read())
    db = tmp_path / "state" / "registry.sqlite"
    assert f"INFO registry {db} closed" in err
    assert db.stat().st_mode & 0o777 == 0o600
    # The store was closed: SQLite folds the write-ahead log back and removes it on the last close.
    assert not Path(f"{db}-wal").exists()


def test_restart_keeps_the_registration_and_the_device_comes_back_by_itself(tmp_path: Path) -> None:
    udp, status_port = free_udp_port(), free_tcp_port()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(toml(config(udp, status_port, "state/registry.sqlite", keepalive=1)))
    dev = DeviceSession(DEVICE, secret_of(DEVICE), ("127.0.0.1", udp), os.urandom, groups=[GROUP])

    async def main() -> None:
        async with Endpoint(dev) as ep:
            with cpython_relay(cfg) as (proc, _):
                await register(dev, ep)
                first_ssrc = dev.ssrc
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 20) == 0
            with cpython_relay(cfg) as (proc, _):
                st = await asyncio.to_thread(http_status, status_port)
                assert st["counters"]["restored"] == 1
                entry = device_entry(st, DEVICE)
                assert entry is not None and GROUP in entry["groups"]  # affiliation kept over the restart
                # The device notices within a keep-alive or two and registers again, fresh keys.
                await ep.wait_until(lambda: dev.registered and dev.ssrc != first_ssrc, 20, "re-registration")
                await ep.wait_until(lambda: GROUP in dev.affiliated, 20, "re-affiliation")
                st = await asyncio.to_thread(http_status, status_port)
                entry = device_entry(st, DEVICE)
                assert entry is not None and entry["state"] == "registered" and GROUP in entry["groups"]
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 20) == 0

    arun(main())


def test_micropython_relay_serves_a_device(tmp_path: Path) -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    udp = free_udp_port()
    cfg = tmp_path / "relay.json"
    doc = config(udp, 0, "state")
    del doc["status"]
    cfg.write_text(json.dumps(doc))
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
    proc = subprocess.Popen(
        [str(MICROPYTHON), "-m", "opmob.relay_uasyncio", str(cfg), "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        lines = Lines(proc)
        lines.wait_for("opmob relay: registry import ")
        lines.wait_for(f"opmob relay relay-1@no: serving udp 127.0.0.1:{udp}")
        dev = DeviceSession(DEVICE, secret_of(DEVICE), ("127.0.0.1", udp), os.urandom, groups=[GROUP])

        async def main() -> None:
            async with Endpoint(dev) as ep:
                await register(dev, ep)

        arun(main())
        end = time.monotonic() + 20
        while True:
            st = json.loads(lines.wait_for("opmob relay status ")[len("opmob relay status ") :])
            entry = device_entry(st, DEVICE)
            if entry is not None and entry["state"] == "registered" or time.monotonic() > end:
                break
        assert entry is not None and entry["state"] == "registered" and GROUP in entry["groups"]
        assert st["driver"]["driver_errors"] == 0
        assert bytes.hex(secret_of(DEVICE)) not in "\n".join(lines.seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        lines.wait_for("opmob relay: stopped")
        assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
            "affiliation.json",
            "device.json",
            "group.json",
            "meta.json",
            "registration.json",
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
