"""MicroPython asyncio driver: runs a sans-I/O core (the relay, a DeviceSession, an accessory's
core, or any object with the same shape) on one UDP socket. Also runs on CPython, which the tests
use to compare both runtimes. The MicroPython relay's ``main()`` (configuration, registry, store)
is relay_uasyncio.py; this module knows nothing of the relay.

The core is any object with ``on_datagram(now, addr, data)``, ``poll(now)`` (each returning a list
of ``(addr, bytes)`` to send) and ``next_deadline()`` (an int or None); ``status()`` is optional
and feeds the console status line. Time is integer milliseconds modulo 2^30 (``ticks.now_ms()``),
deadlines such ints, compared wrap-safely; addresses reach the core as ``(host, port)`` tuples on
every runtime (``compat.addr_from_recv``).

Waiting for datagrams: the receive task parks in asyncio's own poller (``compat.wait_readable``)
instead of ``setblocking(False)`` plus short sleeps. With the poller a datagram wakes the task as
soon as the kernel has it, and an idle relay sleeps in ``poll()`` until a datagram or the next
timer; a sleep loop adds up to its period to every packet (the relay's goal for added voice latency
is 2 ms, below the 10 ms tick of a typical sleep loop) and wakes the CPU hundreds of times a
second for nothing, which costs battery on a board.

Timers: one task sleeps until ``next_deadline()`` and calls ``poll``. After every batch of
datagrams the driver re-arms it: if the core now wants an earlier wake-up the sleeping task is
cancelled and started again, so a deadline is never missed by more than the scheduler's
millisecond. A later or vanished deadline needs nothing: the task wakes, finds nothing due and
sleeps again (or ends).

Bad behaviour of the core never stops the driver: an exception from the core is logged (type and
where only: messages can carry packet contents), counted in ``driver_errors`` and the datagram is
dropped. There is no HTTP server on MicroPython; ``run(status_every=...)`` prints the status as
one JSON line on the console instead.
"""

import asyncio
import errno
import gc
import json
import socket
import sys

from opmob import compat
from opmob.ticks import MASK, due, now_ms, tdiff

RECV_MAX = 2048  # above the 1200-byte signalling limit and any SRTP voice packet
RX_BATCH = 32  # datagrams handled per wake-up before timers and status get a turn
ERR_LOG_WINDOW_S = 60
ERR_LOG_WINDOW_MS = ERR_LOG_WINDOW_S * 1000
ERR_LOG_MAX = 10  # error lines per window; the rest are counted and summarised
MAX_SLEEP_MS = 60000  # the timer task wakes at least this often and looks again

COUNTERS = (
    "datagrams_in",
    "bytes_in",
    "datagrams_out",
    "bytes_out",
    "driver_errors",
    "recv_errors",
    "send_errors",
    "timer_polls",
)


def _log_stderr(line):
    print(line, file=sys.stderr)


