"""The operator's admin channel (``opmob_host.relay_admin``) and ``opmob relay control``.

In-process, with a fake core behind a real ``RelayServer``: requests reach the core on the relay's
loop and what it returns is sent on the UDP socket; every malformed or refused request gets its
error code and changes nothing; a core that raises is an ``internal`` error logged without its
message; the socket is created 0600, refuses other users (file mode, then SO_PEERCRED), bounds
line length, connections and idleness, replaces a stale socket file but never a live one or a
file that is not a socket, and is removed at a clean stop.

With a real relay process: ``opmob relay control`` stuns, revives and kills a device and cancels a
group's emergency; clear errors (exit 2) for an unknown identity or group, a malformed identity and
a killed device; exit 1 when the relay is not running; a second relay cannot take the socket over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from opmob_host import relay_admin
from opmob_host.relay_admin import (
    MAX_LINE,
    AdminSocketError,
    bind_admin_socket,
    default_socket_path,
    request,
)
from opmob_host.relay_server import RelayServer
from relayproc import ROOT, Client, RelayProc, export_doc, short_dir

SECRET_MARKER = "5ec7e75ec7e75ec7"


class FakeCore:
    """A relay core's operator interface, recording calls; its datagrams go to ``peer``."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.calls: list[tuple[str, str]] = []

    def on_datagram(self, now: int, addr: Any, data: bytes) -> list[Any]:
        return []

    def poll(self, now: int) -> list[Any]:
        return []

    def next_deadline(self) -> int | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"fake": True}

    def device_control(self, now: int, identity: str, action: str) -> list[Any]:
        self.calls.append((action, identity))
        if identity == "zed@no":
            raise ValueError("no such device")
        if identity == "dead@no":
            raise ValueError("device is killed; that is final")
        if identity == "boom@no":
            raise RuntimeError(f"key {SECRET_MARKER} in a message")
        if identity == "offline@no":
            return []
        return [(self.peer, f"{action} {identity}".encode())]

    def cancel_emergency(self, now: int, group: str) -> list[Any]:
        self.calls.append(("cancel-emergency", group))
        if group == "nope@no":
            raise ValueError("no such group")
        return [(self.peer, b"cancel " + group.encode()), (self.peer, b"floor")]


@asynccontextmanager
async def served(path: str, **kw: Any) -> AsyncIterator[tuple[RelayServer, FakeCore, socket.socket]]:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    core = FakeCore(peer.getsockname())
    server = RelayServer(core, listen=("127.0.0.1", 0), status=None, admin=path)
    await server.start()
    try:
        yield server, core, peer
    finally:
        await server.close()
        peer.close()


async def ask(path: str, req: Any, timeout: float = 5.0) -> dict[str, Any]:
    return await asyncio.to_thread(request, path, req, timeout)


