"""``opmob verify``'s self-test on a virtual device: the deployed files against the deploy
manifest, and each peripheral of the sim board through the firmware's hardware layer, each PASS or
FAIL by name, the exit status non-zero when any fails; the app is running again afterwards."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from opmob_host.vaccessory import MICROPYTHON, Attached
from virtualdev import opmob, running, write_inventory

pytestmark = pytest.mark.slow
PERIPHERALS = ("buttons", "leds", "battery", "mic", "speaker", "wifi")


def lines(out: str) -> dict[str, str]:
    """self-test name -> its result."""
    found = {}
    for line in out.splitlines():
        if line.startswith("self-test "):
            name, result = line[len("self-test ") :].strip().split(": ", 1)
            found[name] = result
    return found


def test_verify_checks_files_and_peripherals_and_leaves_the_app_running(tmp_path: Path) -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    inv = write_inventory(tmp_path / "fleet.toml")
    with running(tmp_path / "dev") as dev:
        assert opmob("deploy", "--port", dev.port, "--board", "unix-sim").returncode == 0
        r = opmob("provision", "--inventory", str(inv), "--device", "ada@no", "--port", dev.port)
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        r = opmob("verify", "--port", dev.port, "--inventory", str(inv))
        took = time.monotonic() - t0
        assert r.returncode == 0 and "opmob verify: PASS" in r.stdout, r.stdout + r.stderr
        got = lines(r.stdout)
        assert got["files"].startswith("PASS (") and "as deployed" in got["files"], got
        for name in PERIPHERALS:
            assert got[name].startswith("PASS"), (name, got)
        assert got["battery"] == "PASS (4000 mV, 82 %)"
        assert took < 10, f"verify took {took:.1f} s"
        # Stopped for the self-test, the app runs again: its control channel answers.
        with Attached("ada@no", dev.control_port, tmp_path / "speaker.wav").start(20) as ada:
            ada.wait_for("hello unix-sim ada@no")

        # A deployed file changed on the device's file system, another gone.
        lib = dev.state / "lib" / "opmob"
        data = bytearray((lib / "dvi4.mpy").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (lib / "dvi4.mpy").write_bytes(bytes(data))
        (lib / "relay_config.mpy").unlink()
        r = opmob("verify", "--port", dev.port)
        assert r.returncode == 1 and "opmob verify: FAIL" in r.stdout, r.stdout + r.stderr
        files = lines(r.stdout)["files"]
        assert files.startswith("FAIL") and "/lib/opmob/dvi4.mpy changed" in files, files
        assert "/lib/opmob/relay_config.mpy missing" in files and "opmob deploy --force" in files, files
        assert "Traceback" not in r.stdout + r.stderr
        assert opmob("deploy", "--port", dev.port, "--force").returncode == 0
        r = opmob("verify", "--port", dev.port, "--inventory", str(inv))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "firmware       0.1.0 (running from /lib/opmob/__init__.mpy)" in r.stdout, r.stdout

        # Another copy ahead of /lib on sys.path (here at /, as one frozen into an image would be
        # without the deployed boot.py): the deployed files are intact, but they are not what runs.
        shutil.copytree(lib, dev.state / "opmob")
        r = opmob("verify", "--port", dev.port)
        assert r.returncode == 1, r.stdout + r.stderr
        files = lines(r.stdout)["files"]
        assert files.startswith(
            "FAIL the firmware runs from opmob/__init__.mpy, not from the deployed /lib"
        ), files


def test_a_failing_peripheral_is_named(tmp_path: Path) -> None:
    mic = tmp_path / "speech.raw"
    mic.write_bytes(bytes(3200))
    with running(tmp_path / "dev", "--mic", str(mic), "--battery-mv", "0") as dev:
        assert opmob("deploy", "--port", dev.port, "--board", "unix-sim").returncode == 0
        r = opmob("verify", "--port", dev.port)
        assert r.returncode == 1, r.stdout + r.stderr
        got = lines(r.stdout)
        assert got["battery"].startswith("FAIL reads 0 mV, outside 2500..4450 mV"), got
        assert got["mic"].startswith("PASS") and got["files"].startswith("PASS"), got
        # The microphone's source gone (the sim's unplugged microphone): the hardware cannot be
        # set up, and the message names the microphone.
        mic.unlink()
        r = opmob("verify", "--port", dev.port)
        assert r.returncode == 1, r.stdout + r.stderr
        hardware = lines(r.stdout)["hardware"]
        assert hardware.startswith("FAIL cannot be set up") and "mic source /.sim/mic.raw" in hardware, (
            hardware
        )
