"""Real relay processes on loopback and scripted devices for the integration tests.

- ``export_doc``: a registry export with fresh random secrets (never the published example's).
- ``RelayProc``: ``opmob relay run`` (CPython) or ``micropython -m opmob.relay_uasyncio`` (the unix
  port) in a temporary directory, with its configuration written for the test; waits until it
  serves, fetches its status (HTTP on CPython, the console status line on MicroPython), talks to
  the admin socket (CPython), stops it and checks that its output holds no secret.
- ``Client``: a ``DeviceSession`` on its own loopback socket (``relay_server.Endpoint``) that logs
  what it receives with the time, can drop chosen incoming datagrams and records what it sends.
- ``expect``: waits until each client has received its expected floor messages, waits a little
  more for anything unexpected, then compares the exact sequences.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from opmob import mcpt, rtp, sig
from opmob.device import DeviceSession
from opmob_host.relay_admin import request as admin_request
from opmob_host.udp_driver import Endpoint

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
RELAY_ID = "relay-1@no"

# Timers that leave a burst alone while a scenario runs (T1 longer than a holder's silence takes to
# be noticed: 3.5 keep-alive intervals), and fast ones for the timer scenarios.
SLOW_FLOOR = {"t1": 8.0, "t2": 30.0, "t3": 3.0, "t7": 1.0, "t20": 1.0}
SETTLE_S = 0.12  # after the expected messages: how long to wait for unexpected ones

T = TypeVar("T")


def arun(coro: Awaitable[T], timeout: float = 60) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def short_dir() -> Iterator[Path]:
    """A private directory with a short path: a Unix socket path has at most 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="opmob-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ident(name: str) -> str:
    return name if "@" in name else name + "@no"


def export_doc(
    people: Mapping[str, tuple[int, Sequence[str]]],
    groups: Sequence[str],
    secrets: dict[str, bytes] | None = None,
    receive_only: dict[str, Sequence[str]] | None = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """An export for ``people`` (name -> (ceiling, groups it may join)) and ``groups`` (policy
    "members"); secrets are fresh random unless given. Returns (document, {identity: secret})."""
    keys = dict(secrets or {})
    devices = []
    for name in sorted(people):
        ceiling, allowed = people[name]
        i = ident(name)
        keys.setdefault(i, os.urandom(16))
        devices.append(
            {
                "identity": i,
                "secret": keys[i].hex(),
                "groups": list(allowed),
                "ceiling": ceiling,
                "status": "active",
                "vid": 0,
                "cseq": 0,
            }
        )
    recs = [
        {
            "identity": g,
            "policy": "members",
            "e2e": False,
            "key_ids": [],
            "receive_only": [ident(n) for n in (receive_only or {}).get(g, ())],
        }
        for g in groups
    ]
    doc = {"format": "opmob-registry", "version": 1, "system": "no", "devices": devices, "groups": recs}
    return doc, keys


def toml(cfg: dict[str, Any]) -> str:
    lines = []
    for section, table in cfg.items():
        # A list of tables (the [[link]] entries) is an array of tables.
        for t in table if isinstance(table, list) else [table]:
            lines.append(f"[[{section}]]" if isinstance(table, list) else f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in t.items()]
    return "\n".join(lines) + "\n"


class Output:
    """A process's stdout, read on a thread, each line stamped with the time it was read."""

    def __init__(self, stream: Any) -> None:
        self.q: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            for line in stream:
                self.q.put((time.monotonic(), line.rstrip("\n")))
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, prefix: str, timeout: float = 20.0, after: float = 0.0) -> str:
        """The next line starting with ``prefix`` read after the time ``after``."""
        end = time.monotonic() + timeout
        while True:
            try:
                item = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line starting {prefix!r} within {timeout} s; saw {self.seen[-5:]}"
                ) from None
            if item is None:
                raise AssertionError(f"process ended before a line starting {prefix!r}; saw {self.seen[-5:]}")
            t, line = item
            self.seen.append(line)
            if line.startswith(prefix) and t >= after:
                return line


