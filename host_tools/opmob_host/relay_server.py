"""The CPython relay process: a relay core on its UDP port (``udp_driver.UdpDriver``) with the
read-only HTTP/JSON status endpoint, signal handling and the systemd notifications (``RelayServer``,
``run_relay``). The datagram driver itself, and ``Endpoint`` for test clients, live in
udp_driver.py; their names are importable from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from opmob_host.udp_driver import (  # noqa: F401  (re-exported: the driver's names, as before the split)
    DRIVER_COUNTERS,
    ERR_LOG_MAX,
    ERR_LOG_WINDOW_S,
    MAX_SEND_BUFFER,
    SPIN_GUARD_S,
    TIMER_OVERDUE_S,
    Addr,
    CoreErrorLog,
    Endpoint,
    Outgoing,
    SansIO,
    UdpDriver,
    _valid_peer,
    format_addr,
)

if TYPE_CHECKING:
    from opmob_host.relay_admin import AdminServer

log = logging.getLogger("opmob.relay")

STATUS_COUNTERS = ("status_requests", "status_refused")

# --- the status endpoint ------------------------------------------------------------------------------
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_STATUS_CLIENTS = 16

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def http_response(code: int, body: dict[str, Any], extra_headers: str = "") -> bytes:
    payload = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        f"{extra_headers}\r\n"
    )
    return head.encode() + payload


class StatusServer:
    """Read-only HTTP/1.1 on asyncio streams: ``GET /status`` and ``GET /healthz``, nothing else.

    One request per connection; the request head is bounded (``max_head`` bytes, else 431) and must
    arrive within ``timeout_s`` (else 408); at most ``max_clients`` connections are served at once
    (more are closed at once and counted), so a stuck or hostile client cannot hold the relay.
    """

    def __init__(
        self,
        render_status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool],
        *,
        max_head: int = MAX_REQUEST_HEAD,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_clients: int = MAX_STATUS_CLIENTS,
        logger: logging.Logger = log,
    ) -> None:
        self.render_status = render_status
        self.healthy = healthy
        self.max_head = max_head
        self.timeout_s = timeout_s
        self.max_clients = max_clients
        self.logger = logger
        self.counters: dict[str, int] = dict.fromkeys(STATUS_COUNTERS, 0)
        self._server: asyncio.Server | None = None
        self._active = 0

    async def open(self, host: str, port: int) -> Addr:
        self._server = await asyncio.start_server(self._handle, host, port, limit=self.max_head)
        addr: Addr = self._server.sockets[0].getsockname()
        return addr

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), self.timeout_s)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self.max_clients:
            self.counters["status_refused"] += 1
            writer.close()
            return
        self._active += 1
        try:
            resp = await self._respond(reader)
            if resp is not None:
                writer.write(resp)
                await asyncio.wait_for(writer.drain(), self.timeout_s)
        except (ConnectionError, TimeoutError):
            self.counters["status_refused"] += 1
        finally:
            self._active -= 1
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout_s)
        except asyncio.LimitOverrunError:
            self.counters["status_refused"] += 1
            return http_response(431, {"error": f"request head larger than {self.max_head} bytes"})
        except TimeoutError:
            self.counters["status_refused"] += 1
            return http_response(408, {"error": f"request not complete within {self.timeout_s} s"})
        except asyncio.IncompleteReadError:
            self.counters["status_refused"] += 1
            return None
        try:
            method, target, version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            self.counters["status_refused"] += 1
            return http_response(400, {"error": "malformed request line"})
        if not version.startswith("HTTP/1."):
            self.counters["status_refused"] += 1
            return http_response(400, {"error": "HTTP/1.x only"})
        if method != "GET":
            self.counters["status_refused"] += 1
            return http_response(405, {"error": "read-only endpoint: GET only"}, "Allow: GET\r\n")
        path = target.split("?", 1)[0]
        self.counters["status_requests"] += 1
        if path == "/status":
            try:
                body = self.render_status()
                return http_response(200, body)
            except Exception as e:
                # A status that cannot be rendered is a bug; say so without its content.
                self.logger.error("status could not be rendered (%s)", type(e).__name__)
                return http_response(500, {"error": f"status unavailable ({type(e).__name__})"})
        if path == "/healthz":
            ok = self.healthy()
            return http_response(200 if ok else 503, {"ok": ok})
        return http_response(404, {"error": "not found; try /status or /healthz"})


# --- systemd ---------------------------------------------------------------------------------------------
class SdNotify:
    """sd_notify(3) without libsystemd: READY/STOPPING/STATUS and the watchdog keep-alive."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        if path.startswith("@"):
            self._addr = "\0" + path[1:]
        elif path.startswith("/"):
            self._addr = path
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def send(self, msg: str) -> bool:
        if self._addr is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(msg.encode(), self._addr)
        except OSError:
            return False
        return True


# --- the relay process ---------------------------------------------------------------------------------
class StatusCore(SansIO, Protocol):
    def status(self) -> dict[str, Any]: ...


RECENT_EVENTS = 32  # events the status document carries, newest last


