"""The relay's drivers, with a fake core (``relay_fakecore.FakeCore``) on loopback.

CPython asyncio driver (``opmob_host.udp_driver``, under ``relay_server``): datagrams in and out,
timers at ``next_deadline``, a core that raises or returns garbage, the status endpoint, systemd
notifications and SIGTERM. MicroPython driver (``opmob.uasyncio_driver``, the relay's ``main`` in
``opmob.relay_uasyncio``): the same exchange run in a subprocess of the unix port, and of CPython
for comparison.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opmob.ticks import due, tadd
from opmob_host.relay_server import RelayServer, SdNotify, StatusServer
from opmob_host.udp_driver import ERR_LOG_MAX, CoreErrorLog, Endpoint, UdpDriver, _valid_peer
from relay_fakecore import SECRET_MARKER, FakeCore

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
HOST_TESTS = ROOT / "tests" / "host"
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"

T = TypeVar("T")


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


class Client:
    """A plain UDP socket: the far end the driver talks to, independent of the driver's code."""

    def __init__(self, server: tuple[Any, ...]) -> None:
        self.server = (server[0], server[1])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    async def recv(self, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), timeout)
        return data

    async def nothing(self, within: float) -> None:
        with pytest.raises(TimeoutError):
            got = await self.recv(within)
            raise AssertionError(f"unexpected datagram {got!r}")

    def close(self) -> None:
        self.sock.close()


async def with_driver(
    body: Callable[[UdpDriver, FakeCore, Client], Awaitable[None]], core: FakeCore | None = None, **kw: Any
) -> UdpDriver:
    core = FakeCore() if core is None else core
    drv = UdpDriver(core, **kw)
    addr = await drv.open("127.0.0.1", 0)
    cli = Client(addr)
    try:
        await body(drv, core, cli)
    finally:
        cli.close()
        drv.close()
    return drv


# --- the CPython datagram driver --------------------------------------------------------------------


def test_datagrams_in_and_out() -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"echo hello")
        assert await cli.recv() == b"hello"
        cli.send(b"fanout 5")
        assert [await cli.recv() for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
        cli.send(b"nothing-to-say")
        await cli.nothing(0.1)
        c = drv.counters
        assert (c["datagrams_in"], c["datagrams_out"]) == (3, 6)
        assert c["bytes_in"] == len(b"echo hello") + len(b"fanout 5") + len(b"nothing-to-say")
        assert c["bytes_out"] == len(b"hello") + 5
        assert c["driver_errors"] == 0 and core.seen == 3

    arun(with_driver(body))


def test_timer_fires_at_the_deadline_and_is_rearmed_earlier() -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"timer 3000")
        assert await cli.recv() == b"armed"
        assert drv.armed_deadline == core.deadline
        # An event that brings the deadline forward must re-arm the timer: the tick comes after
        # 150 ms, long before the 3 s first asked for, without any further datagram.
        t0 = time.monotonic()
        cli.send(b"timer 150")
        assert await cli.recv() == b"armed"
        tick = await cli.recv(2.5)
        elapsed = time.monotonic() - t0
        assert tick.startswith(b"tick ")
        assert elapsed >= 0.15, elapsed
        assert drv.counters["timer_polls"] >= 1
        assert drv.armed_deadline is None and core.deadline is None

    arun(with_driver(body))


def test_a_later_deadline_does_not_fire_early() -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"timer 50")
        assert await cli.recv() == b"armed"
        t0 = time.monotonic()
        cli.send(b"timer 400")
        assert await cli.recv() == b"armed"
        tick = await cli.recv(3.0)
        assert tick.startswith(b"tick ")
        # The timer armed for 50 ms woke, found nothing due, and waited for the new deadline.
        assert time.monotonic() - t0 >= 0.4
        assert core.polls >= 1

    arun(with_driver(body))


