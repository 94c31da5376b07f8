"""``opmob deploy``: mpy-cross for the board's architecture, only what changed copied, against a
virtual device through mpremote's transport."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from virtualdev import ROOT, Virtual, opmob, running


@pytest.fixture
def virtual(tmp_path: Path) -> Iterator[Virtual]:
    with running(tmp_path / "device") as v:
        yield v


def copied(out: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("copied ")]


def test_deploy_copies_only_what_changed(virtual: Virtual, tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "opmob"
    shutil.copytree(ROOT / "firmware" / "opmob", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    n_sources = sum(1 for _ in pkg.rglob("*.py"))

    r = opmob("deploy", "--port", virtual.port, "--board", "unix-sim", "--firmware", str(pkg))
    assert r.returncode == 0, r.stderr
    first = copied(r.stdout)
    assert len(first) == n_sources + 3  # the .mpy files, board.json, boot.py, main.py
    assert "/board.json" in first and "/lib/opmob/sig.mpy" in first
    assert (virtual.state / "board.json").read_bytes() == (ROOT / "boards" / "unix-sim.json").read_bytes()
    assert not list(virtual.state.rglob("*.py")) or {p.name for p in virtual.state.rglob("*.py")} == {
        "boot.py",
        "main.py",
    }
    assert not list(virtual.state.rglob("*.tmp"))

    # Second deploy: nothing; the board is read from the device's /board.json.
    r = opmob("deploy", "--port", virtual.port, "--firmware", str(pkg))
    assert r.returncode == 0, r.stderr
    assert copied(r.stdout) == [] and "0 file(s) copied, 0 removed" in r.stdout

    # One source changed: one file copied. One gone: removed on the device.
    (pkg / "errors.py").write_text((pkg / "errors.py").read_text() + "\nDEPLOYED_MARK = 1\n")
    extra = pkg / "extra_mod.py"
    extra.write_text("X = 1\n")
    r = opmob("deploy", "--port", virtual.port, "--firmware", str(pkg))
    assert sorted(copied(r.stdout)) == ["/lib/opmob/errors.mpy", "/lib/opmob/extra_mod.mpy"], r.stdout
    extra.unlink()
    r = opmob("deploy", "--port", virtual.port, "--firmware", str(pkg))
    assert copied(r.stdout) == [] and "1 removed" in r.stdout
    assert not (virtual.state / "lib" / "opmob" / "extra_mod.mpy").exists()

    # The deployed .mpy package imports and runs on the device.
    r = virtual.mpremote("exec", "import opmob.sig, opmob.errors; print(opmob.errors.DEPLOYED_MARK)")
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stdout + r.stderr

    # A damaged manifest: everything copied again.
    (virtual.state / "opmob.manifest.json").write_text("{garbage")
    r = opmob("deploy", "--port", virtual.port, "--firmware", str(pkg))
    assert len(copied(r.stdout)) == n_sources + 3


def test_deploy_errors_speak_to_the_technician(virtual: Virtual, tmp_path: Path) -> None:
    r = opmob("deploy", "--port", "/dev/ttyNOPE0")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr

    r = opmob("deploy", "--port", "/dev/null")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "/dev/null is not a serial port" in r.stderr and "opmob ports" in r.stderr, r.stderr

    r = opmob("deploy", "--port", virtual.port, "--board", "nosuchboard")
    assert r.returncode == 1 and "unknown board 'nosuchboard'" in r.stderr and "unix-sim" in r.stderr

    with serial.Serial(virtual.port, exclusive=True):
        r = opmob("deploy", "--port", virtual.port)
    assert r.returncode == 1 and "busy" in r.stderr, r.stderr

    master, slave = os.openpty()  # a terminal with nothing answering behind it
    try:
        r = opmob("deploy", "--port", os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 1 and "does not answer" in r.stderr, r.stderr
    assert not (virtual.state / "opmob.manifest.json").exists()


def test_device_gone_mid_deploy_says_so_and_the_next_deploy_completes(tmp_path: Path) -> None:
    """The board unplugged (the virtual device killed) while files are being copied: one sentence,
    exit 1, no traceback; the same command on the device again completes the deploy."""
    state = tmp_path / "device"
    with running(state) as v:
        cmd = [sys.executable, "-m", "opmob_host.cli", "deploy", "--port", v.port, "--board", "unix-sim"]
        env = dict(os.environ, OPMOB_TEST_STEP_DELAY="0.02")  # slowed down: killed mid-copy
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + 30
        while not (state / ".opmob-stage" / "lib" / "opmob").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        v.proc.kill()
        v.proc.wait()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err and "SerialException" not in err, err
    assert (
        f"the device on {v.port} stopped answering (unplugged or reset?) during writing /.opmob-stage/lib/"
        in err
    ), err
    assert not (state / "lib").exists(), "staged files only: nothing of the new set is in use"
    assert "nothing was left half-written: run the same command again" in err
    with running(state) as v:
        r = opmob("deploy", "--port", v.port)
        assert r.returncode == 0, r.stderr
        assert copied(r.stdout), "the deploy cut short is completed"
        r = opmob("verify", "--port", v.port)
        assert "self-test      files: PASS" in r.stdout, r.stdout
