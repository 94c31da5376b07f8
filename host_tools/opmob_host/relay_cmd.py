"""``opmob relay``: run, check and query a relay.

    opmob relay run --config relay.toml [--registry-import FILE]
    opmob relay check --config relay.toml
    opmob relay status [--url http://127.0.0.1:7780]
    opmob relay control --config relay.toml stun|revive|kill IDENTITY
    opmob relay control --config relay.toml cancel-emergency GROUP

Exit codes: 0 done; 1 the relay could not run (port taken, store unreadable, socket lost) or, for
``control``, cannot be reached; 2 the technician must fix an input (configuration, registry export,
URL, an identity the relay does not know). Every message names the file and, where there is one,
the key or record at fault. Relative paths inside relay.toml are taken from the directory of
relay.toml, so a relay behaves the same whatever directory it starts in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opmob.relay_config import RelayConfig

    from opmob_host.accel import Backend

PREFIX = "opmob relay"
DEFAULT_STATUS_URL = "http://127.0.0.1:7780"
MAX_STATUS_BYTES = 16 << 20


class Failure(Exception):
    """A message for the technician and the exit code that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    r = sub.add_parser("relay", help="run, check or query a relay")
    rs = r.add_subparsers(dest="relay_command", metavar="ACTION", required=True)

    run = rs.add_parser("run", help="run the relay until SIGTERM or Ctrl-C")
    run.add_argument(
        "--config", required=True, help="the relay's TOML configuration (boards/rpi-relay/relay.toml)"
    )
    run.add_argument(
        "--registry-import",
        metavar="FILE",
        help="a registry export (JSON) to merge into the registry before serving; replaces [registry] import",
    )

    check = rs.add_parser("check", help="validate a configuration and exit (0: valid, 2: not)")
    check.add_argument("--config", required=True, help="the relay's TOML configuration")

    st = rs.add_parser("status", help="fetch a running relay's status and print it as JSON")
    st.add_argument(
        "--url",
        default=DEFAULT_STATUS_URL,
        help=f"the relay's status endpoint (default {DEFAULT_STATUS_URL})",
    )
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")

    ctl = rs.add_parser(
        "control",
        help="stun, revive or kill a device, or cancel a group's emergency, on the running relay",
        description="Talks to the running relay over its admin socket ([admin] socket in relay.toml). "
        "stun: the device is refused everything at once and told so (within one keep-alive at most); "
        "revive: it is served again; kill: it is refused for good and erases its secret (final). "
        "cancel-emergency: ends a group's emergency and imminent-peril state and its alerts, as a dispatcher.",
    )
    ctl.add_argument("--config", required=True, help="the running relay's TOML configuration")
    ctl.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the relay")
    ctl.add_argument("action", choices=["stun", "revive", "kill", "cancel-emergency"], help="what to do")
    ctl.add_argument(
        "target", metavar="IDENTITY|GROUP", help="the device (name@system), or the group for cancel-emergency"
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.relay_command == "run":
            return cmd_run(args.config, args.registry_import)
        if args.relay_command == "check":
            return cmd_check(args.config)
        if args.relay_command == "status":
            return cmd_status(args.url, args.timeout)
        if args.relay_command == "control":
            return cmd_control(args.config, args.action, args.target, args.timeout)
    except Failure as f:
        print(f"{PREFIX}: {f}", file=sys.stderr)
        return f.code
    raise AssertionError(f"unhandled relay command {args.relay_command}")


# --- configuration -----------------------------------------------------------------------------------


def load_config(path: str) -> RelayConfig:
    from opmob.relay_config import ConfigError, RelayConfig

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise Failure(
            f"{path}: cannot read the configuration ({e.strerror}); give the relay's TOML file with --config",
            2,
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise Failure(f"{path}: not valid TOML: {e}", 2) from None
    except UnicodeDecodeError:
        raise Failure(f"{path}: not valid TOML: the file is not UTF-8 text", 2) from None
    try:
        cfg = RelayConfig.from_dict(doc)
    except ConfigError as e:
        raise Failure(f"{path}: {e}", 2) from None
    base = Path(path).resolve().parent
    cfg.registry_path = str(base / cfg.registry_path)
    if cfg.registry_import:
        cfg.registry_import = str(base / cfg.registry_import)
    cfg.admin_socket = admin_socket(cfg, base)
    for lk in cfg.links:
        lk.key_file = str(base / lk.key_file)
    return cfg


def load_links(cfg: RelayConfig, path: str, backend: Backend | None) -> None:
    """Read the link keys (mode 0600, never shown) and check each link's codec can run here."""
    from opmob.relay_config import ConfigError, load_link_keys

    try:
        load_link_keys(cfg)
    except ConfigError as e:
        raise Failure(f"{path}: {e}", 2) from None
    if backend is None or backend.can_transcode:
        return
    for i, lk in enumerate(cfg.links):
        if lk.transcodes:
            raise Failure(
                f"{path}: link[{i}] to {lk.peer}: codec {lk.codec} needs Codec2, which only the C extension "
                f'has, and this relay runs the pure backend; build it (make setup) or use codec = "dvi4"',
                2,
            )


def admin_socket(cfg: RelayConfig, base: Path) -> str:
    """The admin socket's path: [admin] socket (relative to relay.toml), else beside the registry."""
    from opmob_host.relay_admin import default_socket_path

    if cfg.admin_socket:
        return str(base / cfg.admin_socket)
    return default_socket_path(cfg.registry_path)


def describe(cfg: RelayConfig) -> str:
    return (
        f"relay {cfg.identity}: udp {_hostport(cfg.listen_host, cfg.listen_port)}, status {_status_url(cfg)}"
    )


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _status_url(cfg: RelayConfig) -> str:
    if not cfg.status_port:
        return "off"
    return f"http://{_hostport(cfg.status_host, cfg.status_port)}/status"


def cmd_check(path: str) -> int:
    cfg = load_config(path)
    load_links(cfg, path, select_accel(cfg, path)[0] if cfg.links else None)
    print(f"{PREFIX}: {path}: OK: {describe(cfg)}, registry {cfg.registry_path}, admin {cfg.admin_socket}")
    if cfg.registry_import:
        print(f"{PREFIX}: {path}: imports {cfg.registry_import} at every start")
    return 0


# --- run --------------------------------------------------------------------------------------------------


def _read_export(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        raise Failure(
            f"{path}: cannot read the registry export ({e.strerror}); nothing was imported", 2
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Failure(
            f"{path}: the registry export is not valid JSON ({e}); nothing was imported", 2
        ) from None


def _import_summary(path: str, report: Any) -> str:
    if not isinstance(report, dict):
        return f"registry import {path}: done"
    parts = [
        f"{report.get('devices_added', 0)} devices added",
        f"{report.get('devices_updated', 0)} updated",
        f"{report.get('groups_added', 0)} groups added",
        f"{report.get('groups_updated', 0)} updated",
    ]
    kept = report.get("status_kept") or []
    if kept:
        parts.append("stored status kept (more severe than the export's) for " + ", ".join(map(str, kept)))
    return f"registry import {path}: " + ", ".join(parts)


def _setup_logging() -> logging.Logger:
    # Under systemd the journal stamps every line; on a terminal the time is ours to add.
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(message)s"
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger("opmob.relay")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


# The voice fan-out (one talker packet re-protected for each listener) goes through one batch call
# of the C extension from this many listeners on; below it the per-packet calls are as fast
# (bench_cext.py, relay.cpu_per_packet_us.*: about even at 10 listeners, batch ahead from ~16).
BATCH_FROM = 16


def select_accel(cfg: RelayConfig, config: str) -> tuple[Backend, str]:
    """The SRTP backend for ``opmob relay run``: $OPMOB_ACCEL if set, else ``relay.accel``."""
    from opmob_host import accel

    env = os.environ.get(accel.ENV, "").strip()
    source = accel.ENV if env else f"{config} relay.accel"
    try:
        return accel.select(env or cfg.accel), source
    except accel.AccelUnavailable as e:
        raise Failure(f"{source} = c: {e}; or set it to auto or pure", 2) from None
    except ValueError:
        raise Failure(f"{accel.ENV}={env!r}: expected one of {', '.join(accel.CHOICES)}", 2) from None


def fanout_for(backend: Backend) -> Callable[[Sequence[Any], Sequence[bytes]], list[Any]] | None:
    """``Relay(fanout=...)`` for ``backend``: None on the pure one (the core's own loop)."""
    if backend.name != "c":
        return None
    from opmob.errors import WireError

    batch = backend.protect_batch

    def fanout(sessions: Sequence[Any], packets: Sequence[bytes]) -> list[Any]:
        if len(packets) >= BATCH_FROM:
            return batch(list(sessions), packets)
        out: list[Any] = []
        for s, p in zip(sessions, packets, strict=True):
            try:
                out.append(s.protect(p))
            except WireError as e:
                out.append(e)
        return out

    return fanout


def cmd_run(config: str, registry_import: str | None) -> int:
    from opmob.registry import Registry, RegistryError
    from opmob.relay import Relay
    from opmob.store import StoreError
    from opmob.ticks import now_ms

    from opmob_host.relay_admin import AdminSocketError
    from opmob_host.relay_server import BindError, RelayServer, run_relay
    from opmob_host.sqlite_store import SqliteStore

    cfg = load_config(config)
    backend, accel_source = select_accel(cfg, config)
    load_links(cfg, config, backend)
    import_path = registry_import or cfg.registry_import
    # Read and parse the export before the store is touched: a bad file changes nothing.
    export = _read_export(import_path) if import_path else None
    logger = _setup_logging()
    logger.info(
        "SRTP per-packet path: %s (%s, from %s)",
        backend.name,
        "C extension opmob_c" if backend.name == "c" else "pure-Python twin opmob.srtp",
        accel_source,
    )

    db = Path(cfg.registry_path)
    try:
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise Failure(
            f"cannot create the registry directory {db.parent} ({e.strerror}); create it, owned by the user the relay runs as",
            1,
        ) from None
    try:
        store = SqliteStore(db)
    except StoreError as e:
        raise Failure(f"{e}; check the file and the ownership of {db.parent}", 1) from None
    try:
        try:
            registry = Registry(store, cfg.system)
        except RegistryError as e:
            raise Failure(f"{db}: {e}; give this relay its own registry path in [registry] path", 2) from None
        if import_path:
            try:
                report = registry.load_export(export)
            except RegistryError as e:
                raise Failure(f"{import_path}: {e}; nothing was imported", 2) from None
            except StoreError as e:
                raise Failure(f"{import_path}: could not be stored ({e}); nothing was imported", 1) from None
            logger.info("%s", _import_summary(import_path, report))
        core = Relay(
            cfg,
            registry,
            store,
            os.urandom,
            now_ms(),
            srtp=backend.SrtpSession,
            fanout=fanout_for(backend),
            codec=backend.link_codec() if any(lk.transcodes for lk in cfg.links) else None,
        )

        def started(server: RelayServer) -> None:
            status = "off"
            if server.status_address is not None:
                status = f"http://{_hostport(server.status_address[0], server.status_address[1])}/status"
            assert server.listen_address is not None
            udp = _hostport(server.listen_address[0], server.listen_address[1])
            print(f"{PREFIX} {cfg.identity}: serving udp {udp}, status {status}", flush=True)

        status = (cfg.status_host, cfg.status_port) if cfg.status_port else None
        try:
            rc = run_relay(
                core,
                listen=(cfg.listen_host, cfg.listen_port),
                status=status,
                on_started=started,
                logger=logger,
                admin=cfg.admin_socket,
                accel=backend.name,
            )
        except BindError as e:
            hint = "[listen] port" if e.what == "udp" else "[status] port"
            raise Failure(f"{e}; is another relay running? otherwise change {hint} in {config}", 1) from None
        except AdminSocketError as e:
            raise Failure(f"admin socket {e} ({config})", 1) from None
        if rc:
            logger.error("the relay's UDP socket failed; exiting so that it can be restarted")
        return rc
    finally:
        try:
            store.close()
        except StoreError as e:
            logger.error("closing the registry: %s", e)
        else:
            logger.info("registry %s closed", db)


# --- status -----------------------------------------------------------------------------------------------


def status_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.netloc:
        raise Failure(
            f"{url}: expected the status endpoint as http://HOST:PORT (e.g. {DEFAULT_STATUS_URL})", 2
        )
    if parts.path in ("", "/"):
        parts = parts._replace(path="/status")
    return urllib.parse.urlunsplit(parts)


def cmd_status(url: str, timeout: float) -> int:
    doc = fetch_status(status_url(url), timeout)
    try:
        print(json.dumps(doc, indent=2, sort_keys=True), flush=True)
    except BrokenPipeError:
        # Piped into `head` or a pager that quit: not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def fetch_status(full: str, timeout: float) -> Any:
    """The relay's status document from ``full`` (a URL from status_url), or a Failure."""
    try:
        with urllib.request.urlopen(full, timeout=timeout) as resp:  # noqa: S310 (http only, checked above)
            body = resp.read(MAX_STATUS_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise Failure(f"{full}: the relay answered {e.code} {e.reason}", 1) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Failure(
            f"{full}: cannot reach the relay ({reason}); is it running (systemctl status opmob-relay) "
            "and is this its [status] host and port?",
            1,
        ) from None
    if len(body) > MAX_STATUS_BYTES:
        raise Failure(
            f"{full}: answer larger than {MAX_STATUS_BYTES} bytes; is this a relay's status endpoint?", 1
        )
    try:
        doc = json.loads(body)
    except ValueError:
        raise Failure(f"{full}: the answer is not JSON; is this a relay's status endpoint?", 1) from None
    return doc


# --- control ----------------------------------------------------------------------------------------------

_DONE = {
    "stun": "stunned: refused everything from now on",
    "revive": "revived: served again",
    "kill": "killed: refused for good (final)",
    "cancel-emergency": "emergency cancelled",
}
_NOT_LIVE = {
    "stun": "it has no registration here now; it is refused service when it registers",
    "revive": "it has no registration here now; the revive reaches it when it registers",
    "kill": "it has no registration here now; it can never register again",
}


def cmd_control(config: str, action: str, target: str, timeout: float) -> int:
    from opmob_host.relay_admin import AdminUnavailable, request, valid_identity

    cfg = load_config(config)
    what = "group" if action == "cancel-emergency" else "device"
    if not valid_identity(target):
        raise Failure(f"{target!r}: not a {what} identity; expected name@system (e.g. ola.nordmann@no)", 2)
    key = "group" if what == "group" else "identity"
    path = cfg.admin_socket
    assert path is not None
    try:
        reply = request(path, {"op": action, key: target}, timeout)
    except AdminUnavailable as e:
        raise Failure(f"{action} {target}: {e} (relay {cfg.identity}, {config})", 1) from None
    if not reply["ok"]:
        code = reply.get("error")
        msg = str(reply.get("message", ""))
        if code == "unknown_identity":
            raise Failure(f"{action} {target}: unknown identity: the relay's registry has no such device", 2)
        if code == "unknown_group":
            raise Failure(f"{action} {target}: unknown group: the relay's registry has no such group", 2)
        if code == "killed":
            raise Failure(f"{action} {target}: the device is killed, which is final", 2)
        raise Failure(f"{action} {target}: the relay refused ({code}: {msg})", 1 if code == "internal" else 2)
    n = reply.get("datagrams", 0)
    line = f"{PREFIX}: {action} {target}: {_DONE[action]}"
    if what == "device" and not n:
        line += f"; {_NOT_LIVE[action]}"
    elif action == "kill":
        line += "; the order was sent to the device, which erases its secret"
    elif what == "device":
        line += "; the order was sent to the device"
    print(line, flush=True)
    return 0