class RelayServer:
    """A relay core on its UDP port, with the status endpoint and systemd notifications."""

    def __init__(
        self,
        core: StatusCore,
        *,
        listen: tuple[str, int],
        status: tuple[str, int] | None,
        logger: logging.Logger = log,
        notify: SdNotify | None = None,
        admin: str | None = None,
        accel: str | None = None,
    ) -> None:
        self.core = core
        self.accel = accel  # the SRTP backend the core runs on ("c" or "pure"), shown in /status
        self.listen = listen
        self.status_bind = status
        self.admin_path = admin
        self.logger = logger
        # The core's typed events (relay_events.py), newest last with the wall time they were
        # drained at: /status carries them, so `opmob monitor` shows what happened, not only state.
        self.recent: deque[tuple[float, tuple[Any, ...]]] = deque(maxlen=RECENT_EVENTS)
        self.driver = UdpDriver(core, logger=logger, on_events=self._on_events)
        self.http: StatusServer | None = None
        self.admin: AdminServer | None = None
        self.notify = notify if notify is not None else SdNotify()
        self.listen_address: Addr | None = None
        self.status_address: Addr | None = None
        self._watchdog: asyncio.Task[None] | None = None

    def _on_events(self, events: Any) -> None:
        t = time.time()
        for e in events:
            self.recent.append((t, tuple(e)))

    def status(self) -> dict[str, Any]:
        st = dict(self.core.status())
        st["events"] = [{"t": round(t, 3), "event": list(e)} for t, e in self.recent]
        drv = self.driver.driver_status()
        if self.http is not None:
            drv.update(self.http.counters)
        if self.admin is not None:
            drv.update(self.admin.counters)
        if self.accel is not None:
            drv["accel"] = self.accel
        st["driver"] = drv
        return st

    async def start(self) -> None:
        """Bind the sockets; an OSError here names the address that could not be bound, an
        AdminSocketError the admin socket's problem."""
        try:
            self.listen_address = await self.driver.open(*self.listen)
        except OSError as e:
            raise BindError("udp", self.listen, e) from e
        if self.status_bind is not None:
            self.http = StatusServer(self.status, self.driver.healthy, logger=self.logger)
            try:
                self.status_address = await self.http.open(*self.status_bind)
            except OSError as e:
                self.driver.close()
                raise BindError("status http", self.status_bind, e) from e
        if self.admin_path is not None:
            from opmob_host.relay_admin import AdminServer, AdminSocketError

            # The core must offer device_control and cancel_emergency (opmob.relay.Relay does).
            self.admin = AdminServer(self.driver, cast(Any, self.core), self.admin_path, logger=self.logger)
            try:
                await self.admin.open()
            except AdminSocketError:
                self.admin = None
                self.driver.close()
                if self.http is not None:
                    await self.http.close()
                raise
        if self.notify.watchdog_s:
            self._watchdog = asyncio.create_task(self._watchdog_loop(self.notify.watchdog_s))
        self.notify.send(f"READY=1\nSTATUS=serving udp {format_addr(self.listen_address)}")

    async def _watchdog_loop(self, period_s: float) -> None:
        # Runs on the same loop as the core: a core stuck in a loop stops these pings and systemd
        # restarts the relay. A deaf socket stops them too.
        while True:
            if self.driver.healthy():
                self.notify.send("WATCHDOG=1")
            await asyncio.sleep(period_s / 2)

    async def serve(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set (0) or the UDP socket dies (1)."""
        assert self.driver.lost is not None
        stopper = asyncio.create_task(stop.wait())
        waitables: set[asyncio.Future[Any]] = {stopper, self.driver.lost}
        try:
            await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        lost = self.driver.lost.done() and self.driver.lost.result() is not None
        return 1 if lost else 0

    async def close(self) -> None:
        self.notify.send("STOPPING=1")
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.admin is not None:
            await self.admin.close()  # first: no operator action is taken while stopping
        self.driver.close()
        if self.http is not None:
            await self.http.close()


class BindError(OSError):
    def __init__(self, what: str, addr: tuple[str, int], err: OSError) -> None:
        self.what = what
        self.addr = addr
        self.err = err
        super().__init__(f"cannot listen on {what} {format_addr(addr)}: {err.strerror or err}")


def run_relay(
    core: StatusCore,
    *,
    listen: tuple[str, int],
    status: tuple[str, int] | None,
    on_started: Callable[[RelayServer], None] | None = None,
    logger: logging.Logger = log,
    admin: str | None = None,
    accel: str | None = None,
) -> int:
    """Run the relay until SIGTERM or SIGINT (returns 0) or until its socket dies (returns 1).

    ``admin``: the path of the operator's admin socket (relay_admin), None for none; ``accel``: the
    SRTP backend's name for the status (``driver.accel``). Raises
    BindError when a port cannot be bound, AdminSocketError when the admin socket cannot be set up.
    The caller closes the store afterwards, so it is closed whichever way this returns.
    """

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = RelayServer(core, listen=listen, status=status, logger=logger, admin=admin, accel=accel)
        await server.start()
        try:
            if on_started is not None:
                on_started(server)
            rc = await server.serve(stop)
        finally:
            await server.close()
        logger.info("relay stopped")
        return rc

    return asyncio.run(main())
