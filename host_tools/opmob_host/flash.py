"""``opmob flash --board B --port P --firmware IMAGE``: MicroPython (or an OpMob image) on a board,
with esptool, at the board's offset (``boards/B.json``: ``mcu`` is the chip, ``flash.offset``).

In order, each step before anything is written:

1. the board is one esptool flashes (it has a ``flash`` section);
2. the image is a whole firmware for the board's chip, read with esptool's own image classes
   (``check_image``): the bootloader where the chip's ROM looks for it, the partition table at
   0x8000 and the application its app partition names, each image with every segment present,
   its checksum and its appended SHA-256 right, its chip id the board's, the application within
   its partition and within the file. An application alone (``micropython.bin``) or a truncated
   file is refused; a full-flash image (``esptool merge-bin`` from 0x0, padded before an ESP32's
   bootloader at 0x1000) is accepted and written at 0x0;
3. the port exists and an Espressif bootloader answers on it, and the chip it reports is the
   board's (esptool's chip detection);
4. ``esptool --chip C write-flash [--erase-all] OFFSET IMAGE``: esptool v5 erases (all of the flash
   unless ``--no-erase``), writes with progress, and verifies what it wrote by MD5 itself (there is
   no ``--verify`` option any more: verification is always on).

``--print-command`` stops after step 2 and prints the esptool command, without touching the port.
"""

from __future__ import annotations

import argparse
import shlex
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opmob_host import portsel
from opmob_host.deploy import load_board
from opmob_host.devlink import TechnicianError, _port_problem, check_port

# The board file's mcu -> esptool's --chip and the chip name esptool reports (image and device).
CHIPS = {"esp32": "ESP32", "esp32s3": "ESP32-S3"}
DEFAULT_BAUD = 460800
# Where the chip's ROM loads the second-stage bootloader from; the partition table's place (ESP-IDF).
BOOTLOADER_AT = {"esp32": 0x1000, "esp32s3": 0x0}
PARTITION_TABLE_AT = 0x8000
PARTITION_MAGIC = b"\xaa\x50"

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]  # tests: esptool's write
Detector = Callable[[str, int], str]


def esptool_prefix() -> list[str]:
    return [sys.executable, "-m", "esptool"]


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


def _esp_image(data: bytes, at: int, base: int, mcu: str, what: str, name: Path) -> Any:
    """The ESP image at flash address ``at`` of a file that starts at ``base``, every part checked."""
    from esptool.bin_image import LoadFirmwareImage
    from esptool.targets import CHIP_DEFS
    from esptool.util import FatalError

    where = f"firmware image {name}: its {what} at {at:#x}"
    start = at - base
    if start < 0:
        raise TechnicianError(
            f"{where} lies before the image's start ({base:#x}): its partition table is wrong"
        )
    if start >= len(data):
        raise TechnicianError(f"{where} is missing: the file ends at {base + len(data):#x} (truncated?)")
    if data[start] != 0xE9:
        raise TechnicianError(f"{where} is not an ESP image (magic {data[start]:#04x}, not 0xe9)")
    try:
        img = LoadFirmwareImage(mcu, data[start:])
    except (FatalError, RuntimeError, struct.error) as e:
        raise TechnicianError(f"{where} is damaged or cut short: {str(e).splitlines()[0]}") from None
    built_for = {rom.IMAGE_CHIP_ID: rom.CHIP_NAME for rom in CHIP_DEFS.values()}.get(img.chip_id, "?")
    if img.chip_id != CHIP_DEFS[mcu].IMAGE_CHIP_ID:
        raise TechnicianError(
            f"firmware image {name} is built for {built_for}, the board is an {CHIPS[mcu]}: "
            "use the image for this board"
        )
    if img.calculate_checksum() != img.checksum:
        raise TechnicianError(f"{where} is corrupt: its checksum does not match its segments")
    if img.append_digest:
        if len(img.stored_digest) < 32:
            raise TechnicianError(f"{where} is cut short: its SHA-256 is missing (truncated file)")
        if img.stored_digest != img.calc_digest:
            raise TechnicianError(f"{where} is corrupt: its appended SHA-256 does not match")
    return img


