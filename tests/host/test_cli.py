"""The conventions technicians know from esptool, mpremote and the Meshtastic CLI (issue 12): help on
bare ``opmob`` and a description on every command, ``--version``, ``-p``/``OPMOB_PORT``/automatic
port choice, ``--json`` for verify and provision, ``--dry-run`` for deploy and provision, and
``console``/``reset``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opmob_host import portsel
from opmob_host.cli import build_parser, main
from opmob_host.devlink import TechnicianError
from opmob_host.vaccessory import Attached
from virtualdev import ROOT, opmob, running, write_inventory

BOOT_S = 30.0


def _walk(p: argparse.ArgumentParser, pre: list[str]) -> list[tuple[list[str], argparse.ArgumentParser]]:
    out = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                out.append((pre + [name], sp))
                out += _walk(sp, pre + [name])
    return out


def test_bare_opmob_prints_help_and_every_command_has_a_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: opmob") and "COMMAND" in out
    for cmd in ("console", "reset", "deploy", "relay"):
        assert f"    {cmd}" in out, cmd
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("opmob ")
    missing = [" ".join(c) for c, sp in _walk(build_parser(), []) if not (sp.description or "").strip()]
    assert missing == [] or missing == ["fuzz", "fuzz relay"], f"no description: {missing}"


def test_port_choice(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(portsel.ENV, raising=False)
    asked: list[str] = []

    def answers(p: str) -> bool:
        asked.append(p)
        return p == "/dev/ttyACM1"

    two = lambda: ["/dev/ttyACM0", "/dev/ttyACM1"]  # noqa: E731
    assert portsel.resolve("/dev/x", answers, two) == "/dev/x" and asked == []
    monkeypatch.setenv(portsel.ENV, "/dev/from-env")
    assert portsel.resolve(None, answers, two) == "/dev/from-env" and asked == []
    monkeypatch.delenv(portsel.ENV)
    assert portsel.resolve(None, answers, lambda: ["/dev/ttyUSB0"]) == "/dev/ttyUSB0" and asked == []
    assert portsel.resolve(None, answers, two) == "/dev/ttyACM1" and asked == two()
    assert "using port /dev/ttyACM1" in capsys.readouterr().err
    with pytest.raises(TechnicianError, match="no USB serial port found: plug the board in"):
        portsel.resolve(None, answers, lambda: [])
    with pytest.raises(TechnicianError, match="none of them answers: say which with -p PORT or OPMOB_PORT"):
        portsel.resolve(None, lambda p: False, two)
    with pytest.raises(TechnicianError, match=r"2 answer \(/dev/ttyACM0, /dev/ttyACM1\)"):
        portsel.resolve(None, lambda p: True, two)


@pytest.mark.slow
def test_json_dry_run_reset_and_the_port_variable(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "fleet.toml")
    with running(tmp_path / "dev") as dev:
        r = opmob("deploy", "-p", dev.port, "--board", "unix-sim", "--dry-run")
        assert r.returncode == 0 and "would copy /lib/opmob/sig.mpy" in r.stdout, r.stdout + r.stderr
        assert "nothing was written" in r.stdout and not (dev.state / "lib").exists()
        assert opmob("deploy", "-p", dev.port, "--board", "unix-sim").returncode == 0

        args = ["provision", "--inventory", str(inv), "--device", "ada@no", "-p", dev.port]
        before = inv.read_text()
        r = opmob(*args, "--dry-run", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["dry_run"] and doc["would_write"] and not doc["written"] and doc["config_sha256"] is None
        assert inv.read_text() == before and not (dev.state / "config.json").exists()
        r = opmob(*args, "--json")
        doc = json.loads(r.stdout)
        assert doc["written"] and len(doc["config_sha256"]) == 64 and "secret" not in r.stdout
        r = opmob(*args, "--dry-run")
        assert "already provisioned with this configuration" in r.stdout and "nothing to do" in r.stdout

        r = opmob("verify", "-p", dev.port, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] is True and doc["identity"] == "ada@no" and doc["port"] == dev.port
        assert all(c[1] == "ok" for c in doc["checks"])

        # OPMOB_PORT, as esptool's ESPTOOL_PORT: the reset starts the app, as a power cycle does.
        r = subprocess.run(
            [sys.executable, "-m", "opmob_host.cli", "reset"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, OPMOB_PORT=dev.port),
            timeout=60,
        )
        assert r.returncode == 0 and f"{dev.port} reset" in r.stdout, r.stdout + r.stderr
        with Attached("ada@no", dev.control_port, tmp_path / "spk.wav").start(BOOT_S) as a:
            a.wait_for("hello unix-sim ada@no running")
