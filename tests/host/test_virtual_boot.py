"""A virtual device runs ``/boot.py`` then ``/main.py`` at start and at a friendly soft reset, and
only ``/boot.py`` at a raw-REPL soft reset, as a board does; Ctrl-C (mpremote) stops main.py.
A deployed and provisioned virtual device boots the accessory firmware itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import serial
from opmob_host.vaccessory import MICROPYTHON
from virtualdev import opmob, running, write_inventory

pytestmark = pytest.mark.slow


def until(s: serial.Serial, marker: bytes, timeout: float = 15) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        data += s.read(1)
    assert marker in data, data
    return data


@pytest.fixture(autouse=True)
def _micropython() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")


def test_boot_then_main_at_start_and_soft_reset(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    state.mkdir()
    (state / "boot.py").write_text("print('boot ran')\nBOOTED = 1\n")
    (state / "main.py").write_text("print('main ran', BOOTED)\n")
    with running(state) as dev, serial.Serial(dev.port, timeout=0.2) as s:
        out = until(s, b">>> ")
        assert out.index(b"boot ran\r\n") < out.index(b"main ran 1\r\n")
        s.write(b"\x04")  # friendly soft reset: both again
        out = until(s, b">>> ")
        assert b"soft reboot" in out and out.index(b"boot ran") < out.index(b"main ran 1")
        s.write(b"\x01")
        until(s, b"raw REPL; CTRL-B to exit\r\n>")
        s.write(b"\x04")  # raw soft reset: boot.py only, then the raw prompt
        out = until(s, b"raw REPL; CTRL-B to exit\r\n>")
        assert b"boot ran" in out and b"main ran" not in out
        s.write(b"print(BOOTED)\x04")
        assert until(s, b"\x04>").startswith(b"OK1")


def test_a_main_that_never_returns_is_interrupted_by_mpremote(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    state.mkdir()
    (state / "main.py").write_text("import time\nprint('app up')\nwhile True:\n    time.sleep(0.05)\n")
    with running(state) as dev:
        time.sleep(1)
        r = dev.mpremote("exec", "print(6*7)")
        assert r.returncode == 0 and r.stdout.strip() == "42", r.stdout + r.stderr


def test_deployed_and_provisioned_device_boots_the_accessory(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "fleet.toml")
    state = tmp_path / "dev"
    with running(state) as dev:
        assert opmob("deploy", "--port", dev.port, "--board", "unix-sim").returncode == 0
        r = opmob("provision", "--inventory", str(inv), "--device", "ada@no", "--port", dev.port)
        assert r.returncode == 0, r.stderr
    with running(state) as dev:  # power on: boot.py, main.py, the app
        with serial.Serial(dev.port, timeout=0.2) as s:
            until(s, b"opmob accessory: ada@no on board unix-sim, talk group fire-1@no", 30)
        r = opmob("verify", "--port", dev.port, "--inventory", str(inv))  # Ctrl-C stops the app
        assert r.returncode == 0 and "opmob verify: PASS" in r.stdout, r.stdout + r.stderr


def test_a_running_watchdog_does_not_reset_the_device_under_a_technician(tmp_path: Path) -> None:
    """The app's watchdog cannot be stopped once started (on a board, not even by a soft reset).
    When a technician's tool stops the app (mpremote's Ctrl-C), the watchdog is held fed, or the
    device would reset under any deploy or provision longer than its timeout."""
    inv = write_inventory(tmp_path / "fleet.toml")
    state = tmp_path / "dev"
    with running(state) as dev:
        assert opmob("deploy", "--port", dev.port, "--board", "unix-sim").returncode == 0
        assert (
            opmob("provision", "--inventory", str(inv), "--device", "ada@no", "--port", dev.port).returncode
            == 0
        )
    with running(state, "--watchdog-ms", "1000") as dev:
        with serial.Serial(dev.port, timeout=0.2) as s:
            until(s, b"opmob accessory: ada@no on board unix-sim", 30)
        time.sleep(1.5)  # the app feeds its watchdog
        # resume: no soft reset, which would restart a virtual device's interpreter (and its
        # watchdog with it), unlike a board's.
        r = dev.mpremote("resume", "exec", "import time\ntime.sleep(3)\nprint('still here')")
        assert r.returncode == 0 and r.stdout.strip().endswith("still here"), r.stdout + r.stderr
        with serial.Serial(dev.port, timeout=0.2) as s:
            s.write(b"\r\n")
            out = until(s, b">>> ")
        assert b"soft reboot" not in out and b"watchdog: not fed" not in out, out


def test_boot_puts_the_deployed_lib_ahead_of_the_frozen_image() -> None:
    """On a board, '.frozen' comes before /lib: an image with OpMob frozen in would shadow every
    later `opmob deploy`. The deployed /boot.py turns that round (and leaves other entries alone)."""
    import subprocess

    boot = (Path(__file__).resolve().parents[2] / "boards" / "boot.py").read_text()
    for before, after in (
        (["", ".frozen", "/lib"], ["", "/lib", ".frozen"]),
        (["", "/lib", ".frozen"], ["", "/lib", ".frozen"]),
        (["", ".frozen"], ["", "/lib", ".frozen"]),
        (["", "/x"], ["", "/x", "/lib"]),
    ):
        code = f"import sys\nsys.path[:] = {before!r}\n" + boot + "\nprint(repr(sys.path))\n"
        r = subprocess.run([str(MICROPYTHON), "-c", code], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().replace("'", '"') == repr(after).replace("'", '"'), (before, r.stdout)