class RelayProc:
    """One relay process. ``runtime``: "cpython" (``opmob relay run``) or "micropython"."""

    def __init__(
        self,
        workdir: Path,
        export: dict[str, Any],
        *,
        runtime: str = "cpython",
        floor: dict[str, Any] | None = None,
        keepalive: int = 1,
        expiry: int = 600,
        secrets: Sequence[bytes] = (),
        default_admin: bool = False,
        identity: str = RELAY_ID,
        links: Sequence[dict[str, Any]] = (),
        udp_port: int = 0,
    ) -> None:
        """``links``: ``[[link]]`` entries; each may hold ``psk`` (bytes), written to its
        ``key_file`` with mode 0600 and checked, as a secret, against the relay's output."""
        self.dir = workdir
        self.identity = identity
        self.links = [dict(lk) for lk in links]
        self.export = export
        self.runtime = runtime
        self.floor = dict(SLOW_FLOOR if floor is None else floor)
        self.keepalive = keepalive
        self.expiry = expiry
        self.secrets = list(secrets)
        self.proc: subprocess.Popen[str] | None = None
        self.out: Output | None = None
        self.udp_port = udp_port
        self.status_port = 0
        # Given in the configuration, or left to the default: beside the registry.
        self.default_admin = default_admin
        self.admin_path = str(workdir / ("state/registry.admin.sock" if default_admin else "admin.sock"))
        self.config_path = workdir / ("relay.toml" if runtime == "cpython" else "relay.json")
        self._stderr: Any = None

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.udp_port)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "relay": {"identity": self.identity},
            "listen": {"host": "127.0.0.1", "port": self.udp_port},
            "status": {"host": "127.0.0.1", "port": self.status_port},
            "registry": {"path": "state/registry.sqlite", "import": "export.json"},
            "timers": {"keepalive": self.keepalive, "expiry": self.expiry},
            "floor": self.floor,
            "admin": {"socket": self.admin_path},
        }
        if self.default_admin:
            del cfg["admin"]
        if self.links:
            cfg["link"] = [{k: v for k, v in lk.items() if k != "psk"} for lk in self.links]
        if self.runtime == "micropython":
            cfg.pop("admin", None)
            del cfg["status"]
            cfg["registry"]["path"] = "state"
        return cfg

    def start(self) -> RelayProc:
        (self.dir / "export.json").write_text(json.dumps(self.export))
        for lk in self.links:
            if "psk" in lk:
                kf = self.dir / lk["key_file"]
                kf.write_text(lk["psk"].hex() + "\n")
                kf.chmod(0o600)
                self.secrets.append(lk["psk"])
        self._stderr = open(self.dir / "stderr.txt", "w+")  # noqa: SIM115 (closed in stop)
        if self.runtime == "cpython":
            self.status_port = free_port(socket.SOCK_STREAM)
            self.config_path.write_text(toml(self.config()))
            cmd = [sys.executable, "-m", "opmob_host.cli", "relay", "run", "--config", str(self.config_path)]
            env = dict(os.environ)
        else:
            if not MICROPYTHON.exists():
                raise AssertionError("MicroPython unix port not installed: run `make setup`")
            # The unix port's sockets cannot tell their port: the test picks one.
            self.udp_port = self.udp_port or free_port()
            self.config_path.write_text(json.dumps(self.config()))
            cmd = [str(MICROPYTHON), "-m", "opmob.relay_uasyncio", str(self.config_path), "0.1"]
            env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=self.dir, env=env
        )
        self.out = Output(self.proc.stdout)
        line = self.out.wait_for(f"opmob relay {self.identity}: serving udp 127.0.0.1:")
        port = int(line.split("serving udp 127.0.0.1:")[1].split(",")[0])
        if self.runtime == "cpython":
            self.udp_port = port
        assert port == self.udp_port, line
        return self

    def __enter__(self) -> RelayProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(check=exc[0] is None)

    def stop(self, check: bool = True) -> int | None:
        """Stop the relay (SIGTERM; SIGINT on MicroPython, where it is Ctrl-C) and check its exit
        code and that no secret of the export appears in anything it printed."""
        proc = self.proc
        if proc is None:
            return None
        self.proc = None
        rc: int | None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if self.runtime == "cpython" else signal.SIGINT)
                rc = proc.wait(20)
            else:
                rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the relay did not stop within 20 s of SIGTERM") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = self.output()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if check:
            assert rc == 0, f"relay exited {rc}: {text[-2000:]}"
            for d in self.export["devices"]:
                assert d["secret"] not in text, "a device secret appears in the relay's output"
            for s in self.secrets:
                assert s.hex() not in text, "a secret appears in the relay's output"
        return rc

    def output(self) -> str:
        parts = []
        if self.out is not None:
            parts.append("\n".join(self.out.seen))
        if self._stderr is not None:
            self._stderr.flush()
            self._stderr.seek(0)
            parts.append(self._stderr.read())
        return "\n".join(parts)

    # --- the operator's view ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The relay's status as of now (or later)."""
        if self.runtime == "cpython":
            url = f"http://127.0.0.1:{self.status_port}/status"
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback http)
                doc: dict[str, Any] = json.loads(resp.read())
            return doc
        assert self.out is not None
        prefix = "opmob relay status "
        line = self.out.wait_for(prefix, timeout=10, after=time.monotonic())
        st: dict[str, Any] = json.loads(line[len(prefix) :])
        return st

    async def astatus(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.status)

    def admin(self, op: str, target: str | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"op": op}
        if target is not None:
            req["group" if op == "cancel-emergency" else "identity"] = target
        return admin_request(self.admin_path, req, timeout=10)

    async def aadmin(self, op: str, target: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.admin, op, target)

    def control(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``opmob relay control --config <this relay's config> ARGS``."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "opmob_host.cli",
                "relay",
                "control",
                "--config",
                str(self.config_path),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )


