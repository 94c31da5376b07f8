"""``opmob flash --board B --port P --firmware IMAGE``: MicroPython (or an OpMob image) on a board,
with esptool, at the board's offset (``boards/B.json``: ``mcu`` is the chip, ``flash.offset``).

In order, each step before anything is written:

1. the board is one esptool flashes (it has a ``flash`` section);
2. the image is a valid ESP image for the board's chip (``esptool image-info``: the chip id in its
   extended header, the checksum);
3. the port exists and an Espressif bootloader answers on it, and the chip it reports is the
   board's (esptool's chip detection);
4. ``esptool --chip C write-flash [--erase-all] OFFSET IMAGE``: esptool v5 erases (all of the flash
   unless ``--no-erase``), writes with progress, and verifies what it wrote by MD5 itself (there is
   no ``--verify`` option any more: verification is always on).

``--print-command`` stops after step 2 and prints the esptool command, without touching the port.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opmob_host.deploy import load_board
from opmob_host.devlink import TechnicianError, _port_problem, check_port

# The board file's mcu -> esptool's --chip and the chip name esptool reports (image and device).
CHIPS = {"esp32": "ESP32", "esp32s3": "ESP32-S3"}
DEFAULT_BAUD = 460800

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]
Detector = Callable[[str, int], str]


def esptool_prefix() -> list[str]:
    return [sys.executable, "-m", "esptool"]


def _capture(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def flash_plan(board_name: str) -> tuple[str, int, int]:
    """(esptool chip, offset, baud) for a board, or a TechnicianError."""
    board = load_board(board_name)
    mcu = board.get("mcu")
    fl = board.get("flash")
    if mcu not in CHIPS or not isinstance(fl, dict):
        raise TechnicianError(
            f"board {board_name} (mcu {mcu}) is not flashed with esptool; "
            "a unix-sim device is started with opmob virtual"
        )
    try:
        offset = int(str(fl["offset"]), 0)
        baud = int(fl.get("baud", DEFAULT_BAUD))
    except (KeyError, ValueError):
        raise TechnicianError(f'board {board_name}: flash.offset must be a number such as "0x1000"') from None
    return str(mcu), offset, baud


def check_image(image: Path, mcu: str, runner: Runner = _capture) -> str:
    """The chip an image is built for, by ``esptool image-info``; a TechnicianError when it is missing,
    not an ESP image, corrupt, or for another chip than ``mcu``."""
    if image.is_dir():
        raise TechnicianError(
            f"firmware image {image} is a directory: give the image file itself (a .bin, such as "
            "ESP32_GENERIC_S3.bin)"
        )
    if not image.exists():
        raise TechnicianError(f"firmware image {image} does not exist")
    if not image.is_file():
        raise TechnicianError(f"firmware image {image} is not a regular file: give the image file (a .bin)")
    if image.stat().st_size < 24:
        raise TechnicianError(f"firmware image {image} is too short to be an ESP image")
    proc = runner([*esptool_prefix(), "image-info", str(image)])
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        why = (re.findall(r"ERROR: (?:A fatal error occurred: )?(.*)", out) or ["esptool cannot read it"])[-1]
        raise TechnicianError(f"firmware image {image} is not an ESP image: {why.strip()}")
    m = re.search(r"Chip ID: \d+ \(([^)]+)\)", out)
    if m is None:
        raise TechnicianError(f"firmware image {image}: esptool found no chip id in its header")
    chip = m.group(1)
    if chip != CHIPS[mcu]:
        raise TechnicianError(
            f"firmware image {image} is built for {chip}, the board is an {CHIPS[mcu]}: "
            "use the image for this board"
        )
    if "(invalid)" in out:
        raise TechnicianError(f"firmware image {image} is corrupt: its checksum or hash does not match")
    return chip


def detect_chip(port: str, attempts: int) -> str:
    """The chip name esptool's detection reports on ``port`` (the board is reset into its bootloader,
    and hard-reset again afterwards)."""
    from esptool import cmds
    from esptool.util import FatalError

    try:
        esp = cmds.detect_chip(port, 115200, "default-reset", connect_attempts=attempts)
    except FatalError as e:
        text = str(e)
        if "busy or doesn't exist" in text:
            raise TechnicianError(_port_problem(port)) from None
        raise TechnicianError(
            f"no Espressif bootloader answers on {port}: is it the board's port? If it is, hold BOOT, "
            f"press RESET, release BOOT, and try again ({text.splitlines()[0]})"
        ) from None
    name = str(esp.CHIP_NAME)
    try:
        esp.hard_reset()
    except Exception:  # noqa: BLE001 - a port without modem lines; the write resets it anyway
        pass
    esp._port.close()
    return name


def write_command(chip: str, port: str, baud: int, offset: int, image: Path, erase: bool) -> list[str]:
    return [
        *esptool_prefix(),
        "--chip",
        chip,
        "--port",
        port,
        "--baud",
        str(baud),
        "--before",
        "default-reset",
        "--after",
        "hard-reset",
        "write-flash",
        *(["--erase-all"] if erase else []),
        "--flash-size",
        "detect",
        hex(offset),
        str(image),
    ]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "flash",
        help="write a MicroPython/OpMob image to a board with esptool (checks image and chip first)",
        description="Check that the image is for the board's chip (esptool image-info) and that the chip "
        "on the port is the board's, then erase and write the image at the board's offset with esptool, "
        "which verifies what it wrote.",
    )
    p.add_argument("--board", required=True, help="board name (boards/NAME.json)")
    p.add_argument("--port", required=True, help="the board's serial port (opmob ports lists them)")
    p.add_argument("--firmware", required=True, help="the image (MicroPython's firmware.bin)")
    p.add_argument(
        "--erase", action=argparse.BooleanOptionalAction, default=True, help="erase all of the flash first"
    )
    p.add_argument("--baud", type=int, help="baud rate for writing (default: the board's)")
    p.add_argument("--connect-attempts", type=int, default=3, help="esptool connection attempts")
    p.add_argument(
        "--print-command", action="store_true", help="check the image, print the esptool command, stop"
    )


def run(args: argparse.Namespace, detector: Detector = detect_chip, runner: Runner | None = None) -> int:
    try:
        mcu, offset, baud = flash_plan(args.board)
        image = Path(args.firmware)
        check_image(image, mcu)
        cmd = write_command(mcu, args.port, args.baud or baud, offset, image, args.erase)
        if args.print_command:
            print(shlex.join(cmd))
            return 0
        check_port(args.port)
        found = detector(args.port, args.connect_attempts)
        if found != CHIPS[mcu]:
            raise TechnicianError(
                f"the chip on {args.port} is an {found}, board {args.board} is an {CHIPS[mcu]}: "
                "wrong board or wrong port; nothing written"
            )
        print(f"opmob flash: {found} on {args.port}; writing {image} at {hex(offset)}", flush=True)
        if runner is not None:
            rc = runner(cmd).returncode
        else:
            rc = subprocess.run(cmd).returncode  # esptool's progress on the terminal
        if rc != 0:
            raise TechnicianError(
                f"esptool failed (exit {rc}) while writing; the board holds no usable image: run opmob flash again"
            )
    except TechnicianError as e:
        print(f"opmob flash: {e}", file=sys.stderr)
        return 1
    print(f"opmob flash: written and verified; next: opmob deploy --port {args.port} --board {args.board}")
    return 0
