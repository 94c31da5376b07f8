"""The fleet inventory (docs/technician.md): one TOML file per system, listing its relays, groups
and devices; ``opmob provision`` records each device's secret and configuration hash in it.

It holds secrets: it is written with mode 0600, whole or not at all (a temporary file in the same
directory, synced, renamed over the old one), under a lock file so two provisions never interleave.
An inventory holding secrets that other users can read is refused until it is mode 0600.
Every field is checked and unknown fields are errors, as in the registry export.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opmob.sig import system_of, valid_identity

from opmob_host.devlink import TechnicianError

FORMAT = "opmob-fleet"
VERSION = 1
_TOP = ("format", "version", "system", "partners", "comment", "defaults", "relays", "groups", "devices")
_RELAY = ("identity", "host", "port", "ssid", "psk")
_GROUP = ("identity", "policy", "e2e", "key_ids", "receive_only", "label", "priority")
_DEFAULTS = ("board", "groups", "scan", "ceiling", "floor_priority")
# Written by opmob provision: secret, hardware_id, config_sha256, provisioned.
_DEVICE = _DEFAULTS + (
    "identity",
    "status",
    "comment",
    "secret",
    "hardware_id",
    "config_sha256",
    "provisioned",
)
_STATUSES = ("active", "stunned", "killed")
HEADER = (
    "# OpMob fleet inventory (docs/technician.md). It holds device secrets: keep it mode 0600, never\n"
    "# mail it. opmob provision rewrites this file (comments other than this header are not kept).\n"
)


class Inventory:
    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc

    @property
    def system(self) -> str:
        s: str = self.doc["system"]
        return s

    def devices(self) -> list[dict[str, Any]]:
        devs: list[dict[str, Any]] = self.doc.setdefault("devices", [])
        return devs

    def groups(self) -> list[dict[str, Any]]:
        gs: list[dict[str, Any]] = self.doc.get("groups", [])
        return gs

    def device(self, identity: str) -> dict[str, Any] | None:
        for d in self.devices():
            if d["identity"] == identity:
                return d
        return None

    def group(self, identity: str) -> dict[str, Any] | None:
        for g in self.groups():
            if g["identity"] == identity:
                return g
        return None

    def add_device(self, identity: str) -> dict[str, Any]:
        """A new device record from ``[defaults]``."""
        if not valid_identity(identity) or system_of(identity) != self.system:
            raise TechnicianError(
                f"{identity!r} is not a device identity of system {self.system} (name@{self.system}, "
                "lower-case a-z 0-9 . _ -)"
            )
        defaults = self.doc.get("defaults")
        if not defaults:
            raise TechnicianError(
                f"device {identity} is not in {self.path}, and the inventory has no [defaults] to "
                "create it from: add a [[devices]] entry for it"
            )
        rec = {"identity": identity}
        rec.update(json.loads(json.dumps(defaults)))
        self.devices().append(rec)
        check(self.doc, str(self.path))
        return rec

    def save(self) -> None:
        check(self.doc, str(self.path))
        write_atomic(self.path, dumps(self.doc).encode())


def _err(where: str, problems: list[str]) -> TechnicianError:
    return TechnicianError(f"inventory {where}: " + "; ".join(problems))


def _identity_list(v: Any) -> bool:
    return isinstance(v, list) and all(valid_identity(x) for x in v) and len(set(v)) == len(v)


def _int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _check_device_fields(d: dict[str, Any], key: str, problems: list[str], full: bool) -> None:
    if "board" in d and not (isinstance(d["board"], str) and d["board"]):
        problems.append(f"{key}.board: expected a board name (boards/NAME.json)")
    if "groups" in d and not (_identity_list(d["groups"]) and 1 <= len(d["groups"]) <= 16):
        problems.append(f"{key}.groups: expected 1..16 group identities, no repeats")
    if "scan" in d and not (_identity_list(d["scan"]) and len(d["scan"]) <= 16):
        problems.append(f"{key}.scan: expected up to 16 group identities, no repeats")
    if "ceiling" in d and not _int(d["ceiling"], 0, 255):
        problems.append(f"{key}.ceiling: expected 0..255")
    if "floor_priority" in d and not _int(d["floor_priority"], 0, 255):
        problems.append(f"{key}.floor_priority: expected 0..255")
    if full:
        for req in ("board", "groups", "ceiling"):
            if req not in d:
                problems.append(f"{key}.{req}: required (or in [defaults])")
        if set(d.get("groups", [])) & set(d.get("scan", [])):
            problems.append(f"{key}: a group in both groups and scan")


def check(doc: dict[str, Any], where: str) -> None:
    """Raise TechnicianError naming every problem (never quoting a secret)."""
    problems: list[str] = []
    for k in doc:
        if k not in _TOP:
            problems.append(f"{k}: unknown field")
    if doc.get("format") != FORMAT:
        problems.append(f'format: expected "{FORMAT}"')
    if doc.get("version") != VERSION:
        problems.append(f"version: this opmob reads version {VERSION}, got {doc.get('version')!r}")
    system = doc.get("system")
    if not (isinstance(system, str) and valid_identity("x@" + system)):
        problems.append("system: expected a system code (a-z 0-9 -), e.g. no")
        raise _err(where, problems)
    partners = doc.get("partners", [])
    if not (isinstance(partners, list) and all(isinstance(p, str) and p != system for p in partners)):
        problems.append("partners: expected a list of other systems' codes")
    for i, r in enumerate(doc.get("relays", [])):
        key = f"relays[{i}]"
        if not isinstance(r, dict):
            problems.append(f"{key}: expected a table")
            continue
        problems += [f"{key}.{k}: unknown field" for k in r if k not in _RELAY]
        for req in ("identity", "host", "ssid"):
            if not isinstance(r.get(req), str):
                problems.append(f"{key}.{req}: required text")
    groups = doc.get("groups", [])
    seen: set[str] = set()
    for i, g in enumerate(groups):
        key = f"groups[{i}]"
        if not isinstance(g, dict) or not valid_identity(g.get("identity")):
            problems.append(f"{key}.identity: expected a group identity name@system")
            continue
        problems += [f"{key}.{k}: unknown field" for k in g if k not in _GROUP]
        if g["identity"] in seen:
            problems.append(f"{key}: group {g['identity']} twice")
        seen.add(g["identity"])
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append("defaults: expected a table")
    else:
        problems += [f"defaults.{k}: unknown field" for k in defaults if k not in _DEFAULTS]
        _check_device_fields(defaults, "defaults", problems, full=False)
    idents: set[str] = set()
    hwids: dict[str, str] = {}
    for i, d in enumerate(doc.get("devices", [])):
        key = f"devices[{i}]"
        if not isinstance(d, dict) or not valid_identity(d.get("identity")):
            problems.append(f"{key}.identity: expected a device identity name@system")
            continue
        ident = d["identity"]
        key = f"device {ident}"
        if system_of(ident) != system:
            problems.append(f"{key}: not of this inventory's system {system}")
        if ident in idents:
            problems.append(f"{key}: the same identity twice (duplicate identity)")
        idents.add(ident)
        problems += [f"{key}.{k}: unknown field" for k in d if k not in _DEVICE]
        _check_device_fields(d, key, problems, full=True)
        if d.get("status", "active") not in _STATUSES:
            problems.append(f"{key}.status: expected one of {', '.join(_STATUSES)}")
        secret = d.get("secret")
        if secret is not None and not (
            isinstance(secret, str) and len(secret) == 32 and all(c in "0123456789abcdef" for c in secret)
        ):
            problems.append(f"{key}.secret: expected 32 lower-case hex digits (value not shown)")
        hw = d.get("hardware_id")
        if hw is not None:
            if hw in hwids:
                problems.append(f"{key}: the same hardware as device {hwids[hw]} (hardware_id)")
            hwids[hw] = ident
        for g in d.get("groups", []) + d.get("scan", []):
            if isinstance(g, str) and valid_identity(g) and system_of(g) == system and g not in seen:
                problems.append(f"{key}: group {g} is not defined in [[groups]]")
    if problems:
        raise _err(where, problems)


def load(path: Path) -> Inventory:
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            raw = f.read()
    except FileNotFoundError:
        raise TechnicianError(f"inventory {path}: no such file") from None
    except OSError as e:
        raise TechnicianError(f"inventory {path}: cannot read it ({e.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        # The parser's message names a line and column, never a value.
        raise TechnicianError(f"inventory {path}: not valid TOML ({e})") from None
    check(doc, str(path))
    # As ssh does with a private key: refused, not mended behind the technician's back, so that
    # whoever copied it about learns that the copies hold secrets too.
    if mode & 0o077 and any("secret" in d for d in doc.get("devices", [])):
        raise TechnicianError(
            f"inventory {path} holds device secrets but is open to other users (mode {mode:04o}): "
            f"run chmod 600 {path}"
        )
    return Inventory(path, doc)


LOCK_WAIT_S = 60.0


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<inventory>.lock`` for a read-modify-write of the inventory; another
    opmob holding it is waited for (up to LOCK_WAIT_S). The lock file is removed while still
    locked, so none is left behind; whoever locked a file that has meanwhile been removed (or
    replaced) at the path holds nothing and tries again."""
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + LOCK_WAIT_S
    told = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise TechnicianError(f"inventory {path}: cannot create its lock {lock} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise TechnicianError(
                    f"inventory {path} is in use by another opmob (lock {lock}) for over {LOCK_WAIT_S:.0f} s: "
                    "let it finish, then run this again"
                ) from None
            if not told:
                print(f"opmob: inventory {path} is in use by another opmob: waiting", file=sys.stderr)
                told = True
            time.sleep(0.1)
            continue
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``path`` whole or not at all, mode 0600: a synced temporary file renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- TOML out (the few types an inventory holds) ----------------------------------------------------
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _table(d: dict[str, Any]) -> str:
    return "".join(f"{k} = {_value(v)}\n" for k, v in d.items())


def dumps(doc: dict[str, Any]) -> str:
    out = [
        HEADER,
        _table({k: v for k, v in doc.items() if not isinstance(v, dict | list) or k == "partners"}),
    ]
    if doc.get("defaults"):
        out.append("\n[defaults]\n" + _table(doc["defaults"]))
    for name in ("relays", "groups", "devices"):
        for rec in doc.get(name, []):
            out.append(f"\n[[{name}]]\n" + _table(rec))
    return "".join(out)