def test_core_exception_is_counted_logged_without_its_message_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"boom")
        cli.send(b"echo still-here")
        assert await cli.recv() == b"still-here"
        assert drv.counters["driver_errors"] == 1
        assert drv.is_open

    with caplog.at_level(logging.ERROR, logger="opmob.relay"):
        arun(with_driver(body))
    text = caplog.text
    assert "RuntimeError in on_datagram" in text
    assert "relay_fakecore.py" in text  # where it happened, for the bug report
    assert "127.0.0.1:" in text
    assert SECRET_MARKER not in text


def test_malformed_output_is_dropped_and_the_rest_sent() -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"badout")
        assert await cli.recv() == b"after-bad"
        assert drv.counters["driver_errors"] == 1
        assert drv.counters["datagrams_out"] == 1
        assert drv.is_open
        cli.send(b"echo ok")
        assert await cli.recv() == b"ok"

    arun(with_driver(body))


def test_a_deadline_stuck_in_the_past_does_not_spin() -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"stuck")
        assert await cli.recv() == b"stuck"
        await asyncio.sleep(0.3)
        cli.send(b"unstick")
        polls = int((await cli.recv()).split()[1])
        # Polled again and again (the core asks for it), but about once a millisecond, not in a
        # tight loop (which does hundreds of thousands in 0.3 s) that would starve the socket.
        assert 10 <= polls <= 1500, polls

    arun(with_driver(body))


def test_a_nan_deadline_is_an_error_not_a_timer() -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"nan")
        assert await cli.recv() == b"nan"
        assert drv.counters["driver_errors"] >= 1 and drv.armed_deadline is None
        assert drv.healthy()
        cli.send(b"unstick")
        assert (await cli.recv()).startswith(b"polls ")
        cli.send(b"timer 10")
        assert await cli.recv() == b"armed"
        assert (await cli.recv()).startswith(b"tick ")

    arun(with_driver(body))


def test_send_buffer_limit_drops_and_counts() -> None:
    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"fanout 3")
        await cli.nothing(0.2)
        assert drv.counters["send_dropped"] == 3
        assert drv.counters["datagrams_out"] == 0

    # A negative limit counts every send as over it: the drop path without filling a kernel buffer.
    arun(with_driver(body, max_send_buffer=-1))


def test_output_addresses_are_checked_before_sendto() -> None:
    assert _valid_peer(("127.0.0.1", 7700))
    assert _valid_peer(("::1", 7700, 0, 0))
    assert _valid_peer(("fe80::1%lo", 7700, 0, 1))
    assert not _valid_peer(("relay.example.org", 7700))  # would block the loop on DNS
    assert not _valid_peer(("127.0.0.1", 0))
    assert not _valid_peer(("127.0.0.1", 70000))
    assert not _valid_peer(("127.0.0.1", True))
    assert not _valid_peer(("127.0.0.1",))
    assert not _valid_peer(["127.0.0.1", 7700])
    assert not _valid_peer(("::1", 7700))  # an IPv6 host in a 2-tuple


def test_error_log_is_rate_limited() -> None:
    now = [100.0]
    logger = logging.getLogger("opmob.test.ratelimit")
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger.addHandler(Grab())
    logger.propagate = False
    errs = CoreErrorLog(logger, clock=lambda: now[0])
    for _ in range(ERR_LOG_MAX + 5):
        try:
            raise KeyError(SECRET_MARKER)
        except KeyError as e:
            errs.report("poll", e, None)
    assert len(records) == ERR_LOG_MAX
    now[0] += 61
    try:
        raise KeyError(SECRET_MARKER)
    except KeyError as e:
        errs.report("poll", e, ("10.0.0.1", 5))
    assert records[ERR_LOG_MAX] == "5 more core errors in the last 60 s were counted but not logged"
    assert "KeyError in poll (datagram from 10.0.0.1:5)" in records[-1]
    assert all(SECRET_MARKER not in r for r in records)


