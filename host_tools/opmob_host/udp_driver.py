"""CPython asyncio driver for OpMob's sans-I/O cores, on one UDP socket: the relay's (wrapped by
``relay_server.RelayServer``) and test clients' (``Endpoint``).

A core is any object with ``on_datagram(now, addr, data)`` and ``poll(now)`` (each returning a list
of ``(addr, bytes)`` to send) and ``next_deadline()`` (an int on the cores' clock, or None). The
cores' clock is integer milliseconds modulo 2^30 (``opmob.ticks.now_ms``), compared wrap-safely.
``UdpDriver`` feeds one core from one UDP socket; ``Endpoint`` is a driver on an ephemeral loopback
port for tests and the demo (a device session with its own socket and timer).

This module depends on no server part: the admin channel (relay_admin.py) and the relay process
(relay_server.py) both build on it, neither on the other.

Rules the driver keeps whatever the core does:
- an exception from the core drops that one input, is counted (``driver_errors``) and logged with
  its type and code location only (exception messages may quote packet bytes or keys), at most
  ``ERR_LOG_MAX`` lines a minute so a hostile sender cannot flood the journal;
- the core's output is checked before it reaches the socket: asyncio closes a datagram transport
  for good on a malformed address, and a host name would block the loop on DNS;
- at most ``max_send_buffer`` bytes wait in user space when the kernel's buffer is full (asyncio's
  own queue has no limit); beyond that datagrams are dropped and counted (``send_dropped``);
- the timer is re-armed after every event, and never spins: a core that keeps returning a deadline
  in the past is polled at most once a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from opmob.ticks import MASK, due, now_ms, tdiff

from opmob_host.latency import LatencyHistogram

log = logging.getLogger("opmob.relay")

Addr = tuple[Any, ...]
Outgoing = Iterable[tuple[Addr, bytes]] | None

DRIVER_COUNTERS = (
    "datagrams_in",
    "bytes_in",
    "datagrams_out",
    "bytes_out",
    "driver_errors",
    "send_errors",
    "send_dropped",
    "socket_errors",
    "timer_polls",
)

ERR_LOG_WINDOW_S = 60.0
ERR_LOG_MAX = 10
MAX_SEND_BUFFER = 1 << 20
SPIN_GUARD_S = 0.001
# /healthz turns 503 when a timer is this far overdue: the event loop is stuck or the timer lost.
TIMER_OVERDUE_S = 5.0
TIMER_OVERDUE_MS = int(TIMER_OVERDUE_S * 1000)


class SansIO(Protocol):
    def on_datagram(self, now: int, addr: Addr, data: bytes) -> Outgoing: ...

    def poll(self, now: int) -> Outgoing: ...

    def next_deadline(self) -> int | None: ...


class CoreErrorLog:
    """Logs exceptions raised by a core without their messages, rate-limited per window."""

    def __init__(
        self,
        logger: logging.Logger = log,
        *,
        window_s: float = ERR_LOG_WINDOW_S,
        max_lines: int = ERR_LOG_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.window_s = window_s
        self.max_lines = max_lines
        self.clock = clock
        self._window_start: float | None = None
        self._logged = 0
        self._suppressed = 0

    def report(self, what: str, exc: BaseException, addr: Addr | None) -> None:
        now = self.clock()
        if self._window_start is None or now - self._window_start >= self.window_s:
            if self._suppressed:
                self.logger.error(
                    "%d more core errors in the last %.0f s were counted but not logged",
                    self._suppressed,
                    self.window_s,
                )
            self._window_start = now
            self._logged = 0
            self._suppressed = 0
        if self._logged >= self.max_lines:
            self._suppressed += 1
            return
        self._logged += 1
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " <- ".join(
            f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in reversed(frames)
        )
        peer = f" (datagram from {format_addr(addr)})" if addr is not None else ""
        self.logger.error(
            "core raised %s in %s%s at %s; input dropped, relay carries on (a bug: please report it)",
            type(exc).__name__,
            what,
            peer,
            where or "?",
        )


def format_addr(addr: Addr | None) -> str:
    if not addr:
        return "?"
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def _valid_peer(addr: Any) -> bool:
    """A numeric (host, port) as a UDP socket gives them; anything else would break or block sendto."""
    if not isinstance(addr, tuple) or len(addr) not in (2, 4):
        return False
    host, port = addr[0], addr[1]
    if not isinstance(host, str) or type(port) is not int or not 0 < port < 65536:
        return False
    try:
        if len(addr) == 2:
            socket.inet_pton(socket.AF_INET, host)
        else:
            socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return False
    return True


def _is_rtp(data: bytes | bytearray | memoryview) -> bool:
    """RTP (voice), as the relay core demultiplexes: version 2, not an RTCP packet type."""
    return len(data) > 1 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223


def _buffered(tr: asyncio.DatagramTransport) -> int:
    # The selector transport has it; typeshed's DatagramTransport does not declare it.
    size: int = getattr(tr, "get_write_buffer_size", lambda: 0)()
    return size


class UdpDriver(asyncio.DatagramProtocol):
    """Feeds one sans-I/O core from one UDP socket and keeps its timer."""

    def __init__(
        self,
        core: SansIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        ticks: Callable[[], int] = now_ms,
        logger: logging.Logger = log,
        max_send_buffer: int = MAX_SEND_BUFFER,
        on_events: Callable[[Any], None] | None = None,
    ) -> None:
        """``clock``: seconds, for uptime and the error log's window; ``ticks``: the cores' clock
        (int ms modulo 2^30). ``on_events(events)``: what a core with ``events()`` (the relay:
        relay_events.py) reported, handed over after each call into it; without it the events are
        drained and dropped."""
        self.core = core
        self.clock = clock
        self.ticks = ticks
        self.logger = logger
        self.max_send_buffer = max_send_buffer
        self.on_events = on_events
        ev = getattr(core, "events", None)
        # The relay's events() drains its log; a DeviceSession's ``events`` is a list the app
        # drains itself: not ours to touch.
        self._core_events = ev if callable(ev) else None
        self.counters: dict[str, int] = dict.fromkeys(DRIVER_COUNTERS, 0)
        self.errors = CoreErrorLog(logger, clock=clock)
        # Voice in -> each copy out, at this driver (latency.py); in the status as voice_latency_us.
        self.voice_latency = LatencyHistogram()
        self.started = clock()
        self.lost: asyncio.Future[Exception | None] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed: int | None = None
        self._closing = False
        self._waiters: list[asyncio.Future[None]] = []

    # --- lifetime ---------------------------------------------------------------------------------
    async def open(self, host: str, port: int) -> Addr:
        """Bind ``host:port`` (port 0: any free port) and start; returns the bound address."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.lost = loop.create_future()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._rearm()
        return self.local_address

    @property
    def local_address(self) -> Addr:
        if self._transport is None:
            raise RuntimeError("driver is not open")
        addr: Addr = self._transport.get_extra_info("sockname")
        return addr

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # 3.11's selector transport does not subclass DatagramTransport, though it is one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closing:
            self.logger.error(
                "the UDP socket closed unexpectedly (%s)", type(exc).__name__ if exc else "no error"
            )
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None if self._closing else exc or ConnectionError("UDP socket closed"))
        self._notify()

    # --- events -----------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Addr) -> None:
        c = self.counters
        c["datagrams_in"] += 1
        c["bytes_in"] += len(data)
        t0 = time.perf_counter_ns() if _is_rtp(data) else 0
        try:
            out = self.core.on_datagram(self.ticks(), addr, data)
        except Exception as e:
            c["driver_errors"] += 1
            self.errors.report("on_datagram", e, addr)
        else:
            self.send(out, t0)
        self._drain_events()
        self._rearm()
        self._notify()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors and failed sends: UDP promises nothing, the protocol retransmits what matters.
        self.counters["socket_errors"] += 1

    def act(self, fn: Callable[[int], Outgoing], what: str = "act") -> bool:
        """Run ``fn(now)`` (any core entry point), send what it returns, re-arm the timer.

        Returns False when the core raised (counted and logged like a datagram's error).
        """
        ok = True
        try:
            out = fn(self.ticks())
        except Exception as e:
            self.counters["driver_errors"] += 1
            self.errors.report(what, e, None)
            ok = False
        else:
            self.send(out)
        self._drain_events()
        self._rearm()
        self._notify()
        return ok

    def send(self, out: Outgoing, voice_in_ns: int = 0) -> None:
        """Send the core's output. ``voice_in_ns``: when the voice datagram it answers was read
        (perf_counter_ns), so each voice copy sent records its latency; 0 for anything else."""
        if not out:
            return
        c = self.counters
        tr = self._transport
        try:
            items = list(out)
        except Exception as e:
            c["driver_errors"] += 1
            self.errors.report("output", e, None)
            return
        for item in items:
            if not (
                isinstance(item, tuple | list)
                and len(item) == 2
                and isinstance(item[1], bytes | bytearray | memoryview)
                and _valid_peer(item[0])
            ):
                c["driver_errors"] += 1
                self.errors.report("output", TypeError("malformed (addr, bytes) item"), None)
                continue
            addr, data = item
            if tr is None or tr.is_closing():
                c["send_dropped"] += 1
                continue
            if _buffered(tr) > self.max_send_buffer:
                c["send_dropped"] += 1
                continue
            try:
                tr.sendto(data, addr)
            except (OSError, ValueError, TypeError):
                c["send_errors"] += 1
                continue
            c["datagrams_out"] += 1
            c["bytes_out"] += len(data)
            if voice_in_ns and _is_rtp(data):
                self.voice_latency.add_ns(time.perf_counter_ns() - voice_in_ns)

    def _drain_events(self) -> None:
        fn = self._core_events
        if fn is None:
            return
        try:
            evs = fn()
            if evs and self.on_events is not None:
                self.on_events(evs)
        except Exception as e:
            self.counters["driver_errors"] += 1
            self.errors.report("events", e, None)

    # --- timer ------------------------------------------------------------------------------------
    def _next_deadline(self) -> int | None:
        try:
            d = self.core.next_deadline()
        except Exception as e:
            self.counters["driver_errors"] += 1
            self.errors.report("next_deadline", e, None)
            return None
        if d is None:
            return None
        if type(d) is not int or not 0 <= d <= MASK:
            self.counters["driver_errors"] += 1
            self.errors.report(
                "next_deadline", ValueError("deadline is not a tick (int ms modulo 2^30)"), None
            )
            return None
        return d

    def _rearm(self) -> None:
        if self._loop is None or self._closing:
            return
        d = self._next_deadline()
        if self._timer is not None:
            if d == self._armed:
                return
            self._timer.cancel()
            self._timer = None
        self._armed = d
        if d is not None:
            self._timer = self._loop.call_later(max(0, tdiff(d, self.ticks())) / 1000, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.ticks()
        self.counters["timer_polls"] += 1
        try:
            out = self.core.poll(now)
        except Exception as e:
            self.counters["driver_errors"] += 1
            self.errors.report("poll", e, None)
        else:
            self.send(out)
        self._drain_events()
        d = self._next_deadline()
        if d is not None and due(now, d) and self._loop is not None and not self._closing:
            self._armed = d
            self._timer = self._loop.call_later(SPIN_GUARD_S, self._fire)
        else:
            self._rearm()
        self._notify()

    @property
    def armed_deadline(self) -> int | None:
        """The deadline the timer is set for (None: no timer)."""
        return self._armed if self._timer is not None else None

    def healthy(self) -> bool:
        if not self.is_open:
            return False
        armed = self.armed_deadline
        return armed is None or tdiff(self.ticks(), armed) < TIMER_OVERDUE_MS

    # --- waiting (tests, the demo) ------------------------------------------------------------------
    def _notify(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for f in waiters:
                if not f.done():
                    f.set_result(None)

    async def wait_until(self, pred: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        """Wait until ``pred()`` holds, checked after every event this driver handles."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred():
            left = end - loop.time()
            if left <= 0:
                raise TimeoutError(f"{what} not reached within {timeout} s")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, left)

    def driver_status(self) -> dict[str, Any]:
        st: dict[str, Any] = dict(self.counters)
        st["uptime_s"] = round(self.clock() - self.started, 3)
        st["voice_latency_us"] = self.voice_latency.summary()
        if self._transport is not None:
            st["listen"] = format_addr(self.local_address)
        return st


class Endpoint(UdpDriver):
    """A sans-I/O client (e.g. a DeviceSession) on its own loopback UDP socket, with its own timer.

    ``async with Endpoint(session) as ep:`` binds an ephemeral port; ``ep.act(session.start)`` or
    ``ep.act(lambda now: session.send_floor(now, msg))`` drives it; ``await ep.wait_until(...)``
    waits for what it should have received.
    """

    def __init__(self, core: SansIO, *, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        super().__init__(core, **kw)
        self._bind = (host, port)

    async def __aenter__(self) -> Endpoint:
        await self.open(*self._bind)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