def _app_partition(data: bytes, base: int, name: Path) -> tuple[int, int]:
    """(offset, size) of the application the partition table boots: factory, else the first app."""
    start = PARTITION_TABLE_AT - base
    table = data[start : start + 0xC00]
    if table[:2] != PARTITION_MAGIC:
        raise TechnicianError(
            f"firmware image {name}: no partition table at {PARTITION_TABLE_AT:#x} (the file ends at "
            f"{base + len(data):#x}): not a whole firmware (MicroPython's firmware.bin), or truncated"
        )
    apps: list[tuple[int, int, int]] = []
    for i in range(0, len(table) - 31, 32):
        entry = table[i : i + 32]
        if entry[:2] != PARTITION_MAGIC:
            break
        ptype, subtype, offset, size = struct.unpack_from("<BBII", entry, 2)
        if ptype == 0:  # app
            apps.append((subtype, offset, size))
    if not apps:
        raise TechnicianError(f"firmware image {name}: its partition table has no application partition")
    subtype, offset, size = min(apps, key=lambda a: (a[0] != 0, apps.index(a)))
    return offset, size


def check_image(image: Path, mcu: str, offset: int | None = None) -> tuple[str, int]:
    """(the chip, the flash offset to write at) for a whole firmware image; a TechnicianError when it
    is missing, not an ESP firmware, cut short, corrupt in any image, or for another chip.

    ``offset``: the board's; the image may start there (firmware.bin) or at 0x0 (full flash)."""
    if image.is_dir():
        raise TechnicianError(
            f"firmware image {image} is a directory: give the image file itself (a .bin, such as "
            "ESP32_GENERIC_S3.bin)"
        )
    if not image.exists():
        raise TechnicianError(f"firmware image {image} does not exist")
    if not image.is_file():
        raise TechnicianError(f"firmware image {image} is not a regular file: give the image file (a .bin)")
    data = image.read_bytes()
    if len(data) < 24:
        raise TechnicianError(f"firmware image {image} is too short to be an ESP image")
    boot_at = BOOTLOADER_AT[mcu]
    if data[0] == 0xE9:
        base = boot_at if offset is None else offset
    elif boot_at and data[:boot_at] == b"\xff" * boot_at and len(data) > boot_at and data[boot_at] == 0xE9:
        base = 0  # esptool merge-bin from 0x0: erased flash before the ESP32's bootloader
    else:
        raise TechnicianError(
            f"firmware image {image} is not an ESP image: invalid magic number {data[0]:#04x} at its "
            f"start, and no bootloader at {boot_at:#x} of a full-flash image"
        )
    if base != boot_at and base != 0:
        raise TechnicianError(
            f"firmware image {image}: written at {base:#x}, its bootloader would not be found"
        )
    boot = _esp_image(data, boot_at, base, mcu, "bootloader", image)
    if any(boot.is_flash_addr(seg.addr) for seg in boot.segments):
        raise TechnicianError(
            f"firmware image {image} is an application alone (such as micropython.bin), without "
            f"bootloader and partition table: written at {boot_at:#x} the board would not start. "
            "Use the whole firmware (firmware.bin from micropython.org)"
        )
    app_at, app_size = _app_partition(data, base, image)
    app = _esp_image(data, app_at, base, mcu, "application", image)
    if app.data_length is not None and app.data_length + 32 * int(app.append_digest) > app_size:
        raise TechnicianError(
            f"firmware image {image}: its application ({app.data_length} bytes) is larger than its "
            f"partition ({app_size} bytes)"
        )
    return CHIPS[mcu], base


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
    portsel.add_port_argument(p, "the board's serial port")
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
        _, offset = check_image(image, mcu, offset)
        args.port = portsel.resolve(args.port, portsel.bootloader_answers)
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
