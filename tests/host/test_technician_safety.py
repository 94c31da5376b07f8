"""Technician commands never hurt a running device (issue 12), on virtual devices:

- ``ports`` and a provision that changes nothing leave the app running (started again, and said);
- a deploy cut short (the host killed, or Ctrl-C) leaves the old set of files whole: the device runs
  the old set or the new set, never a mix, and ``verify`` fails on any module the manifest does not
  vouch for; a switch cut short by a power loss is completed by ``boot.py``;
- Ctrl-C during a deploy or a provision: one sentence (no traceback), exit 130, no scratch file
  left on the device, the device as it was;
- ``deploy`` refuses a board of another architecture before writing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from opmob_host import deploy
from opmob_host.vaccessory import Attached
from virtualdev import ROOT, Virtual, opmob, running, write_inventory

pytestmark = pytest.mark.slow
BOOT_S = 30.0


def _app_runs(dev: Virtual, tmp_path: Path, name: str = "ada@no") -> None:
    with Attached(name, dev.control_port, tmp_path / "speaker.wav").start(BOOT_S) as a:
        a.wait_for(f"hello unix-sim {name} running")


def _app_stopped(dev: Virtual, tmp_path: Path) -> None:
    """No app answers: no control channel, or (the REPL keeps the stopped app's socket) no hello."""
    try:
        a = Attached("ada@no", dev.control_port, tmp_path / "speaker.wav").start(2.0)
    except AssertionError as e:
        assert "no control channel" in str(e), e
        return
    with a, pytest.raises(AssertionError, match="no report"):
        a.wait_for("hello unix-sim ada@no running", 3.0)


def _deployed_and_running(dev: Virtual, inv: Path, tmp_path: Path) -> None:
    assert opmob("deploy", "--port", dev.port, "--board", "unix-sim").returncode == 0
    r = opmob("provision", "--inventory", str(inv), "--device", "ada@no", "--port", dev.port)
    assert r.returncode == 0, r.stderr
    r = dev.mpremote("reset")  # a power cycle: boot.py, then main.py starts the app
    assert r.returncode == 0, r.stderr
    _app_runs(dev, tmp_path)


def test_ports_and_a_provision_that_changes_nothing_leave_the_app_running(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "fleet.toml")
    with running(tmp_path / "dev") as dev:
        _deployed_and_running(dev, inv, tmp_path)

        r = opmob("ports", dev.port, "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        (row,) = [row for row in json.loads(r.stdout) if row["port"] == dev.port]
        assert row["detected"].endswith("board unix-sim; app restarted (stopped to ask)"), row
        _app_runs(dev, tmp_path)

        r = opmob("provision", "--inventory", str(inv), "--device", "ada@no", "--port", dev.port)
        assert r.returncode == 0 and "ada@no already provisioned" in r.stdout, r.stdout + r.stderr
        assert "was started again as before" in r.stdout, r.stdout
        _app_runs(dev, tmp_path)

        # Not running (Ctrl-C in a terminal left the REPL): a read-only command does not start it.
        r = dev.mpremote("exec", "pass")  # mpremote's Ctrl-C stops the app
        assert r.returncode == 0, r.stderr
        r = opmob("ports", dev.port, "--json", timeout=60)
        (row,) = [row for row in json.loads(r.stdout) if row["port"] == dev.port]
        assert row["detected"].endswith("board unix-sim"), row
        with pytest.raises(AssertionError, match="no control channel"):
            Attached("ada@no", dev.control_port, tmp_path / "speaker.wav").start(2.0)


def test_after_a_ctrl_c_in_a_terminal_no_command_starts_the_app(tmp_path: Path) -> None:
    """The technician stopped the app with Ctrl-C in a terminal (screen, mpremote repl, opmob
    console): it returned to the friendly REPL, and its marker says so. The next command's own
    Ctrl-C stopped nothing, so it must not start the app that the technician stopped."""
    inv = write_inventory(tmp_path / "fleet.toml")
    with running(tmp_path / "dev") as dev:
        _deployed_and_running(dev, inv, tmp_path)
        with serial.Serial(dev.port, timeout=0.1) as con:
            con.write(b"\x03")  # what a terminal sends for Ctrl-C: no soft reset after it
            seen = b""
            end = time.monotonic() + 10
            while b">>> " not in seen and time.monotonic() < end:
                seen += con.read(4096)
            assert b">>> " in seen, seen[-500:]
        time.sleep(1.0)  # the technician reads the console, then runs a command
        for args in (
            ("ports", dev.port, "--json"),
            ("provision", "--inventory", str(inv), "--device", "ada@no"),
        ):
            r = opmob(*args, *(() if args[0] == "ports" else ("--port", dev.port)), timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "restarted" not in r.stdout and "started again" not in r.stdout, r.stdout
            _app_stopped(dev, tmp_path)


def _firmware(tmp_path: Path, mark: str) -> Path:
    """A copy of the firmware whose every module differs from the other marks' (a new release)."""
    pkg = tmp_path / mark / "opmob"
    shutil.copytree(ROOT / "firmware" / "opmob", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for py in pkg.rglob("*.py"):
        py.write_text(py.read_text() + f"\n_BUILD = {mark!r}\n")
    return pkg


def _expected(pkg: Path, tmp_path: Path) -> dict[str, str]:
    files = deploy.build(pkg, "unix-sim", "x64", tmp_path / f"build-{pkg.parent.name}")
    return {p: hashlib.sha256(d).hexdigest() for p, d in files.items() if p.startswith("/lib/")}


def _on_device(state: Path) -> dict[str, str]:
    lib = state / "lib"
    return {
        "/" + p.relative_to(state).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in lib.rglob("*")
        if p.is_file()
    }


def _slow_deploy(dev: Virtual, pkg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "opmob_host.cli", "deploy", "--port", dev.port, "--firmware", str(pkg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OPMOB_TEST_STEP_DELAY="0.01"),
    )


def _wait_staged(state: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    stage = state / ".opmob-stage" / "lib" / "opmob"
    while time.monotonic() < deadline and proc.poll() is None:
        if stage.is_dir() and sum(1 for p in stage.rglob("*.mpy")) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the deploy did not stage {n} files: {proc.poll()}")


def test_a_deploy_cut_short_leaves_the_old_set_and_verify_checks_every_file(tmp_path: Path) -> None:
    a, b = _firmware(tmp_path, "a"), _firmware(tmp_path, "b")
    want_a, want_b = _expected(a, tmp_path), _expected(b, tmp_path)
    state = tmp_path / "dev"
    with running(state) as dev:
        r = opmob("deploy", "--port", dev.port, "--board", "unix-sim", "--firmware", str(a))
        assert r.returncode == 0, r.stderr
        assert _on_device(state) == want_a

        proc = _slow_deploy(dev, b)
        _wait_staged(state, len(want_b) // 2, proc)
        proc.kill()  # the laptop's process gone, no chance to clean up
        proc.communicate()
        assert _on_device(state) == want_a, "half of the new set in use"
        r = opmob("verify", "--port", dev.port)
        assert "self-test      files: PASS" in r.stdout, r.stdout

        r = opmob("deploy", "--port", dev.port, "--firmware", str(b))
        assert r.returncode == 0, r.stderr
        assert _on_device(state) == want_b
        assert not (state / ".opmob-stage").exists() and not (state / ".opmob-switch.json").exists()
        r = dev.mpremote("exec", "import opmob.errors; print(opmob.errors._BUILD)")
        assert r.stdout.strip() == "b", r.stdout + r.stderr

        # A module the manifest does not vouch for (what an older opmob's cut deploy left) fails.
        (state / "lib" / "opmob" / "stray.mpy").write_bytes(
            (state / "lib" / "opmob" / "rtp.mpy").read_bytes()
        )
        r = opmob("verify", "--port", dev.port)
        assert r.returncode == 1 and "/lib/opmob/stray.mpy not deployed" in r.stdout, r.stdout


def test_ctrl_c_in_a_deploy_or_a_provision_puts_the_device_back(tmp_path: Path) -> None:
    a, b = _firmware(tmp_path, "a"), _firmware(tmp_path, "b")
    want_a = _expected(a, tmp_path)
    inv = write_inventory(tmp_path / "fleet.toml")
    state = tmp_path / "dev"
    with running(state) as dev:
        assert (
            opmob("deploy", "--port", dev.port, "--board", "unix-sim", "--firmware", str(a)).returncode == 0
        )
        proc = _slow_deploy(dev, b)
        _wait_staged(state, 5, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert f"opmob deploy: interrupted: the device on {dev.port} is as it was before this command" in err
        assert "run the same command again" in err
        assert _on_device(state) == want_a
        assert not (state / ".opmob-stage").exists(), "the staged files are removed"
        assert not list(state.rglob("*.tmp"))

        # Ctrl-C while /config.json.tmp is being written: no configuration, no scratch file.
        proc = subprocess.Popen(
            [sys.executable, "-m", "opmob_host.cli", "provision", "--inventory", str(inv)]
            + ["--device", "ada@no", "--port", dev.port],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OPMOB_TEST_STEP_DELAY="0.05"),
        )
        deadline = time.monotonic() + 60
        while not (state / "config.json.tmp").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "Traceback" not in err and "opmob provision: interrupted: the device on" in err, err
        assert not (state / "config.json.tmp").exists() and not (state / "config.json").exists()
        r = opmob("provision", "--inventory", str(inv), "--device", "ada@no", "--port", dev.port)
        assert r.returncode == 0 and "ada@no provisioned" in r.stdout, r.stdout + r.stderr


def test_deploy_refuses_a_board_of_another_architecture(tmp_path: Path) -> None:
    with running(tmp_path / "dev") as dev:
        r = opmob("deploy", "--port", dev.port, "--board", "esp32-s3-ptt")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert "runs MicroPython for x64" in r.stderr and "esp32-s3-ptt is xtensawin" in r.stderr, r.stderr
        assert "Nothing was written" in r.stderr
        assert not (dev.state / "lib").exists() and not (dev.state / "opmob.manifest.json").exists()


def test_boot_completes_a_switch_that_a_power_loss_cut_short(tmp_path: Path) -> None:
    a, b = _firmware(tmp_path, "a"), _firmware(tmp_path, "b")
    want_b = _expected(b, tmp_path)
    state = tmp_path / "dev"
    with running(state) as dev:
        assert (
            opmob("deploy", "--port", dev.port, "--board", "unix-sim", "--firmware", str(a)).returncode == 0
        )
    # What a deploy of b leaves when the power goes after its commit point, with a third of the
    # files moved: the staged rest, the journal, the new manifest staged.
    files = deploy.build(b, "unix-sim", "x64", tmp_path / "build-b2")
    manifest = json.loads((state / "opmob.manifest.json").read_text())
    manifest["files"] = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    changed = sorted(p for p, h in manifest["files"].items() if _sha(state, p) != h)
    stage = state / ".opmob-stage"
    for i, p in enumerate(changed):
        dest = (state if i < len(changed) // 3 else stage) / p.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(files[p])
    (stage / "opmob.manifest.json").write_text(json.dumps(manifest))
    (state / ".opmob-switch.json").write_text(json.dumps({"move": changed + [deploy.MANIFEST], "remove": []}))
    assert _on_device(state) != want_b
    with running(state) as dev:  # boot.py runs at the device's start
        r = opmob("verify", "--port", dev.port)
        assert "self-test      files: PASS" in r.stdout, r.stdout
        assert _on_device(state) == want_b
        assert not (state / ".opmob-switch.json").exists()


def _sha(state: Path, p: str) -> str | None:
    f = state / p.lstrip("/")
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None
