"""Acceptance: a lost accessory is stunned, revived and killed from the relay (``opmob relay
control``): stunned it shows the disabled pattern and refuses PTT; revived it works again; killed it
erases its secret from its configuration and stays off the air after a reboot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opmob_host.vaccessory import MICROPYTHON, SPEECH, Fleet

ROOT = Path(__file__).resolve().parents[2]

GROUP = "fire-1@no"

pytestmark = pytest.mark.slow


def setup_module() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")


def _control(fleet: Fleet, *args: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "opmob_host.cli",
            "relay",
            "control",
            "--config",
            str(fleet.dir / "relay.toml"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stun_revive_and_kill(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, ["alice@no", "bob@no"], [GROUP])
    secret = fleet.secrets["alice@no"]
    with fleet.relay():
        alice = fleet.accessory("alice@no", mic=SPEECH)
        bob = fleet.accessory("bob@no")
        try:
            for a in (alice, bob):
                a.wait_last("ptt", "U: has no permission", 20)
            alice.mark()
            _control(fleet, "stun", "alice@no")
            alice.wait_for("state stunned")
            alice.wait_last("led", "disabled")
            alice.command("click ptt")
            alice.wait_for("tone deny")
            assert "stunned" in alice.status()["state"]

            alice.mark()
            _control(fleet, "revive", "alice@no")
            alice.wait_for("log opmob accessory: revived")
            alice.wait_last("led", "registered", 10)
            alice.wait_last("ptt", "U: has no permission", 10)
            alice.command("press ptt")
            alice.wait_for("tone talk_permit")
            bob.wait_for(f"rx {GROUP} alice@no")
            alice.command("release ptt")

            alice.mark()
            _control(fleet, "kill", "alice@no")
            alice.wait_for("state killed")
            alice.wait_last("led", "disabled")
            doc = json.loads(alice.config_path.read_text())
            assert (
                doc["status"] == "killed"
                and "secret" not in doc
                and secret not in alice.config_path.read_text()
            )
            alice.stop()
            # After a reboot it stays off the air.
            alice = fleet.accessory("alice@no", config=doc)
            alice.wait_last("led", "disabled")
            assert alice.status()["mode"] == "killed"
            assert secret not in alice.console_text()
        finally:
            alice.stop()
            bob.stop()