async def received(peer: socket.socket, n: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    return [(await asyncio.wait_for(loop.sock_recvfrom(peer, 4096), 5))[0] for _ in range(n)]


def lines(path: str, payload: bytes, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Send raw bytes, read answers until the relay closes or goes quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(x) for x in data.splitlines()]


def test_requests_reach_the_core_and_its_datagrams_leave(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "opmob.relay")

    async def main() -> None:
        with short_dir() as d:
            path = str(d / "admin.sock")
            async with served(path) as (server, core, peer):
                st = os.stat(path)
                assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
                assert st.st_uid == os.getuid()
                assert await ask(path, {"op": "ping"}) == {"ok": True, "op": "ping"}
                r = await ask(path, {"op": "stun", "identity": "ann@no"})
                assert r == {"ok": True, "op": "stun", "identity": "ann@no", "datagrams": 1}
                assert await received(peer, 1) == [b"stun ann@no"]
                r = await ask(path, {"op": "cancel-emergency", "group": "fire-1@no"})
                assert r == {"ok": True, "op": "cancel-emergency", "group": "fire-1@no", "datagrams": 2}
                assert await received(peer, 2) == [b"cancel fire-1@no", b"floor"]
                r = await ask(path, {"op": "revive", "identity": "offline@no"})
                assert r["ok"] is True and r["datagrams"] == 0
                assert core.calls == [
                    ("stun", "ann@no"),
                    ("cancel-emergency", "fire-1@no"),
                    ("revive", "offline@no"),
                ]
                st_ = server.status()["driver"]
                assert st_["admin_requests"] == 4 and st_["admin_done"] == 4 and st_["datagrams_out"] == 3
            assert not os.path.exists(path)  # removed at a clean stop

    asyncio.run(asyncio.wait_for(main(), 30))
    assert f"admin: stun ann@no by uid {os.getuid()}: done, 1 datagrams sent" in caplog.text


def test_refusals_and_malformed_requests(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with short_dir() as d:
            path = str(d / "admin.sock")
            async with served(path) as (server, core, peer):
                cases = [
                    ({"op": "stun", "identity": "zed@no"}, "unknown_identity", "no such device"),
                    ({"op": "revive", "identity": "dead@no"}, "killed", "device is killed; that is final"),
                    ({"op": "cancel-emergency", "group": "nope@no"}, "unknown_group", "no such group"),
                ]
                for req, code, msg in cases:
                    assert await ask(path, req) == {"ok": False, "error": code, "message": msg}
                # A core that raises: an internal error, counted, logged without its message.
                r = await ask(path, {"op": "kill", "identity": "boom@no"})
                assert r["ok"] is False and r["error"] == "internal" and SECRET_MARKER not in json.dumps(r)
                assert server.driver.counters["driver_errors"] == 1
                n_calls = len(core.calls)
                bad = [
                    b"not json\n",
                    b"[1, 2]\n",
                    b'{"op": "explode", "identity": "ann@no"}\n',
                    b'{"op": "stun"}\n',
                    b'{"op": "stun", "identity": "Ann Nordmann"}\n',
                    b'{"op": "stun", "identity": 7}\n',
                    b'{"op": "stun", "identity": "ann@no", "force": true}\n',
                    b'{"op": "stun", "group": "fire-1@no"}\n',
                    b'{"op": "cancel-emergency", "identity": "ann@no"}\n',
                    b'{"op": "ping", "x": 1}\n',
                    b"\xff\xfe\n",
                ]
                got = await asyncio.to_thread(lines, path, b"".join(bad))
                assert [g["error"] for g in got] == [
                    "bad_request",
                    "bad_request",
                    "unknown_op",
                    "bad_request",
                    "bad_request",
                    "bad_request",
                    "bad_request",
                    "bad_request",
                    "bad_request",
                    "bad_request",
                    "bad_request",
                ]
                assert all(g["ok"] is False and g["message"] for g in got)
                assert len(core.calls) == n_calls  # none reached the core
                # Several requests on one connection, answered in order.
                got = await asyncio.to_thread(
                    lines, path, b'{"op": "ping"}\n{"op": "stun", "identity": "bob@no"}\n{"op": "ping"}\n'
                )
                assert [g["ok"] for g in got] == [True, True, True] and got[1]["identity"] == "bob@no"
                # A line over the limit: refused, and the connection closed.
                got = await asyncio.to_thread(lines, path, b"x" * (MAX_LINE + 10) + b'\n{"op": "ping"}\n')
                assert [g["error"] for g in got] == ["too_long"]
                # A last line without its newline is not a request.
                assert await asyncio.to_thread(lines, path, b'{"op": "ping"}') == []
                assert server.status()["driver"]["admin_errors"] == 1

    asyncio.run(asyncio.wait_for(main(), 30))
    assert "core raised RuntimeError in admin kill" in caplog.text
    assert SECRET_MARKER not in caplog.text


def test_connections_are_bounded_and_idle_ones_closed() -> None:
    async def main() -> None:
        with short_dir() as d:
            path = str(d / "admin.sock")
            async with served(path) as (server, _core, _peer):
                assert server.admin is not None
                server.admin.max_clients = 2
                server.admin.idle_timeout_s = 0.3
                held = []
                for _ in range(2):
                    r, w = await asyncio.open_unix_connection(path)
                    w.write(b'{"op": "ping"}\n')
                    assert json.loads(await r.readline())["ok"] is True
                    held.append((r, w))
                r3, w3 = await asyncio.open_unix_connection(path)
                assert json.loads(await r3.readline())["error"] == "busy"
                assert await r3.read() == b""
                w3.close()
                # The two held connections say nothing: closed after the idle time.
                t0 = time.monotonic()
                for r, w in held:
                    assert await asyncio.wait_for(r.read(), 5) == b""
                    w.close()
                assert time.monotonic() - t0 < 2
                assert await ask(path, {"op": "ping"}) == {"ok": True, "op": "ping"}

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_socket_file_is_never_taken_from_someone_else() -> None:
    async def main() -> None:
        with short_dir() as d:
            path = str(d / "admin.sock")
            # A regular file where the socket should be: refused, left alone.
            Path(path).write_text("keep me")
            with pytest.raises(AdminSocketError, match="exists and is not a socket"):
                bind_admin_socket(path)
            assert Path(path).read_text() == "keep me"
            os.unlink(path)
            # A stale socket (its relay died): replaced.
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(path)
            stale.close()
            async with served(path) as (server, _core, _peer):
                assert await ask(path, {"op": "ping"}) == {"ok": True, "op": "ping"}
                # A second relay on the same path: refused, and the first keeps serving.
                with pytest.raises(AdminSocketError, match="another relay is serving"):
                    bind_admin_socket(path)
                second = RelayServer(
                    FakeCore(("127.0.0.1", 9)), listen=("127.0.0.1", 0), status=None, admin=path
                )
                with pytest.raises(AdminSocketError):
                    await second.start()
                assert not second.driver.is_open  # what it had opened is closed again
                assert await ask(path, {"op": "ping"}) == {"ok": True, "op": "ping"}
                # Someone replaced the file meanwhile: the first relay leaves the new one alone.
                os.unlink(path)
                newer = bind_admin_socket(path)
            assert os.path.exists(path)
            newer.close()
            os.unlink(path)
            with pytest.raises(AdminSocketError, match="too long for a Unix socket"):
                bind_admin_socket(str(d / ("x" * 120)))
            with pytest.raises(AdminSocketError, match="cannot create"):
                bind_admin_socket(str(d / "no-such-dir" / "admin.sock"))

    asyncio.run(asyncio.wait_for(main(), 30))


CONNECT_AS_OTHER_USER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit(0)
try:
    s.sendall(b'{"op": "stun", "identity": "ann@no"}\\n')
except BrokenPipeError:
    pass  # the relay may have answered and closed before the request went out
print(s.makefile().readline().strip())
"""


# The venv's interpreter may live where another user cannot run it (under /root); the client needs
# the standard library only.
OTHER_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.skipif(not os.access(OTHER_PYTHON, os.X_OK), reason=f"{OTHER_PYTHON} not installed")
def test_other_users_are_refused() -> None:
    async def main() -> None:
        with short_dir() as d:
            os.chmod(d, 0o711)  # others may reach the socket; its own mode must stop them
            path = str(d / "admin.sock")
            async with served(path) as (server, core, _peer):

                def as_nobody() -> str:
                    p = subprocess.run(
                        [OTHER_PYTHON, "-I", "-c", CONNECT_AS_OTHER_USER, path],
                        capture_output=True,
                        text=True,
                        timeout=30,
                        user=65534,
                        group=65534,
                        extra_groups=[],
                    )
                    assert p.returncode == 0, p.stderr
                    return p.stdout.strip()

                assert await asyncio.to_thread(as_nobody) == "EACCES"  # mode 0600
                # Even if the file's mode were opened up, the peer's uid is checked.
                os.chmod(path, 0o666)
                reply = json.loads(await asyncio.to_thread(as_nobody))
                assert reply["ok"] is False and reply["error"] == "forbidden"
                assert core.calls == []
                assert server.status()["driver"]["admin_refused"] == 1

    asyncio.run(asyncio.wait_for(main(), 30))


def test_default_socket_path_is_beside_the_registry() -> None:
    assert default_socket_path("/var/lib/opmob/registry.sqlite") == "/var/lib/opmob/registry.admin.sock"
    assert default_socket_path("/data/reg") == "/data/reg.admin.sock"
    assert relay_admin.valid_identity("ann@no") and not relay_admin.valid_identity("ann")


# --- opmob relay control against a real relay ------------------------------------------------------------


def opmob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", "relay", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


G = "fire-1@no"


def test_relay_control_command() -> None:
    with short_dir() as d:
        doc, secrets = export_doc({"ann": (100, [G]), "bob": (100, [G])}, [G])
        r = RelayProc(d, doc, default_admin=True)
        with r:
            out = opmob("check", "--config", str(r.config_path))
            assert out.returncode == 0 and f"admin {d / 'state' / 'registry.admin.sock'}" in out.stdout
            st = os.stat(r.admin_path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600

            async def main() -> None:
                ann = Client("ann", secrets["ann@no"], r.addr, [G])
                await ann.open()
                try:
                    await ann.register()
                    # Errors the operator must fix: exit 2, and nothing changes.
                    for args, words in [
                        (("stun", "zed@no"), "stun zed@no: unknown identity"),
                        (("stun", "Ann Nordmann"), "'Ann Nordmann': not a device identity"),
                        (("cancel-emergency", "nope@no"), "cancel-emergency nope@no: unknown group"),
                    ]:
                        res = await asyncio.to_thread(r.control, *args)
                        assert res.returncode == 2 and words in res.stderr, res
                        assert res.stderr.startswith("opmob relay: ") and res.stdout == ""
                    # bob is known but not registered: the registry remembers the stun.
                    res = await asyncio.to_thread(r.control, "stun", "bob@no")
                    assert res.returncode == 0, res.stderr
                    assert "stun bob@no: stunned" in res.stdout and "no registration here now" in res.stdout
                    # ann is registered: killed for good.
                    res = await asyncio.to_thread(r.control, "kill", "ann@no")
                    assert res.returncode == 0, res.stderr
                    assert "kill ann@no: killed" in res.stdout and "order was sent" in res.stdout
                    await ann.until(lambda: ann.dev.state == "killed", 5, "ann killed")
                    assert ("killed",) in ann.events("killed")
                    res = await asyncio.to_thread(r.control, "revive", "ann@no")
                    assert res.returncode == 2 and "the device is killed, which is final" in res.stderr
                    st = await r.astatus()
                    assert st["killed"] == ["ann@no"] and st["stunned"] == ["bob@no"]
                    assert [x["identity"] for x in st["devices"]] == []
                    for text in (res.stdout, res.stderr):
                        for s in secrets.values():
                            assert s.hex() not in text
                finally:
                    ann.close()

            asyncio.run(asyncio.wait_for(main(), 30))

            # A second relay with the same admin socket does not start, and does not take it over.
            cfg2 = d / "second.toml"
            cfg2.write_text(
                '[relay]\nidentity = "relay-2@no"\n[listen]\nhost = "127.0.0.1"\nport = 0\n'
                f'[status]\nport = 0\n[registry]\npath = "second/registry.sqlite"\n'
                f'[admin]\nsocket = "{r.admin_path}"\n'
            )
            second = opmob("run", "--config", str(cfg2))
            assert second.returncode == 1
            assert "another relay is serving this admin socket" in second.stderr, second.stderr
            assert r.admin("ping") == {"ok": True, "op": "ping"}
        # Stopped cleanly: the socket is gone, and the command says the relay is not running.
        assert not os.path.exists(r.admin_path)
        res = r.control("stun", "bob@no")
        assert res.returncode == 1
        assert f"no admin socket at {r.admin_path}: is the relay running?" in res.stderr