def counter(st: dict[str, Any], name: str) -> int:
    value: int = st["counters"].get(name, 0)
    return value


def device_entry(st: dict[str, Any], identity: str) -> dict[str, Any] | None:
    for d in st["devices"]:
        if d["identity"] == identity:
            entry: dict[str, Any] = d
            return entry
    return None


def group_entry(st: dict[str, Any], group: str) -> dict[str, Any]:
    for g in st["groups"]:
        if g["identity"] == group:
            entry: dict[str, Any] = g
            return entry
    raise AssertionError(f"no group {group} in the status")


# --- devices ---------------------------------------------------------------------------------------------

IND_NAMES = {
    mcpt.IND_NORMAL: "normal",
    mcpt.IND_EMERGENCY: "emergency",
    mcpt.IND_IMMINENT_PERIL: "imminent-peril",
}


def ind_name(v: int | None) -> str | None:
    return None if v is None else IND_NAMES.get(v, hex(v))


def view(m: Any) -> tuple[Any, ...]:
    """A received floor message as a compact tuple of its kind and key fields."""
    ind = ind_name(m.indicator)
    k = m.kind
    if k == mcpt.FLOOR_GRANTED:
        return ("Granted", m.user_id, m.priority, ind)
    if k == mcpt.FLOOR_TAKEN:
        return ("Taken", m.granted_party, m.permission, ind)
    if k == mcpt.FLOOR_DENY:
        return ("Deny", m.reject_cause, ind)
    if k == mcpt.FLOOR_REVOKE:
        return ("Revoke", m.reject_cause, ind)
    if k == mcpt.FLOOR_IDLE:
        return ("Idle", ind)
    if k == mcpt.FLOOR_QUEUE_POSITION_INFO:
        return ("Queue", m.queue_info[0])
    return (m.name,)


