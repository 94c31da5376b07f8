"""Virtual accessories: the accessory firmware on the MicroPython unix port with the ``unix-sim``
board, as subprocesses, and a relay process for them to talk to.

Used by ``opmob demo`` and by the acceptance tests (tests/host/test_accessory_*.py):

    fleet = Fleet(workdir, ["alice@no", "bob@no"], groups=["fire-1@no"])
    with fleet.relay(), fleet.accessory("alice@no") as a, fleet.accessory("bob@no") as b:
        a.wait_for("state registered")
        a.command("mic /usr/share/codec2/raw/hts1a.raw")
        a.command("press ptt"); a.wait_for("tone talk_permit") ...

Each accessory is driven through the sim board's control channel (TCP, one line per command or
report, docs/accessory.md); every line it reports is kept with the host time it arrived.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opmob_host import resources

# Found from the installed packages (a wheel's or a checkout's), never from a repository path.
FIRMWARE = resources.firmware_root()
SIM_BOARD = resources.boards_dir() / "unix-sim.json"
try:
    MICROPYTHON_CMD = resources.micropython_command()
except resources.ResourceMissing as e:
    MICROPYTHON_CMD = []
    MICROPYTHON_MISSING = str(e)
else:
    MICROPYTHON_MISSING = ""
# The unix port's executable, for the tests' "is it installed" checks; MICROPYTHON_CMD runs it.
MICROPYTHON = Path(MICROPYTHON_CMD[0]) if len(MICROPYTHON_CMD) == 1 else Path("/nonexistent/micropython")
SPEECH = Path("/usr/share/codec2/raw/hts1a.raw")
# The unix port's heap for a virtual accessory. Its code is loaded into this heap (a board keeps
# it frozen in flash), so this is far above what the accessory itself uses (``status`` reports it).
HEAP = "1M"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Line:
    __slots__ = ("t", "text")

    def __init__(self, t: float, text: str) -> None:
        self.t = t
        self.text = text

    def __repr__(self) -> str:
        return f"{self.t:.3f} {self.text}"


class Accessory:
    """One virtual accessory process and its control channel."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        config: dict[str, Any] | None,
        *,
        config_text: str | None = None,
        mic: Path | None = None,
        wifi_scenario: dict[str, Any] | None = None,
        watchdog_ms: int | None = None,
        heap: str = HEAP,
    ) -> None:
        self.name = name
        self.dir = workdir / name.split("@")[0]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "config.json"
        if config_text is not None:
            self.config_path.write_text(config_text)
        elif config is not None:
            self.config_path.write_text(json.dumps(config, indent=1))
        self.state_dir = self.dir / "state"
        self.speaker = self.dir / "speaker.wav"
        self.console = self.dir / "console.log"
        self.port = free_port()
        self.args = [
            *MICROPYTHON_CMD,
            "-X",
            f"heapsize={heap}",
            "-m",
            "opmob.accessory.main",
            "--board",
            str(SIM_BOARD),
            "--config",
            str(self.config_path),
            "--state",
            str(self.state_dir),
            "--control-port",
            str(self.port),
            "--speaker",
            str(self.speaker),
        ]
        if mic is not None:
            self.args += ["--mic", str(mic)]
        if wifi_scenario is not None:
            path = self.dir / "wifi.json"
            path.write_text(json.dumps(wifi_scenario))
            self.args += ["--wifi-scenario", str(path)]
        if watchdog_ms is not None:
            self.args += ["--watchdog-ms", str(watchdog_ms)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.lines: list[Line] = []
        self._q: queue.Queue[Line | None] = queue.Queue()
        self._cursor = 0
        self._lock = threading.Lock()

    # --- process ------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> Accessory:
        env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
        log = open(self.console, "ab")  # noqa: SIM115 - the process owns it until it ends
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        log.close()
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} ended at boot:\n{self.console_text()}") from None
                if time.monotonic() > end:
                    raise RuntimeError(f"{self.name}: no control channel:\n{self.console_text()}") from None
                time.sleep(0.05)
        self.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.sock is not None
        f = self.sock.makefile("rb")
        try:
            for raw in f:
                line = Line(time.time(), raw.decode(errors="replace").rstrip("\n"))
                with self._lock:
                    self.lines.append(line)
                self._q.put(line)
        except OSError:
            pass
        self._q.put(None)

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask the firmware to quit (it flushes the speaker file); kill it if it does not."""
        if self.proc is None:
            return None
        if self.proc.poll() is None and self.sock is not None:
            try:
                self.sock.sendall(b"quit\n")
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return self.proc.returncode

    def __enter__(self) -> Accessory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- control channel ----------------------------------------------------------------------
    def mark(self) -> int:
        """Start looking from here: later ``wait_for`` calls see only reports after this point
        (until the next mark or command). Returns the place, for ``wait_for(..., since=)``."""
        with self._lock:
            self._cursor = len(self.lines)
            return self._cursor

    def send(self, cmd: str) -> int:
        m = self.mark()
        assert self.sock is not None, "accessory not started"
        self.sock.sendall(cmd.encode() + b"\n")
        return m

    def command(self, cmd: str, timeout: float = 10.0) -> str:
        """Send a command and wait for its ``ok``/``error`` (or ``status``) reply."""
        m = self.send(cmd)
        word = cmd.split()[0]
        line = self.wait_for(
            lambda s: s.startswith(f"ok {word}") or s.startswith("error ") or s.startswith(f"{word} "),
            timeout,
            since=m,
        )
        if line.text.startswith("error "):
            raise AssertionError(f"{self.name}: {cmd!r} -> {line.text}")
        return line.text

    def wait_for(
        self, want: str | Callable[[str], bool], timeout: float = 10.0, since: int | None = None
    ) -> Line:
        """The first report line that starts with ``want`` (or satisfies it), looking from
        ``since`` (default: the last ``mark``, which every command sets); AssertionError with the
        history on timeout. Reports caused by one command may come in any order, so every wait
        looks from the same place."""
        pred: Callable[[str], bool] = (lambda s: s.startswith(want)) if isinstance(want, str) else want
        start = self._cursor if since is None else since
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                for i in range(start, len(self.lines)):
                    if pred(self.lines[i].text):
                        return self.lines[i]
                start = len(self.lines)
            left = end - time.monotonic()
            if left <= 0:
                tail = "\n".join(repr(x) for x in self.lines[-40:])
                raise AssertionError(
                    f"{self.name}: no report {want!r} within {timeout} s; last reports:\n{tail}\n"
                    f"console:\n{self.console_text()[-3000:]}"
                )
            try:
                self._q.get(timeout=min(left, 0.2))
            except queue.Empty:
                pass

    def last(self, kind: str) -> str | None:
        """The latest report of a kind ("led", "ptt", "state", ...), without the kind word."""
        with self._lock:
            for x in reversed(self.lines):
                if x.text.startswith(kind + " "):
                    return x.text[len(kind) + 1 :]
        return None

    def wait_last(self, kind: str, value: str, timeout: float = 10.0) -> None:
        """Wait until the latest ``kind`` report is ``value`` (e.g. ``wait_last("led", "talking")``)."""
        end = time.monotonic() + timeout
        while self.last(kind) != value:
            if time.monotonic() > end:
                tail = "\n".join(repr(x) for x in self.lines[-40:])
                raise AssertionError(
                    f"{self.name}: {kind} is {self.last(kind)!r}, not {value!r}, after {timeout} s; "
                    f"last reports:\n{tail}\nconsole:\n{self.console_text()[-3000:]}"
                )
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass

    def seen(self, prefix: str, since: int = 0) -> list[Line]:
        with self._lock:
            return [x for x in self.lines[since:] if x.text.startswith(prefix)]

    def status(self) -> dict[str, Any]:
        text = self.command("status")
        doc: dict[str, Any] = json.loads(text[len("status ") :])
        return doc

    def speaker_pcm(self) -> tuple[float, bytes]:
        """(wall time of sample 0, the 16-bit PCM the accessory has played so far)."""
        t0 = float(self.command("speaker flush").split()[3])
        with wave.open(str(self.speaker)) as w:
            return t0, w.readframes(w.getnframes())


class Attached(Accessory):
    """The control channel of an accessory that something else runs: a virtual device's own
    ``/main.py`` (``opmob virtual``). The same commands and waits as ``Accessory``, no process of
    its own: ``start`` connects (retrying while the device boots), ``stop`` disconnects.
    ``console`` gives the device's console so far, for failure messages."""

    def __init__(self, name: str, port: int, speaker: Path, console: Callable[[], str] | None = None) -> None:
        # Accessory.__init__ would lay out a process's directory and arguments: none here.
        self.name = name
        self.port = port
        self.speaker = speaker
        self._console_fn = console
        self.proc = None
        self.sock = None
        self.lines = []
        self._q = queue.Queue()
        self._cursor = 0
        self._lock = threading.Lock()

    def start(self, timeout: float = 20.0) -> Attached:
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                break
            except OSError as e:
                if time.monotonic() > end:
                    raise AssertionError(
                        f"{self.name}: no control channel on 127.0.0.1:{self.port} within {timeout} s "
                        f"({e}); console:\n{self.console_text()[-3000:]}"
                    ) from None
                time.sleep(0.1)
        self.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def console_text(self) -> str:
        return self._console_fn() if self._console_fn is not None else ""

    def alive(self) -> bool:
        return self.sock is not None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        return None