def test_endpoint_drives_a_client_core_with_its_own_timer() -> None:
    """Two drivers: an Endpoint (as a test client would be) talking to a relay-side driver."""

    class Pinger:
        def __init__(self, peer: tuple[Any, ...]) -> None:
            self.peer = peer
            self.got: list[bytes] = []
            self.deadline: int | None = None

        def start(self, now: int) -> list[tuple[Any, bytes]]:
            self.deadline = tadd(now, 50)
            return [(self.peer, b"echo first")]

        def on_datagram(self, now: int, addr: Any, data: bytes) -> list[tuple[Any, bytes]]:
            self.got.append(data)
            return []

        def poll(self, now: int) -> list[tuple[Any, bytes]]:
            if self.deadline is not None and due(now, self.deadline):
                self.deadline = None
                return [(self.peer, b"echo from-timer")]
            return []

        def next_deadline(self) -> int | None:
            return self.deadline

    async def main() -> None:
        relay = UdpDriver(FakeCore())
        addr = await relay.open("127.0.0.1", 0)
        pinger = Pinger((addr[0], addr[1]))
        try:
            async with Endpoint(pinger) as ep:
                assert ep.act(pinger.start)
                await ep.wait_until(lambda: len(pinger.got) == 2, 5, "two answers")
                assert pinger.got == [b"first", b"from-timer"]
                with pytest.raises(TimeoutError, match="never"):
                    await ep.wait_until(lambda: False, 0.05, "never")
            assert not ep.is_open
        finally:
            relay.close()

    arun(main())


# --- the status endpoint -------------------------------------------------------------------------------