def open_udp(host, port):
    """A non-blocking UDP socket bound to ``host:port`` (numeric host, or a name the resolver knows)."""
    family, _type, proto, _canon, sockaddr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Driver:
    """Feeds one core from one UDP socket; ``run()`` until ``stop()``."""

    def __init__(self, core, sock, clock=None, log=None, on_events=None):
        self.core = core
        # A core with events() (the relay: relay_events.py) has them drained after each call;
        # on_events(events) gets them, else they are dropped.
        self.on_events = on_events
        ev = getattr(core, "events", None)
        # The relay's events() drains its log; a DeviceSession's ``events`` is a list the app
        # drains itself: not ours to touch.
        self._core_events = ev if callable(ev) else None
        self.sock = sock
        self.clock = clock or now_ms  # the cores' clock: int ms modulo 2^30
        self.log = log or _log_stderr
        self.counters = {}
        for k in COUNTERS:
            self.counters[k] = 0
        self.started = compat.monotonic()  # uptime in seconds: longer than the ms clock's period
        self._stop = asyncio.Event()
        self._timer_task = None
        self._armed = None  # the deadline the timer task sleeps towards
        self._err_window = None
        self._err_logged = 0
        self._err_suppressed = 0
        # MicroPython: whether another datagram waits is asked of a poll object of our own, in
        # which the socket stays registered. ipoll(0) allocates nothing, where a recvfrom that
        # finds the socket empty raises OSError(EAGAIN): 1.6 KB of exception and traceback on
        # the unix port, at every wake-up, which the collector then has to sweep (the accessory
        # wakes 50 times a second in a call).
        self._ready = None
        if compat.IS_MICROPYTHON:
            import select

            self._ready = select.poll()
            self._ready.register(sock, select.POLLIN)

    # --- talking to the core --------------------------------------------------------------------
    def act(self, fn, what="act"):
        """Run ``fn(now)`` (a core entry point), send what it returns and re-arm the timer.

        Call it from a running task. Returns False when the core raised (counted and logged).
        """
        ok = True
        try:
            out = fn(self.clock())
        except Exception as e:
            self._core_error(what, e, None)
            ok = False
        else:
            self._send(out)
        self._drain_events()
        self._rearm()
        return ok

    def _on_datagram(self, data, addr):
        c = self.counters
        c["datagrams_in"] += 1
        c["bytes_in"] += len(data)
        try:
            out = self.core.on_datagram(self.clock(), addr, data)
        except Exception as e:
            self._core_error("on_datagram", e, addr)
            return
        self._send(out)

    def _send(self, out):
        if not out:
            return
        c = self.counters
        sock = self.sock
        for item in out:
            try:
                addr, data = item
                dest = compat.addr_for_send(addr)
            except Exception as e:
                self._core_error("output", e, None)
                continue
            try:
                sock.sendto(data, dest)
            except OSError:
                # Kernel buffer full or peer unreachable: UDP promises nothing; the protocol's
                # retransmissions cover signalling and a lost voice frame is concealed.
                c["send_errors"] += 1
                continue
            c["datagrams_out"] += 1
            c["bytes_out"] += len(data)

    def _drain_events(self):
        fn = self._core_events
        if fn is None:
            return
        try:
            evs = fn()
            if evs and self.on_events is not None:
                self.on_events(evs)
        except Exception as e:
            self._core_error("events", e, None)

    def _next_deadline(self):
        try:
            d = self.core.next_deadline()
            if d is not None and (not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= MASK):
                raise ValueError("deadline is not a tick (int ms modulo 2^30)")
            return d
        except Exception as e:
            self._core_error("next_deadline", e, None)
            return None

    def _core_error(self, what, e, addr):
        self.counters["driver_errors"] += 1
        now = self.clock()
        if self._err_window is None or tdiff(now, self._err_window) >= ERR_LOG_WINDOW_MS:
            if self._err_suppressed:
                self.log(
                    "opmob driver: %d more core errors in the last %d s (not logged)"
                    % (self._err_suppressed, ERR_LOG_WINDOW_S)
                )
            self._err_window = now
            self._err_logged = 0
            self._err_suppressed = 0
        if self._err_logged >= ERR_LOG_MAX:
            self._err_suppressed += 1
            return
        self._err_logged += 1
        peer = "" if addr is None else " (datagram from %s:%s)" % (addr[0], addr[1])
        self.log(
            "opmob driver: core raised %s in %s%s; input dropped, driver carries on"
            % (type(e).__name__, what, peer)
        )

    # --- timers -----------------------------------------------------------------------------------
    def _rearm(self):
        d = self._next_deadline()
        if d is None:
            return
        t = self._timer_task
        if t is not None and not t.done():
            if self._armed is not None and due(d, self._armed):
                return
            t.cancel()
        self._armed = d
        self._timer_task = asyncio.create_task(self._timer())

    async def _timer(self):
        while True:
            d = self._next_deadline()
            self._armed = d
            if d is None:
                return
            now = self.clock()
            if not due(now, d):
                # Long waits are cut into pieces: asyncio's tick arithmetic overflows beyond half
                # its wrap period (6 days on the unix port, less on boards).
                wait = tdiff(d, now)
                await compat.sleep_ms(MAX_SLEEP_MS if wait >= MAX_SLEEP_MS else wait)
                continue
            self.counters["timer_polls"] += 1
            try:
                out = self.core.poll(now)
            except Exception as e:
                self._core_error("poll", e, None)
                out = None
            self._send(out)
            self._drain_events()
            d = self._next_deadline()
            if d is not None and due(now, d):
                # A core that keeps a past deadline would otherwise hold the CPU in this loop.
                await compat.sleep_ms(1)

    # --- receiving --------------------------------------------------------------------------------
    async def _rx(self):
        sock = self.sock
        readable = compat.ReadWait(sock)
        while True:
            await readable
            n = 0
            ready = self._ready
            while n < RX_BATCH:
                if ready is not None and not self._readable(ready):
                    break
                try:
                    data, a = sock.recvfrom(RECV_MAX)
                except OSError as e:
                    if e.errno != errno.EAGAIN:
                        self.counters["recv_errors"] += 1
                    break
                except MemoryError:
                    # A board short of heap: drop this wake-up's datagrams rather than the task,
                    # which would leave the relay deaf.
                    self.counters["recv_errors"] += 1
                    gc.collect()
                    break
                n += 1
                try:
                    addr = compat.addr_from_recv(a)
                except Exception:
                    self.counters["recv_errors"] += 1
                    continue
                self._on_datagram(data, addr)
            self._drain_events()
            self._rearm()
            if n == RX_BATCH:
                # Under a flood, let timers and the status line run between batches.
                await compat.sleep_ms(0)

    @staticmethod
    def _readable(ready):
        for _obj, _ev in ready.ipoll(0):
            return True  # a datagram, or an error that recvfrom will report
        return False

    # --- status -----------------------------------------------------------------------------------
    def status(self):
        """The core's status (if it has one) plus this driver's counters."""
        st = {}
        fn = getattr(self.core, "status", None)
        if fn is not None:
            try:
                st = dict(fn())
            except Exception as e:
                self._core_error("status", e, None)
                st = {"status_error": type(e).__name__}
        drv = {"uptime_s": int(compat.monotonic() - self.started)}
        for k in self.counters:
            drv[k] = self.counters[k]
        st["driver"] = drv
        return st

    def status_line(self):
        try:
            return "opmob relay status " + json.dumps(self.status())
        except Exception as e:
            self._core_error("status", e, None)
            return "opmob relay status unavailable (%s)" % type(e).__name__

    async def _status_loop(self, every_s, out):
        ms = min(MAX_SLEEP_MS, max(1, int(every_s * 1000)))
        while True:
            await compat.sleep_ms(ms)
            out(self.status_line())

    # --- lifetime ---------------------------------------------------------------------------------
    def stop(self):
        self._stop.set()

    async def run(self, status_every=0, status_out=print):
        tasks = [asyncio.create_task(self._rx())]
        if status_every > 0:
            tasks.append(asyncio.create_task(self._status_loop(status_every, status_out)))
        self._rearm()
        try:
            await self._stop.wait()
        finally:
            if self._timer_task is not None:
                tasks.append(self._timer_task)
            for t in tasks:
                if not t.done():
                    t.cancel()


def run_forever(drv, status_every=0):
    """Run ``drv`` until interrupted (Ctrl-C / SIGINT: the unix port raises KeyboardInterrupt)."""
    try:
        asyncio.run(drv.run(status_every))
    except KeyboardInterrupt:
        pass


def serve(core, host, port, status_every=0, on_ready=None):
    """Run ``core`` on ``host:port`` until interrupted; returns the driver (for its counters)."""
    sock = open_udp(host, port)
    try:
        drv = Driver(core, sock)
        if on_ready is not None:
            on_ready(drv)
        run_forever(drv, status_every)
    finally:
        sock.close()
    return drv