class Fleet:
    """Relays of one system with the same registry export, and the accessories' matching
    configurations, in ``workdir``. Relay ``i`` is ``relay-<i+1>@<system>`` behind the access point
    ``opmob-<system>-<i+1>``; every accessory's configuration lists them all."""

    def __init__(
        self,
        workdir: Path,
        identities: list[str],
        groups: list[str],
        scan: dict[str, list[str]] | None = None,
        ceilings: dict[str, int] | None = None,
        floor: dict[str, Any] | None = None,
        keepalive: int = 15,
        relays: int = 1,
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.identities = identities
        self.groups = groups
        self.scan = scan or {}
        self.ceilings = ceilings or {}
        self.secrets = {i: os.urandom(16).hex() for i in identities}
        self.system = identities[0].split("@")[1]
        self.udps = [free_port(socket.SOCK_DGRAM) for _ in range(relays)]
        self.status_ports = [free_port() for _ in range(relays)]
        self.udp = self.udps[0]
        self.floor = {"t1": 2.0, "t2": 60.0, "t3": 1.0, "queueing": True}
        self.floor.update(floor or {})
        self.keepalive = keepalive
        self.relay_procs: list[subprocess.Popen[str] | None] = [None] * relays
        self.relay_log = self.dir / "relay.log"

    def export(self) -> dict[str, Any]:
        system = self.identities[0].split("@")[1]
        devices = []
        for ident in self.identities:
            devices.append(
                {
                    "identity": ident,
                    "secret": self.secrets[ident],
                    "groups": self.groups,
                    "ceiling": self.ceilings.get(ident, 100),
                    "status": "active",
                }
            )
        return {
            "format": "opmob-registry",
            "version": 1,
            "system": system,
            "view": "home",
            "comment": "virtual accessories: throw-away secrets",
            "devices": devices,
            "groups": [{"identity": g, "policy": "members"} for g in self.groups],
        }

    def config(
        self, ident: str, talk: list[str] | None = None, priority: int | None = None
    ) -> dict[str, Any]:
        system = ident.split("@")[1]
        talk_groups = (
            talk if talk is not None else [g for g in self.groups if g not in self.scan.get(ident, [])]
        )
        return {
            "format": "opmob-accessory",
            "version": 1,
            "identity": ident,
            "secret": self.secrets[ident],
            "home": system,
            "relays": [
                {"identity": self.relay_id(i), "host": "127.0.0.1", "port": port, "ssid": self.ssid(i)}
                for i, port in enumerate(self.udps)
            ],
            "groups": [{"identity": g, "priority": 100} for g in talk_groups],
            "scan": [{"identity": g, "priority": 50 - i} for i, g in enumerate(self.scan.get(ident, []))],
            "floor_priority": priority if priority is not None else self.ceilings.get(ident, 100),
        }

    def relay_id(self, i: int) -> str:
        return f"relay-{i + 1}@{self.system}"

    def ssid(self, i: int) -> str:
        return f"opmob-{self.system}-{i + 1}"

    @property
    def relay_proc(self) -> subprocess.Popen[str] | None:
        return self.relay_procs[0]

    def relay_toml(self, i: int = 0) -> Path:
        (self.dir / "registry.json").write_text(json.dumps(self.export(), indent=1))
        (self.dir / "registry.json").chmod(0o600)  # it holds secrets: the relay refuses it open to all
        floor = "\n".join(f"{k} = {json.dumps(v)}" for k, v in self.floor.items())
        state = "relay-state" if i == 0 else f"relay-state-{i + 1}"
        text = (
            f'[relay]\nidentity = "{self.relay_id(i)}"\n'
            f'[listen]\nhost = "127.0.0.1"\nport = {self.udps[i]}\n'
            f'[status]\nhost = "127.0.0.1"\nport = {self.status_ports[i]}\n'
            f'[registry]\npath = "{state}/registry.sqlite"\nimport = "registry.json"\n'
            f"[timers]\nkeepalive = {self.keepalive}\nexpiry = 600\n"
            f"[floor]\n{floor}\n"
        )
        path = self.dir / ("relay.toml" if i == 0 else f"relay-{i + 1}.toml")
        path.write_text(text)
        return path

    @contextmanager
    def relay(self, i: int = 0, timeout: float = 30.0) -> Iterator[subprocess.Popen[str]]:
        """Run relay ``i`` while the block runs (and stop it after)."""
        cfg = self.relay_toml(i)
        log = open(self.relay_log, "a")  # noqa: SIM115
        path = [str(FIRMWARE), str(resources.host_tools_root()), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
        proc = subprocess.Popen(
            [sys.executable, "-m", "opmob_host.cli", "relay", "run", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=self.dir,
        )
        log.close()
        self.relay_procs[i] = proc
        try:
            assert proc.stdout is not None
            end = time.monotonic() + timeout
            seen: list[str] = []
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"relay ended at start: {seen}\n{self.relay_log.read_text()}")
                seen.append(line)
                if "serving udp" in line:
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"relay not serving within {timeout} s: {seen}")
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def accessory(self, ident: str, **kw: Any) -> Accessory:
        cfg = kw.pop("config", None)
        if cfg is None and "config_text" not in kw:
            cfg = self.config(ident, talk=kw.pop("talk", None), priority=kw.pop("priority", None))
        return Accessory(ident, self.dir, cfg, **kw).start()


def _drain(f: Any) -> None:
    for _ in f:
        pass


# --- a network with jitter ------------------------------------------------------------------------


class DelayProxy:
    """A UDP hop between accessories and a relay that holds every datagram, both ways, for
    ``delay()`` seconds (drawn per datagram, so it also reorders when delays differ by more than
    the spacing). Accessories are configured with ``port`` as their relay's; each one gets its own
    upstream socket, so the relay still sees one address per accessory.

        with DelayProxy(fleet.udp, lambda: rng.uniform(0, 0.02)) as proxy:
            cfg = fleet.config("bob@no"); cfg["relays"][0]["port"] = proxy.port
    """

    def __init__(self, relay_port: int, delay: Callable[[], float]) -> None:
        self.relay = ("127.0.0.1", relay_port)
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.forwarded = 0
        self._up: dict[Any, socket.socket] = {}  # accessory address -> its socket to the relay
        self._down: dict[socket.socket, Any] = {}
        self._due: list[tuple[float, int, socket.socket, bytes, Any]] = []
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in [self.sock, *self._up.values()]:
            s.close()

    def _hold(self, sock: socket.socket, data: bytes, dest: Any) -> None:
        import heapq

        self._n += 1
        heapq.heappush(self._due, (time.monotonic() + max(0.0, self.delay()), self._n, sock, data, dest))

    def _run(self) -> None:
        import heapq
        import select

        while not self._stop.is_set():
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _t, _n, sock, data, dest = heapq.heappop(self._due)
                try:
                    sock.sendto(data, dest)
                    self.forwarded += 1
                except OSError:
                    pass
            wait = 0.05 if not self._due else max(0.0, self._due[0][0] - now)
            ready, _w, _x = select.select([self.sock, *self._down], [], [], min(wait, 0.05))
            for r in ready:
                try:
                    data, addr = r.recvfrom(4096)
                except OSError:
                    continue
                if r is self.sock:
                    up = self._up.get(addr)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.bind(("127.0.0.1", 0))
                        self._up[addr] = up
                        self._down[up] = addr
                    self._hold(up, data, self.relay)
                else:
                    self._hold(self.sock, data, self._down[r])


# --- comparing audio -----------------------------------------------------------------------------


def _samples(pcm: bytes) -> list[int]:
    import array

    a = array.array("h")
    a.frombytes(pcm[: len(pcm) // 2 * 2])
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


def _dot(a: list[int] | list[float], b: list[int] | list[float]) -> float:
    import operator

    return float(sum(map(operator.mul, a, b)))


def ncc_at(src: list[int], rec: list[int], lag: int) -> float:
    """Normalised cross-correlation of ``src`` with ``rec[lag:lag+len(src)]`` (0 if out of range)."""
    seg = rec[lag : lag + len(src)]
    if lag < 0 or len(seg) < len(src):
        return 0.0
    den = (_dot(src, src) * _dot(seg, seg)) ** 0.5
    return _dot(src, seg) / den if den else 0.0


def find_in(source: bytes, received: bytes, lo: int = 0, hi: int | None = None) -> tuple[int, float]:
    """Where ``source`` (16-bit PCM) best matches inside ``received``: (lag in samples, NCC).

    Searches lags ``lo..hi`` coarsely on a 4:1 decimated signal, then to the sample around the
    best coarse lag; pure Python (no numpy), a second or two for a few seconds of audio.
    """
    src = _samples(source)
    rec = _samples(received)
    if hi is None:
        hi = len(rec) - len(src)
    hi = min(hi, len(rec) - len(src))
    if hi < lo:
        return lo, 0.0

    def dec(x: list[int]) -> list[float]:
        return [(x[i] + x[i + 1] + x[i + 2] + x[i + 3]) / 4 for i in range(0, len(x) - 3, 4)]

    s4, r4 = dec(src), dec(rec)
    e4 = _dot(s4, s4)
    best, best_v = lo // 4, -2.0
    for lag in range(lo // 4, hi // 4 + 1):
        seg = r4[lag : lag + len(s4)]
        if len(seg) < len(s4):
            break
        den = (e4 * _dot(seg, seg)) ** 0.5
        v = _dot(s4, seg) / den if den else 0.0
        if v > best_v:
            best, best_v = lag, v
    fine, fine_v = best * 4, -2.0
    for lag in range(max(lo, best * 4 - 8), min(hi, best * 4 + 8) + 1):
        v = ncc_at(src, rec, lag)
        if v > fine_v:
            fine, fine_v = lag, v
    return fine, fine_v


def segment_ncc(
    source: bytes,
    received: bytes,
    lo: int = 0,
    hi: int | None = None,
    seg_ms: int = 500,
    slack_ms: int = 100,
) -> tuple[int, float, float]:
    """(global lag, global NCC, median NCC of ``seg_ms`` segments) of ``source`` in ``received``.

    An adaptive jitter buffer may legitimately move playout by a frame or two mid-burst (it grows
    its delay when a loaded host delivers late); one global alignment then under-rates speech that
    arrived intact. Each segment is aligned on its own, within ``slack_ms`` of the global lag
    (searched in ``lo..hi`` as find_in does).
    """
    lag, ncc = find_in(source, received, lo, hi)
    seg = 2 * 8 * seg_ms
    slack = 8 * slack_ms
    values = []
    for off in range(0, len(source) - seg + 1, seg):
        base = lag + off // 2
        _, v = find_in(source[off : off + seg], received, max(0, base - slack), base + slack)
        values.append(v)
    values.sort()
    median = values[len(values) // 2] if values else ncc
    return lag, ncc, median