async def http(addr: tuple[Any, ...], raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    r, w = await asyncio.open_connection(addr[0], addr[1])
    try:
        w.write(raw)
        await w.drain()
        data = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return code, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode()


async def with_relay(body: Callable[[RelayServer, Client], Awaitable[None]], core: Any = None) -> None:
    server = RelayServer(core or FakeCore(), listen=("127.0.0.1", 0), status=("127.0.0.1", 0))
    await server.start()
    assert server.listen_address is not None
    cli = Client(server.listen_address)
    try:
        await body(server, cli)
    finally:
        cli.close()
        await server.close()


def test_status_endpoint_serves_core_status_and_driver_counters() -> None:
    async def body(server: RelayServer, cli: Client) -> None:
        cli.send(b"echo x")
        await cli.recv()
        assert server.status_address is not None
        code, headers, raw = await http(server.status_address, get("/status"))
        assert code == 200
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        st = json.loads(raw)
        assert st["seen"] == 1
        drv = st["driver"]
        assert drv["datagrams_in"] == 1 and drv["datagrams_out"] == 1
        assert drv["driver_errors"] == 0 and drv["status_requests"] == 1
        assert drv["listen"] == f"127.0.0.1:{server.listen_address[1]}"
        code, _, raw = await http(server.status_address, get("/status?pretty=1"))
        assert code == 200 and json.loads(raw)["driver"]["status_requests"] == 2
        code, _, raw = await http(server.status_address, get("/healthz"))
        assert code == 200 and json.loads(raw) == {"ok": True}

    arun(with_relay(body))


def test_status_endpoint_refuses_what_it_does_not_serve() -> None:
    async def body(server: RelayServer, cli: Client) -> None:
        addr = server.status_address
        assert addr is not None
        code, _, raw = await http(addr, get("/registry"))
        assert code == 404 and "/status" in json.loads(raw)["error"]
        for method in ("POST", "PUT", "DELETE", "HEAD"):
            code, headers, _ = await http(
                addr, f"{method} /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode()
            )
            assert code == 405, method
            assert headers["allow"] == "GET"
        code, _, _ = await http(addr, b"GET /status\r\n\r\n")
        assert code == 400
        code, _, _ = await http(addr, b"GET /status SPDY/3\r\n\r\n")
        assert code == 400
        code, _, _ = await http(addr, b"\xff\xfe /status HTTP/1.1\r\n\r\n")
        assert code == 400
        big = b"GET /status HTTP/1.1\r\nX-Filler: " + b"a" * 20000 + b"\r\n\r\n"
        code, _, raw = await http(addr, big)
        assert code == 431 and b"8192" in raw
        st = server.status()["driver"]
        assert st["status_refused"] == 4 + 3 + 1 and st["status_requests"] == 1
        # The relay is unaffected.
        cli.send(b"echo fine")
        assert await cli.recv() == b"fine"

    arun(with_relay(body))


def test_status_endpoint_times_out_slow_clients_and_bounds_connections() -> None:
    async def main() -> None:
        srv = StatusServer(lambda: {"ok": 1}, lambda: True, timeout_s=0.2, max_clients=2)
        addr = await srv.open("127.0.0.1", 0)
        try:
            code, _, _ = await http(addr, b"GET /status HTTP/1.1\r\n")  # head never completes
            assert code == 408
            held = [await asyncio.open_connection(addr[0], addr[1]) for _ in range(2)]
            await asyncio.sleep(0.05)
            r, w = await asyncio.open_connection(addr[0], addr[1])
            assert await asyncio.wait_for(r.read(), 2) == b""  # closed at once: over the limit
            w.close()
            for _, hw in held:
                hw.close()
            await asyncio.sleep(0.3)
            code, _, raw = await http(addr, get("/status"))
            assert code == 200 and json.loads(raw) == {"ok": 1}
            assert srv.counters["status_refused"] >= 2
        finally:
            await srv.close()

    arun(main())


def test_a_status_that_cannot_be_rendered_is_a_500_without_content() -> None:
    class BadStatus(FakeCore):
        def status(self) -> dict[str, Any]:
            return {"key": bytes.fromhex("00112233")}  # not JSON-able: must not be leaked as str()

    async def body(server: RelayServer, cli: Client) -> None:
        assert server.status_address is not None
        code, _, raw = await http(server.status_address, get("/status"))
        assert code == 500
        assert b"00112233" not in raw and b"\\x00" not in raw
        assert json.loads(raw) == {"error": "status unavailable (TypeError)"}

    arun(with_relay(body, BadStatus()))


def test_healthz_is_503_when_the_socket_is_gone() -> None:
    async def body(server: RelayServer, cli: Client) -> None:
        assert server.status_address is not None
        server.driver.close()
        code, _, raw = await http(server.status_address, get("/healthz"))
        assert code == 503 and json.loads(raw) == {"ok": False}

    arun(with_relay(body))


def test_systemd_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.setblocking(False)
    notify = SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())})
    assert notify.enabled and notify.watchdog_s == 0.1
    assert (
        SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}).watchdog_s is None
    )
    assert not SdNotify({}).enabled

    async def main() -> list[str]:
        server = RelayServer(FakeCore(), listen=("127.0.0.1", 0), status=None, notify=notify)
        await server.start()
        await asyncio.sleep(0.25)
        await server.close()
        msgs = []
        while True:
            try:
                msgs.append(sink.recv(4096).decode())
            except BlockingIOError:
                return msgs

    try:
        msgs = arun(main())
    finally:
        sink.close()
    assert msgs[0].startswith("READY=1\nSTATUS=serving udp 127.0.0.1:")
    assert msgs.count("WATCHDOG=1") >= 2
    assert msgs[-1] == "STOPPING=1"


# --- the relay process: signals -------------------------------------------------------------------------

RUN_FAKE_RELAY = """
import sys
from opmob_host.relay_server import run_relay, format_addr
from relay_fakecore import FakeCore

def started(server):
    print("LISTEN", server.listen_address[1], "STATUS", server.status_address[1], flush=True)

try:
    rc = run_relay(FakeCore(), listen=("127.0.0.1", 0), status=("127.0.0.1", 0), on_started=started)
finally:
    print("STORE CLOSED", flush=True)
sys.exit(rc)
"""


