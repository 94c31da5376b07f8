"""``opmob flash`` without a board: real ESP images built offline with esptool (its image classes and
``merge-bin``), checked by ``image-info``; the exact esptool invocation for each board; a port that
is absent or says nothing gives a clear error, a non-zero exit, and no write."""

from __future__ import annotations

import os
import pty
import shlex
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import esptool.bin_image as bi
import pytest
from opmob_host import flash
from opmob_host.cli import build_parser
from virtualdev import opmob

ESPTOOL = [sys.executable, "-m", "esptool"]


def app_image(path: Path, cls: type[bi.BaseFirmwareImage]) -> Path:
    img = cls()
    img.entrypoint = 0x40380000
    seg = bi.ImageSegment(0x3FC88000, bytes(range(256)))
    seg.name = ".dram0.data"
    img.segments = [seg]
    img.save(str(path))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    s3 = app_image(d / "app-s3.bin", bi.ESP32S3FirmwareImage)
    e32 = app_image(d / "app-esp32.bin", bi.ESP32FirmwareImage)
    part = d / "partitions.bin"
    # One factory app partition at 0x10000 (1 MiB), as ESP-IDF's gen_esp32part writes it.
    entry = (
        b"\xaa\x50" + struct.pack("<BBII", 0, 0, 0x10000, 0x100000) + b"factory".ljust(16, b"\0") + bytes(4)
    )
    part.write_bytes(entry + b"\xff" * 32)
    out = {"s3": s3, "esp32": e32}
    # A merged image, as MicroPython ships one: bootloader, partition table, application.
    for name, chip, boot, base in (("merged-s3", "esp32s3", s3, 0x0), ("merged-esp32", "esp32", e32, 0x1000)):
        target = d / f"{name}.bin"
        r = subprocess.run(
            [*ESPTOOL, "--chip", chip, "merge-bin", "--target-offset", hex(base), "-o", str(target)]
            + [hex(base), str(boot), "0x8000", str(part), "0x10000", str(boot)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        out[name] = target
    return out


def args(*argv: str) -> object:
    return build_parser().parse_args(["flash", *argv])


def test_image_info_accepts_the_built_images(images: dict[str, Path]) -> None:
    assert flash.check_image(images["merged-s3"], "esp32s3", 0x0) == ("ESP32-S3", 0x0)
    assert flash.check_image(images["merged-esp32"], "esp32", 0x1000) == ("ESP32", 0x1000)
    r = subprocess.run([*ESPTOOL, "image-info", str(images["merged-s3"])], capture_output=True, text=True)
    assert r.returncode == 0 and "Chip ID: 9 (ESP32-S3)" in r.stdout


@pytest.mark.parametrize(
    ("board", "image", "chip", "offset"),
    [("esp32-s3-ptt", "merged-s3", "esp32s3", "0x0"), ("esp32-devkitc", "merged-esp32", "esp32", "0x1000")],
)
def test_exact_esptool_command(
    images: dict[str, Path], board: str, image: str, chip: str, offset: str
) -> None:
    fw = str(images[image])
    common = [
        "--chip", chip, "--port", "/dev/ttyUSB7", "--baud", "460800",
        "--before", "default-reset", "--after", "hard-reset", "write-flash",
    ]  # fmt: skip
    r = opmob("flash", "--board", board, "--port", "/dev/ttyUSB7", "--firmware", fw, "--print-command")
    assert r.returncode == 0, r.stderr
    assert shlex.split(r.stdout.strip()) == [
        *ESPTOOL, *common, "--erase-all", "--flash-size", "detect", offset, fw
    ]  # fmt: skip
    r = opmob(
        "flash", "--board", board, "--port", "/dev/ttyUSB7", "--firmware", fw, "--no-erase", "--print-command"
    )
    assert shlex.split(r.stdout.strip()) == [*ESPTOOL, *common, "--flash-size", "detect", offset, fw]


@pytest.fixture
def fake_port() -> Iterator[str]:
    """A terminal nobody else holds (the injected detector stands for what answers on it)."""
    master, slave = pty.openpty()
    yield os.ttyname(slave)
    os.close(slave)
    os.close(master)


def test_injected_detector_and_runner_see_the_same_command(images: dict[str, Path], fake_port: str) -> None:
    port = fake_port
    seen: list[list[str]] = []

    def runner(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    a = args("--board", "esp32-s3-ptt", "--port", str(port), "--firmware", str(images["merged-s3"]))
    assert flash.run(a, detector=lambda p, n: "ESP32-S3", runner=runner) == 0  # type: ignore[arg-type]
    assert seen == [flash.write_command("esp32s3", str(port), 460800, 0, images["merged-s3"], True)]


def test_chip_on_the_port_must_match_the_board(
    images: dict[str, Path], fake_port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = fake_port
    seen: list[list[str]] = []
    a = args("--board", "esp32-s3-ptt", "--port", str(port), "--firmware", str(images["merged-s3"]))
    rc = flash.run(a, detector=lambda p, n: "ESP32", runner=lambda c: seen.append(c))  # type: ignore[arg-type]
    assert rc == 1 and seen == []
    assert "the chip on" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("board", "image", "message"),
    [
        ("esp32-devkitc", "merged-s3", "is built for ESP32-S3, the board is an ESP32"),
        ("esp32-s3-ptt", "s3-missing", "does not exist"),
        ("esp32-s3-ptt", "a-directory", "is a directory: give the image file itself"),
        ("esp32-s3-ptt", "junk", "is not an ESP image"),
        ("unix-sim", "merged-s3", "not flashed with esptool"),
        ("no-such-board", "merged-s3", "unknown board"),
    ],
)
def test_wrong_or_missing_image_or_board(
    images: dict[str, Path], tmp_path: Path, board: str, image: str, message: str
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096).replace(b"\xe9", b"\x00"))
    special = {"junk": junk, "s3-missing": tmp_path / "none.bin", "a-directory": tmp_path}
    path = special.get(image) or images[image]
    r = opmob("flash", "--board", board, "--port", "/dev/ttyUSB7", "--firmware", str(path), "--print-command")
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_absent_port(images: dict[str, Path]) -> None:
    r = opmob(
        "flash", "--board", "esp32-s3-ptt", "--port", "/dev/ttyNOPE9", "--firmware", str(images["merged-s3"])
    )
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("port", "says"),
    [("/dev/null", "/dev/null is not a serial port"), ("/tmp", "/tmp is not a serial port (a directory)")],
)
def test_not_a_serial_port(images: dict[str, Path], port: str, says: str) -> None:
    r = opmob("flash", "--board", "esp32-s3-ptt", "--port", port, "--firmware", str(images["merged-s3"]))
    assert r.returncode == 1 and says in r.stderr and "opmob ports" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "written" not in r.stdout


def test_fake_port_that_says_nothing(images: dict[str, Path]) -> None:
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    got = bytearray()

    def drain() -> None:
        while True:
            try:
                b = os.read(master, 4096)
            except OSError:
                return
            if not b:
                return
            got.extend(b)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        r = opmob(
            "flash", "--board", "esp32-s3-ptt", "--port", name, "--firmware", str(images["merged-s3"]),
            "--connect-attempts", "1",
        )  # fmt: skip
    finally:
        os.close(slave)
        os.close(master)
        t.join(5)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no Espressif bootloader answers" in r.stderr and "Traceback" not in r.stderr
    # esptool only tried to sync (SLIP command 0x08); no FLASH_BEGIN (0x02) ever went out.
    frames = [f for f in bytes(got).split(b"\xc0") if f]
    assert frames and all(f[:2] != b"\x00\x02" for f in frames)
    assert "written" not in r.stdout


def _flash_app_image(path: Path) -> Path:
    """An application as ESP-IDF links it: a segment mapped from flash (DROM), which a bootloader
    never has."""
    img = bi.ESP32S3FirmwareImage()
    img.entrypoint = 0x40380000
    seg = bi.ImageSegment(0x3C000020, bytes(range(256)) * 4)
    seg.name = ".flash.rodata"
    img.segments = [seg]
    img.save(str(path))
    return path


@pytest.fixture(scope="module")
def bad_images(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    merged = images["merged-s3"].read_bytes()
    out: dict[str, Path] = {}
    out["truncated"] = d / "truncated.bin"
    out["truncated"].write_bytes(merged[: 0x10000 + 40])  # cut inside the application
    corrupt = bytearray(merged)
    corrupt[0x10000 + 24 + 8 + 100] ^= 0x01  # one bit of the application's segment
    out["corrupt-app"] = d / "corrupt-app.bin"
    out["corrupt-app"].write_bytes(bytes(corrupt))
    out["app-only"] = _flash_app_image(d / "micropython.bin")
    out["no-table"] = images["s3"]  # a bootloader alone
    # The whole flash of an ESP32 from 0x0 (merge-bin's default): 0xff up to the bootloader at 0x1000.
    full = d / "full-esp32.bin"
    part = d / "p.bin"
    part.write_bytes(merged[0x8000 : 0x8000 + 64])
    r = subprocess.run(
        [*ESPTOOL, "--chip", "esp32", "merge-bin", "-o", str(full), "0x1000", str(images["esp32"])]
        + ["0x8000", str(part), "0x10000", str(images["esp32"])],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert full.read_bytes()[:4] == b"\xff\xff\xff\xff"
    out["full-esp32"] = full
    return out


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("truncated", "its application at 0x10000 is damaged or cut short"),
        ("corrupt-app", "its application at 0x10000 is corrupt"),
        ("app-only", "is an application alone (such as micropython.bin)"),
        ("no-table", "no partition table at 0x8000"),
    ],
)
def test_every_part_of_the_image_is_checked(bad_images: dict[str, Path], image: str, message: str) -> None:
    r = opmob(
        "flash", "--board", "esp32-s3-ptt", "--port", "/dev/ttyUSB7", "--firmware", str(bad_images[image]),
        "--print-command",
    )  # fmt: skip
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_a_full_flash_image_is_written_at_0(bad_images: dict[str, Path]) -> None:
    fw = str(bad_images["full-esp32"])
    r = opmob(
        "flash", "--board", "esp32-devkitc", "--port", "/dev/ttyUSB7", "--firmware", fw, "--print-command"
    )
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout.strip())
    assert cmd[-2:] == ["0x0", fw], cmd
