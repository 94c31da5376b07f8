"""Acceptance: how a virtual accessory boots without a usable configuration, and with a board
definition that does not validate. Unprovisioned (no file) and corrupt (cut short, or a bad value)
configurations give the unprovisioned LED pattern and a console message saying why, keep the
process running (no crash loop: one boot, then steady), refuse PTT with the deny tone, and never
print the secret. A killed device shows the disabled pattern. A bad board file stops the boot with a
message naming the key (exit 2, once).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from opmob_host.vaccessory import FIRMWARE, MICROPYTHON, SIM_BOARD, Accessory, Fleet

pytestmark = pytest.mark.slow


def setup_module() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")


def _check_unprovisioned(a: Accessory, why: str, secret: str | None = None) -> None:
    a.wait_last("led", "unprovisioned")
    st = a.status()
    assert st["mode"] == "unprovisioned" and why in st["reason"], st
    # PTT and emergency are refused with the deny tone; nothing is sent anywhere.
    a.command("click ptt")
    a.wait_for("tone deny")
    time.sleep(1.5)
    assert a.alive(), "the firmware ended"
    st2 = a.status()
    assert st2["mode"] == "unprovisioned" and all(v == 0 for v in st2["tasks"].values()), st2
    assert a.last("led") == "unprovisioned"
    console = a.console_text()
    assert console.count("opmob accessory: NOT PROVISIONED") == 1, console  # one boot, no loop
    assert why in console
    if secret is not None:
        assert secret not in console and all(secret not in x.text for x in a.lines)


def test_no_configuration_is_unprovisioned_mode(tmp_path: Path) -> None:
    with Accessory("ghost@no", tmp_path, None).start() as a:
        _check_unprovisioned(a, "file not found")


def test_corrupt_configuration_is_unprovisioned_mode_and_keeps_the_secret(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, ["alice@no", "bob@no"], ["fire-1@no"])
    text = json.dumps(fleet.config("alice@no"))
    secret = fleet.secrets["alice@no"]
    cut = text[: text.index(secret) + 20]  # a write cut short inside the secret
    with Accessory("alice@no", tmp_path, None, config_text=cut).start() as a:
        _check_unprovisioned(a, "not valid JSON", secret)
    bad = fleet.config("bob@no")
    bad["relays"][0]["port"] = 70000
    bad["groups"][0]["priority"] = "high"
    with Accessory("bob@no", tmp_path, bad).start() as b:
        _check_unprovisioned(b, "relays[0].port", fleet.secrets["bob@no"])
        assert "groups[0].priority" in b.status()["reason"]


def test_killed_device_stays_off_the_air(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, ["alice@no"], ["fire-1@no"])
    cfg = fleet.config("alice@no")
    del cfg["secret"]
    cfg["status"] = "killed"
    with Accessory("alice@no", tmp_path, cfg).start() as a:
        a.wait_last("led", "disabled")
        assert a.status()["mode"] == "killed"
        a.command("click ptt")
        a.wait_for("tone deny")
        assert "killed by its home system" in a.console_text()


def test_a_bad_board_definition_stops_the_boot_with_the_key(tmp_path: Path) -> None:
    board = json.loads(SIM_BOARD.read_text())
    board["leds"]["red"]["pin"] = board["buttons"]["ptt"]["pin"]
    board["i2s_in"]["rate"] = 16000
    path = tmp_path / "board.json"
    path.write_text(json.dumps(board))
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
    proc = subprocess.run(
        [
            str(MICROPYTHON),
            "-m",
            "opmob.accessory.main",
            "--board",
            str(path),
            "--config",
            "none.json",
            "--state",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout
    assert "BOARD DEFINITION REJECTED" in out
    assert "leds.red.pin: GPIO 1 is already used by buttons.ptt.pin" in out
    assert "i2s_in.rate" in out and str(path) in out
    assert "Traceback" not in out + proc.stderr