class Lines:
    """Reads a subprocess's stdout on a thread, so a test can wait for a line with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        out = proc.stdout

        def pump() -> None:
            for line in out:
                self.q.put(line.rstrip("\n"))
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line starting {prefix!r} within {timeout} s; saw {self.seen}"
                ) from None
            if line is None:
                raise AssertionError(f"process ended before a line starting {prefix!r}; saw {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line


def udp_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        return s.recvfrom(4096)[0]


def test_sigterm_stops_the_relay_process_cleanly() -> None:
    env = dict(os.environ, PYTHONPATH=f"{HOST_TESTS}:{FIRMWARE}:{ROOT / 'host_tools'}")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_FAKE_RELAY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = Lines(proc)
        _, udp, _, http_port = lines.wait_for("LISTEN").split()
        assert udp_exchange(int(udp), b"echo alive") == b"alive"
        st = arun(http(("127.0.0.1", int(http_port)), get("/status")))
        assert st[0] == 200 and json.loads(st[2])["seen"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        lines.wait_for("STORE CLOSED")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the MicroPython driver, under both runtimes --------------------------------------------------------

RUN_UASYNCIO = """
import sys
from opmob import uasyncio_driver
import relay_fakecore

def ready(drv):
    print("READY")

uasyncio_driver.serve(relay_fakecore.FakeCore(), "127.0.0.1", int(sys.argv[1]), 0.2, ready)
print("STOPPED")
"""


def free_udp_port() -> int:
    # The unix port's sockets have no getsockname, so the test picks the port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_uasyncio_driver_exchanges_datagrams(runtime: str, tmp_path: Path) -> None:
    if runtime == "micropython":
        if not MICROPYTHON.exists():
            pytest.fail("MicroPython unix port not installed: run `make setup`")
        exe = str(MICROPYTHON)
    else:
        exe = sys.executable
    script = tmp_path / "run_uasyncio.py"
    script.write_text(RUN_UASYNCIO)
    env = dict(
        os.environ, MICROPYPATH=f"{FIRMWARE}:{HOST_TESTS}:.frozen", PYTHONPATH=f"{FIRMWARE}:{HOST_TESTS}"
    )
    port = free_udp_port()
    proc = subprocess.Popen(
        [exe, str(script), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        lines = Lines(proc)
        lines.wait_for("READY")
        assert udp_exchange(port, b"echo hello") == b"hello"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"fanout 4", ("127.0.0.1", port))
            assert [s.recvfrom(100)[0] for _ in range(4)] == [b"0", b"1", b"2", b"3"]
            # The timer: armed for 3 s, brought forward to 100 ms, fires with no further datagram.
            s.sendto(b"timer 3000", ("127.0.0.1", port))
            assert s.recvfrom(100)[0] == b"armed"
            t0 = time.monotonic()
            s.sendto(b"timer 100", ("127.0.0.1", port))
            assert s.recvfrom(100)[0] == b"armed"
            assert s.recvfrom(100)[0].startswith(b"tick ")
            # The core's clock is whole milliseconds (truncated), so 100 ms of ticks may be up
            # to 1 ms less of wall time: early by more than that would be a driver bug.
            assert 0.099 <= time.monotonic() - t0 < 2.5
            # A core exception is counted and survived; malformed output is dropped.
            s.sendto(b"boom", ("127.0.0.1", port))
            s.sendto(b"badout", ("127.0.0.1", port))
            assert s.recvfrom(100)[0] == b"after-bad"
            s.sendto(b"stuck", ("127.0.0.1", port))
            assert s.recvfrom(100)[0] == b"stuck"
            time.sleep(0.3)
            s.sendto(b"unstick", ("127.0.0.1", port))
            polls = int(s.recvfrom(100)[0].split()[1])
            assert 10 <= polls <= 1500, polls
        # The periodic console status carries the core's status and the driver's counters.
        for _ in range(50):  # a line every 0.2 s: up to 10 s for the counters to show
            st = json.loads(lines.wait_for("opmob relay status ")[len("opmob relay status ") :])
            if st["seen"] == 8:
                break
        assert st["seen"] == 8, st
        drv = st["driver"]
        assert drv["driver_errors"] == 2  # boom, and badout's malformed item
        assert drv["datagrams_in"] == 8
        assert drv["datagrams_out"] == 1 + 4 + 2 + 1 + 1 + 1 + 1
        assert drv["timer_polls"] >= 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        lines.wait_for("STOPPED")
        err = proc.stderr.read() if proc.stderr else ""
        assert "RuntimeError in on_datagram (datagram from 127.0.0.1:" in err
        assert SECRET_MARKER not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_uasyncio_driver_act_and_stop_in_process() -> None:
    """The MicroPython driver's API on CPython: act() sends and arms the timer, stop() ends run()."""
    from opmob import uasyncio_driver

    async def main() -> None:
        core = FakeCore()
        sock = uasyncio_driver.open_udp("127.0.0.1", 0)
        drv = uasyncio_driver.Driver(core, sock)
        cli = Client(sock.getsockname())
        runner = asyncio.create_task(drv.run())
        try:
            peer = cli.sock.getsockname()
            assert drv.act(lambda now: core.on_datagram(now, peer, b"timer 30"))
            assert await cli.recv() == b"armed"
            assert (await cli.recv()).startswith(b"tick ")
            assert not drv.act(lambda now: core.on_datagram(now, peer, b"boom"), "command")
            assert drv.counters["driver_errors"] == 1
            drv.stop()
            await asyncio.wait_for(runner, 5)
        finally:
            cli.close()
            sock.close()
            runner.cancel()

    arun(main())