class KeyedDevice(DeviceSession):
    """A DeviceSession that keeps each registration's session keys: test code only, so the capture
    test can decrypt what it captured (the device itself keeps only its SRTP contexts)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.key_log: list[tuple[int, Any]] = []  # (ssrc, authvec keys)

    def _on_register_ack(self, now: float, msg: Any) -> Any:
        keys = self._p_keys
        out = super()._on_register_ack(now, msg)
        if self.registered and self.session == msg.session and keys is not None:
            self.key_log.append((self.ssrc, keys))
        return out


class ClientEndpoint(Endpoint):
    """Endpoint that stamps what its device receives, can drop chosen incoming datagrams, and
    records every datagram it sends."""

    def __init__(self, client: Client) -> None:
        super().__init__(client.dev)
        self.client = client
        self.sent: list[tuple[float, bytes]] = []
        self.drop_in: Callable[[bytes], bool] | None = None
        self.dropped_in: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.drop_in is not None and self.drop_in(data):
            self.dropped_in.append(data)
            return
        super().datagram_received(data, addr)
        self.client.collect()

    def send(self, out: Any, *args: Any, **kw: Any) -> None:
        items = list(out or ())
        now = time.monotonic()
        for _addr, data in items:
            self.sent.append((now, bytes(data)))
        super().send(items, *args, **kw)

    def _fire(self) -> None:
        super()._fire()
        self.client.collect()


class Client:
    """One scripted device."""

    def __init__(
        self, name: str, secret: bytes, relay: tuple[str, int], groups: Sequence[str] = (), **kw: Any
    ) -> None:
        self.name = name
        self.identity = ident(name)
        self.groups = list(groups)
        self.dev = KeyedDevice(self.identity, secret, relay, os.urandom, groups=self.groups, **kw)
        self.ep = ClientEndpoint(self)
        self.floor_log: list[tuple[float, str | None, Any]] = []  # every floor message received
        self.voice_log: list[tuple[float, bytes]] = []
        self.other: list[tuple[float, tuple[Any, ...]]] = []  # every other event
        self._floor_read = 0
        self._voice_read = 0
        self._seq = 1000 + int.from_bytes(os.urandom(1), "big")

    def __repr__(self) -> str:
        return f"Client({self.identity})"

    def collect(self) -> None:
        now = time.monotonic()
        for e in self.dev.events:
            if e[0] == "floor":
                self.floor_log.append((now, e[1], e[2]))
            elif e[0] == "voice":
                self.voice_log.append((now, bytes(e[1])))
            else:
                self.other.append((now, e))
        self.dev.events = []

    # --- life -------------------------------------------------------------------------------------
    async def open(self) -> Client:
        await self.ep.open("127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        port: int = self.ep.local_address[1]
        return port

    async def register(self, timeout: float = 10) -> None:
        self.ep.act(self.dev.start, "start")
        want = list(self.groups)
        await self.until(
            lambda: self.dev.state == "registered" and all(g in self.dev.affiliated for g in want),
            timeout,
            f"{self.identity} registered and affiliated to {want}",
        )

    async def until(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        def check() -> bool:
            self.collect()
            return pred()

        await self.ep.wait_until(check, timeout, what)

    def close(self) -> None:
        """The device goes silent: no socket, no timers."""
        self.ep.close()

    def events(self, kind: str) -> list[tuple[Any, ...]]:
        self.collect()
        return [e for _, e in self.other if e[0] == kind]

    # --- acts -------------------------------------------------------------------------------------
    def act(self, fn: Callable[[float], Any], what: str = "act") -> None:
        assert self.ep.act(fn, what), f"{self.identity}: {what} raised"

    def request(
        self, prio: int | None = None, ind: int | None = None, queue: bool = True, group: str | None = None
    ) -> None:
        flags = (ind or 0) | (mcpt.IND_QUEUEING_SUPPORTED if queue else 0)
        m = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, priority=prio, indicator=flags or None)
        self.act(lambda now: self.dev.send_floor(now, m, group), "floor request")

    def release(self, group: str | None = None) -> None:
        m = mcpt.FloorMsg(mcpt.FLOOR_RELEASE)
        self.act(lambda now: self.dev.send_floor(now, m, group), "floor release")

    def queue_position_request(self, group: str | None = None) -> None:
        m = mcpt.FloorMsg(mcpt.FLOOR_QUEUE_POSITION_REQUEST)
        self.act(lambda now: self.dev.send_floor(now, m, group), "queue position request")

    def voice_packet(self) -> bytes:
        self._seq += 1
        hdr = rtp.RtpHeader(rtp.PT_DVI4_8K, self._seq & 0xFFFF, self._seq * 160, 0)
        return rtp.encode(hdr, bytes(4) + os.urandom(80))  # DVI4 state header + 160 samples

    def send_voice(self, pkt: bytes) -> None:
        self.act(lambda now: self.dev.send_voice(now, pkt), "voice")

    async def talk(self, packets: int, every: float = 0.02) -> list[bytes]:
        """``packets`` voice packets, ``every`` seconds apart; returns them as sent (our SSRC in)."""
        sent = []
        for i in range(packets):
            p = bytearray(self.voice_packet())
            p[8:12] = (self.dev.ssrc or 0).to_bytes(4, "big")
            self.send_voice(bytes(p))
            sent.append(bytes(p))
            if i + 1 < packets:
                await asyncio.sleep(every)
        return sent

    # --- what it got ------------------------------------------------------------------------------
    def pending_floors(self) -> list[tuple[float, str | None, Any]]:
        self.collect()
        return self.floor_log[self._floor_read :]

    def floors(self, group: str | None = None) -> list[tuple[Any, ...]]:
        """Floor messages received since last asked, as views; all must be for ``group`` if given."""
        new = self.pending_floors()
        self._floor_read = len(self.floor_log)
        if group is not None:
            others = [(g, view(m)) for _, g, m in new if g != group]
            assert not others, f"{self.identity}: floor messages for other groups: {others}"
        return [view(m) for _, _, m in new]

    def heard(self) -> list[bytes]:
        self.collect()
        new = [p for _, p in self.voice_log[self._voice_read :]]
        self._voice_read = len(self.voice_log)
        return new


async def start_clients(
    relay: RelayProc, secrets: dict[str, bytes], spec: dict[str, Sequence[str]]
) -> dict[str, Client]:
    """Open and register a client per name (name -> groups to join), one after the other, then
    wait for each one's first floor message per group and forget it (the relay's Floor Idle, or
    Floor Taken when the group is busy)."""
    clients = {}
    for name, groups in spec.items():
        c = Client(name, secrets[ident(name)], relay.addr, groups)
        await c.open()
        await c.register()
        clients[name] = c
    for name, groups in spec.items():
        c, n = clients[name], len(groups)
        await c.until(lambda c=c, n=n: len(c.pending_floors()) >= n, 5, f"{c.identity}: the floor state")
    await asyncio.sleep(SETTLE_S)
    for c in clients.values():
        c.floors()
        c.heard()
    return clients


def close_all(clients: dict[str, Client]) -> None:
    for c in clients.values():
        c.close()


async def wait_for(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.005) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(every)


async def expect(
    want: dict[Client, list[tuple[Any, ...]]],
    group: str | None = None,
    timeout: float = 5.0,
    settle: float = SETTLE_S,
) -> None:
    """Each client receives exactly ``want[client]`` (in order) from now on, and nothing else
    within ``settle`` seconds after the last expected message; clients listed with [] must get
    nothing. Consumes what it compared."""

    def enough() -> bool:
        return all(len(c.pending_floors()) >= len(w) for c, w in want.items())

    try:
        await wait_for(enough, timeout, "the expected floor messages")
    except AssertionError:
        got = {c.name: [view(m) for _, _, m in c.pending_floors()] for c in want}
        raise AssertionError(f"expected { ({c.name: w for c, w in want.items()}) }, got {got}") from None
    await asyncio.sleep(settle)
    got = {c.name: c.floors(group) for c in want}
    exp = {c.name: w for c, w in want.items()}
    assert got == exp, f"expected {exp}, got {got}"


async def nothing_more(clients: Sequence[Client], within: float = 0.3) -> None:
    """No floor message and no voice for any of ``clients`` within ``within`` seconds."""
    await asyncio.sleep(within)
    for c in clients:
        floors = c.floors()
        assert floors == [], f"{c.identity} got floor messages {floors}"
        n = len(c.heard())
        assert n == 0, f"{c.identity} heard {n} voice packets"


def is_device_control(data: bytes) -> bool:
    try:
        return sig.is_sig(data) and sig.peek(data).type == sig.DEVICE_CONTROL
    except Exception:
        return False


def sig_type(data: bytes) -> int | None:
    try:
        return sig.peek(data).type if sig.is_sig(data) else None
    except Exception:
        return None
