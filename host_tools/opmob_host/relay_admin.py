"""The operator's admin channel of a running CPython relay: stun, revive or kill a device, or end a
group's emergency as a dispatcher, without restarting anything (docs/relay-drivers.md, "Operating
the relay").

A Unix domain stream socket (``[admin] socket`` in relay.toml; by default beside the registry,
``registry.admin.sock`` for ``registry.sqlite``), created with mode 0600, so only the relay's own
user and root can connect; the peer's uid is checked again with SO_PEERCRED. One JSON object per
line in, one JSON object per line out::

    {"op": "stun", "identity": "ola.nordmann@no"}          stun | revive | kill
    {"op": "cancel-emergency", "group": "fire-oslo@no"}
    {"op": "ping"}
    -> {"ok": true, "op": "stun", "identity": "ola.nordmann@no", "datagrams": 1}
    -> {"ok": false, "error": "unknown_identity", "message": "no such device"}

Error codes: ``bad_request`` (not a JSON object of the shape above), ``unknown_op``,
``unknown_identity``, ``unknown_group``, ``killed`` (the device is killed: final), ``refused``
(another refusal by the core, with its message), ``internal`` (the core raised: a bug, logged by
the driver), ``too_long``, ``forbidden`` (a uid that is neither root nor the relay's), ``busy``.

Bounds: a request line is at most ``MAX_LINE`` bytes, at most ``MAX_CLIENTS`` connections are
served at once, a connection that sends nothing for ``IDLE_TIMEOUT_S`` is closed, and one
connection carries at most ``MAX_REQUESTS`` requests. The core is called on the relay's own event
loop through the UDP driver (``UdpDriver.act``), so its answers (DEVICE_CONTROL to the device,
floor messages after an emergency cancel) leave at once and its timers are re-armed.

Every request that changes something is logged with the operator's uid (an audit trail); nothing
logged or answered carries a key or a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Protocol

from opmob_host.udp_driver import Outgoing, UdpDriver

log = logging.getLogger("opmob.relay")

MAX_LINE = 1024
MAX_CLIENTS = 4
MAX_REQUESTS = 64
IDLE_TIMEOUT_S = 10.0
SUN_PATH_MAX = 107  # Linux: sun_path holds 108 bytes with the terminating NUL
ADMIN_COUNTERS = ("admin_requests", "admin_done", "admin_refused", "admin_errors")

DEVICE_OPS = ("stun", "revive", "kill")
GROUP_OPS = ("cancel-emergency",)
OPS = (*DEVICE_OPS, *GROUP_OPS, "ping")

# The core's refusals (Relay.device_control, Relay.cancel_emergency) and the codes they get here.
_CORE_REFUSALS = {
    "no such device": "unknown_identity",
    "no such group": "unknown_group",
    "device is killed; that is final": "killed",
}


class AdminCore(Protocol):
    def device_control(self, now: int, identity: str, action: str) -> Outgoing: ...

    def cancel_emergency(self, now: int, group: str) -> Outgoing: ...


class AdminSocketError(Exception):
    """The admin socket cannot be set up; the message says why and what to change."""


def default_socket_path(registry_path: str | os.PathLike[str]) -> str:
    """Beside the registry: ``/var/lib/opmob/registry.sqlite`` -> ``/var/lib/opmob/registry.admin.sock``."""
    p = Path(registry_path)
    return str(p.with_name(p.stem + ".admin.sock"))


def valid_identity(v: object) -> bool:
    from opmob.sig import valid_identity as check

    return isinstance(v, str) and bool(check(v))


def _someone_listens(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:
            return True  # a listener whose backlog is full is still a listener
        return True


def bind_admin_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` with mode 0600 from the moment it exists.

    A socket file left by a relay that died (nobody listens) is replaced; a file that is not a
    socket, or a socket another process listens on, is an error: never take over another relay's
    channel or delete a file that is not ours.
    """
    n = len(os.fsencode(path))
    if n > SUN_PATH_MAX:
        raise AdminSocketError(
            f"{path}: too long for a Unix socket ({n} bytes, at most {SUN_PATH_MAX}); "
            "set a shorter [admin] socket"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise AdminSocketError(f"{path}: cannot be checked ({e.strerror})") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise AdminSocketError(
                f"{path} exists and is not a socket; remove it or set another [admin] socket"
            )
        if _someone_listens(path):
            raise AdminSocketError(
                f"{path}: another relay is serving this admin socket; give each relay its own [admin] socket"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: its relay died without removing it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask makes the file 0600 at bind time: no moment in which others could connect.
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise AdminSocketError(f"{path}: cannot create the admin socket ({e.strerror or e})") from None
    return sock


def peer_uid(sock: socket.socket | None) -> int | None:
    """The connecting process's uid (SO_PEERCRED), or None where the platform cannot tell."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


class AdminServer:
    """Serves the admin socket for one relay core, on the loop that runs the core."""

    def __init__(
        self,
        driver: UdpDriver,
        core: AdminCore,
        path: str,
        *,
        logger: logging.Logger = log,
        max_clients: int = MAX_CLIENTS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.driver = driver
        self.core = core
        self.path = path
        self.logger = logger
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.counters: dict[str, int] = dict.fromkeys(ADMIN_COUNTERS, 0)
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._active = 0
        self._uids = {0, os.getuid()}

    async def open(self) -> None:
        sock = bind_admin_socket(self.path)
        try:
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_LINE)
        except OSError as e:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise AdminSocketError(
                f"{self.path}: cannot serve the admin socket ({e.strerror or e})"
            ) from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None
        # Remove the file only if it is still ours (a relay started since may have replaced it).
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    # --- connections ----------------------------------------------------------------------------
    async def _reply(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        writer.write(json.dumps(body, sort_keys=True).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), self.idle_timeout_s)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._active >= self.max_clients:
                self.counters["admin_refused"] += 1
                await self._reply(writer, _error("busy", "too many admin connections; try again"))
                return
            uid = peer_uid(writer.get_extra_info("socket"))
            if uid is not None and uid not in self._uids:
                self.counters["admin_refused"] += 1
                self.logger.warning("admin: connection from uid %d refused", uid)
                await self._reply(writer, _error("forbidden", "only root and the relay's user may do this"))
                return
            self._active += 1
            try:
                await self._serve(reader, writer, uid)
            finally:
                self._active -= 1
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: int | None
    ) -> None:
        for _ in range(MAX_REQUESTS):
            try:
                line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
            except ValueError:  # the line is longer than the stream's limit
                self.counters["admin_refused"] += 1
                await self._reply(writer, _error("too_long", f"a request is at most {MAX_LINE} bytes"))
                return
            if not line.endswith(b"\n"):
                return  # end of stream (or a last line without its newline: not a request)
            await self._reply(writer, self.execute(line, uid))

    # --- requests -------------------------------------------------------------------------------
    def execute(self, line: bytes, uid: int | None = None) -> dict[str, Any]:
        """The answer to one request line (also callable without a socket, by tests)."""
        self.counters["admin_requests"] += 1
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            req = None
        if not isinstance(req, dict):
            self.counters["admin_refused"] += 1
            return _error("bad_request", 'expected one JSON object per line, e.g. {"op": "ping"}')
        op = req.get("op")
        if op not in OPS:
            self.counters["admin_refused"] += 1
            return _error("unknown_op", "op must be one of " + ", ".join(OPS))
        assert isinstance(op, str)
        if op == "ping":
            if set(req) != {"op"}:
                self.counters["admin_refused"] += 1
                return _error("bad_request", "ping takes no arguments")
            self.counters["admin_done"] += 1
            return {"ok": True, "op": "ping"}
        key = "identity" if op in DEVICE_OPS else "group"
        target = req.get(key)
        if set(req) != {"op", key} or not valid_identity(target):
            self.counters["admin_refused"] += 1
            what = "a device identity" if key == "identity" else "a group identity"
            return _error("bad_request", f'{op} takes "{key}": {what}, name@system')
        assert isinstance(target, str)
        return self._call(op, key, target, uid)

    def _call(self, op: str, key: str, target: str, uid: int | None) -> dict[str, Any]:
        refusal: list[str] = []
        sent: list[int] = []

        def fn(now: int) -> Outgoing:
            try:
                if op == "cancel-emergency":
                    out = list(self.core.cancel_emergency(now, target) or ())
                else:
                    out = list(self.core.device_control(now, target, op) or ())
            except ValueError as e:
                refusal.append(str(e))
                return None
            sent.append(len(out))
            return out

        who = f"uid {uid}" if uid is not None else "an unknown uid"
        if not self.driver.act(fn, "admin " + op):
            self.counters["admin_errors"] += 1
            self.logger.error("admin: %s %s by %s failed: the core raised (see above)", op, target, who)
            return _error("internal", "the relay could not do it (an internal error, logged by the relay)")
        if refusal:
            msg = refusal[0]
            code = _CORE_REFUSALS.get(msg, "refused")
            self.counters["admin_refused"] += 1
            self.logger.info("admin: %s %s by %s refused: %s", op, target, who, msg)
            return _error(code, msg)
        self.counters["admin_done"] += 1
        self.logger.info("admin: %s %s by %s: done, %d datagrams sent", op, target, who, sent[0])
        return {"ok": True, "op": op, key: target, "datagrams": sent[0]}


# --- the client side (opmob relay control) ---------------------------------------------------------
class AdminUnavailable(Exception):
    """No relay answers on the admin socket; the message says what was found."""


def request(path: str, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the relay's admin socket and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise AdminUnavailable(f"no admin socket at {path}: is the relay running?") from None
        except ConnectionRefusedError:
            raise AdminUnavailable(
                f"nobody answers on {path} (a socket left by a relay that stopped): is the relay running?"
            ) from None
        except PermissionError:
            raise AdminUnavailable(
                f"{path}: permission denied; run this as root or as the relay's user"
            ) from None
        except TimeoutError:
            raise AdminUnavailable(f"{path}: the relay did not accept within {timeout} s") from None
        except OSError as e:
            raise AdminUnavailable(f"{path}: cannot connect ({e.strerror or e})") from None
        data = b""
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
                if len(data) > 1 << 16:
                    break
        except TimeoutError:
            raise AdminUnavailable(f"{path}: no answer within {timeout} s") from None
        except OSError as e:
            raise AdminUnavailable(f"{path}: the connection failed ({e.strerror or e})") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise AdminUnavailable(f"{path}: the answer is not JSON; is this a relay's admin socket?") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise AdminUnavailable(f"{path}: unexpected answer; is this a relay's admin socket?")
    return reply