# --- opmob relay check / run / status: what a technician sees --------------------------------------------

GOOD_CONFIG = """\
[relay]
identity = "relay-1@no"

[listen]
host = "127.0.0.1"
port = 0

[status]
port = 0

[registry]
path = "state/registry.sqlite"
"""


def opmob_main(*args: str) -> int:
    from opmob_host.cli import main

    return main(list(args))


def test_relay_check_accepts_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(GOOD_CONFIG)
    assert opmob_main("relay", "check", "--config", str(cfg)) == 0
    out = capsys.readouterr().out
    assert f"opmob relay: {cfg}: OK: relay relay-1@no: udp 127.0.0.1:0, status off" in out
    # Relative paths are taken from the configuration's directory, not from where it is started.
    assert f"registry {tmp_path / 'state' / 'registry.sqlite'}" in out
    # The sample, its import (/etc/opmob/registry.json) here a private copy of the example export.
    sample = (ROOT / "boards" / "rpi-relay" / "relay.toml").read_text()
    (tmp_path / "registry.json").write_bytes(
        (ROOT / "boards" / "rpi-relay" / "registry-example.json").read_bytes()
    )
    (tmp_path / "registry.json").chmod(0o600)
    (tmp_path / "sample.toml").write_text(
        sample.replace("/etc/opmob/registry.json", str(tmp_path / "registry.json"))
    )
    assert opmob_main("relay", "check", "--config", str(tmp_path / "sample.toml")) == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace('identity = "relay-1@no"\n', ""),
            "relay.identity: missing; this key is required",
        ),
        (lambda t: t.replace('identity = "relay-1@no"', 'identity = "Relay 1"'), "relay.identity: expected"),
        (
            lambda t: t.replace("port = 0\n", "port = 70000\n", 1),
            "listen.port: expected a port number 0..65535",
        ),
        (lambda t: t + "\n[floor]\nt22 = 5.0\n", "floor.t22: unknown key (did you mean 't2'?)"),
        (lambda t: t + "\n[floor]\nt1 = 4000\n", "floor.t1: expected a number of seconds"),
        (lambda t: t + "\n[timers]\nkeepalive = 60\nexpiry = 30\n", "timers.expiry: must be longer"),
        (lambda t: t.replace("[listen]", "[lsiten]"), "lsiten: unknown key (did you mean 'listen'?)"),
        (lambda t: t.replace('path = "state/registry.sqlite"', "path = 7"), "registry.path: expected a file"),
    ],
)
def test_relay_check_names_the_bad_key(
    edit: Callable[[str], str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(edit(GOOD_CONFIG))
    assert opmob_main("relay", "check", "--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opmob relay: {cfg}: {message}"), err


def test_relay_check_reports_unreadable_and_malformed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert opmob_main("relay", "check", "--config", str(missing)) == 2
    assert (
        f"opmob relay: {missing}: cannot read the configuration (No such file or directory)"
        in capsys.readouterr().err
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[relay]\nidentity = relay-1@no\n")
    assert opmob_main("relay", "check", "--config", str(bad)) == 2
    assert f"opmob relay: {bad}: not valid TOML: " in capsys.readouterr().err
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[relay]\n")
    assert opmob_main("relay", "check", "--config", str(binary)) == 2
    assert f"opmob relay: {binary}: not valid TOML" in capsys.readouterr().err


def test_relay_status_refuses_bad_urls_and_explains_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert opmob_main("relay", "status", "--url", "file:///etc/passwd") == 2
    assert "expected the status endpoint as http://HOST:PORT" in capsys.readouterr().err
    port = free_tcp_port()
    assert opmob_main("relay", "status", "--url", f"http://127.0.0.1:{port}", "--timeout", "2") == 1
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/status: cannot reach the relay" in err
    assert "Connection refused" in err


def test_relay_status_prints_the_status_json(capsys: pytest.CaptureFixture[str]) -> None:
    async def body(server: RelayServer, cli: Client) -> None:
        cli.send(b"echo x")
        await cli.recv()
        assert server.status_address is not None
        url = f"http://127.0.0.1:{server.status_address[1]}"
        rc = await asyncio.get_running_loop().run_in_executor(
            None, opmob_main, "relay", "status", "--url", url
        )
        assert rc == 0

    arun(with_relay(body))
    out = capsys.readouterr().out
    st = json.loads(out)
    assert st["seen"] == 1 and st["driver"]["datagrams_in"] == 1
    assert out.startswith('{\n  "driver": {')  # pretty: indented, keys sorted


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def opmob_proc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_relay_run_refuses_a_bad_config_before_touching_anything(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(GOOD_CONFIG.replace("port = 0\n", "port = -1\n", 1))
    proc = opmob_proc("relay", "run", "--config", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"opmob relay: {cfg}: listen.port: expected a port number"), proc.stderr
    assert not (tmp_path / "state").exists()


def test_relay_run_refuses_a_bad_import_and_imports_nothing(tmp_path: Path) -> None:
    example = json.loads((ROOT / "boards" / "rpi-relay" / "registry-example.json").read_text())
    example["devices"][1]["ceiling"] = 300  # the second device: the first one must not land either
    bad = tmp_path / "export.json"
    bad.write_text(json.dumps(example))
    bad.chmod(0o600)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(GOOD_CONFIG)
    proc = opmob_proc("relay", "run", "--config", str(cfg), "--registry-import", str(bad))
    assert proc.returncode == 2, proc.stderr
    name = example["devices"][1]["identity"]
    assert f"opmob relay: {bad}: device '{name}', field 'ceiling'" in proc.stderr
    assert "nothing was imported" in proc.stderr
    for dev in example["devices"]:
        assert dev["secret"] not in proc.stderr + proc.stdout
    from opmob_host.sqlite_store import SqliteStore

    db = tmp_path / "state" / "registry.sqlite"
    assert (db.stat().st_mode & 0o777) == 0o600
    store = SqliteStore(db)
    try:
        assert store.items("device") == [] and store.items("group") == []
    finally:
        store.close()
    notjson = tmp_path / "export.txt"
    notjson.write_text("devices: none")
    proc = opmob_proc("relay", "run", "--config", str(cfg), "--registry-import", str(notjson))
    assert proc.returncode == 2
    assert f"opmob relay: {notjson}: the registry export is not valid JSON" in proc.stderr


def test_relay_run_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        cfg = tmp_path / "relay.toml"
        cfg.write_text(GOOD_CONFIG.replace("port = 0\n", f"port = {port}\n", 1))
        proc = opmob_proc("relay", "run", "--config", str(cfg))
    assert proc.returncode == 1
    assert f"opmob relay: cannot listen on udp 127.0.0.1:{port}: Address already in use" in proc.stderr
    assert f"change [listen] port in {cfg}" in proc.stderr


# --- the systemd unit ---------------------------------------------------------------------------------------

UNIT = ROOT / "boards" / "rpi-relay" / "opmob-relay.service"


def test_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in (
        "ExecStart=/opt/opmob/.venv/bin/opmob relay run --config /etc/opmob/relay.toml",
        "Type=notify",  # the relay sends READY=1 and the watchdog pings (test_systemd_ready_...)
        "WatchdogSec=10s",
        "User=opmob",
        "StateDirectory=opmob",
        "UMask=0077",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
    ):
        assert f"\n{line}\n" in text, line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify wants ExecStart to exist: point it at this checkout's opmob.
    local = tmp_path / "opmob-relay.service"
    local.write_text(text.replace("/opt/opmob/.venv/bin/opmob", str(ROOT / ".venv" / "bin" / "opmob")))
    proc = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for opmob-relay.service: (\d+\.\d+)", proc.stdout)
    assert m is not None, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, proc.stdout


def test_drivers_stand_apart_from_the_servers_around_them() -> None:
    """The datagram drivers import no server part: the admin channel builds on the CPython driver
    without the relay process, and the generic MicroPython driver without the relay's main()."""
    code = (
        "import sys\n"
        "import opmob_host.relay_admin, opmob_host.udp_driver, opmob.uasyncio_driver\n"
        "print(sorted(m for m in ('opmob_host.relay_server', 'opmob.relay_uasyncio', 'opmob.relay',"
        " 'opmob.registry') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{FIRMWARE}:{ROOT / 'host_tools'}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    from opmob import relay_uasyncio, uasyncio_driver

    assert relay_uasyncio.Driver is uasyncio_driver.Driver  # the accessory's import still works


def test_driver_drains_the_core_events_after_each_call() -> None:
    class EventCore(FakeCore):
        def __init__(self) -> None:
            super().__init__()
            self.pending: list[tuple[str, int]] = []

        def on_datagram(self, now: int, addr: Any, data: bytes) -> Any:
            self.pending.append(("seen", len(data)))
            return super().on_datagram(now, addr, data)

        def events(self) -> Any:
            e, self.pending = self.pending, []
            return e or ()

    got: list[Any] = []

    async def main() -> None:
        core = EventCore()
        drv = UdpDriver(core, on_events=got.extend)
        addr = await drv.open("127.0.0.1", 0)
        cli = Client(addr)
        try:
            cli.send(b"echo hi")
            assert await cli.recv() == b"hi"
            cli.send(b"nothing")
            await cli.nothing(0.1)
        finally:
            cli.close()
            drv.close()
        assert core.pending == []

    arun(main())
    assert got == [("seen", 7), ("seen", 7)]


def test_a_core_whose_events_are_a_list_is_left_alone() -> None:
    """A DeviceSession's ``events`` is a list its app drains: the driver neither calls nor empties it."""

    class ListCore(FakeCore):
        def __init__(self) -> None:
            super().__init__()
            self.events = [("registered", 1)]

    async def body(drv: UdpDriver, core: FakeCore, cli: Client) -> None:
        cli.send(b"echo hi")
        assert await cli.recv() == b"hi"

    core = ListCore()
    drv = arun(with_driver(body, core=core))
    assert drv.counters["driver_errors"] == 0
    assert core.events == [("registered", 1)]
