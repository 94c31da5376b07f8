"""The hardware-in-the-loop suite (tests/hil) proves itself on a virtual device: pointed with
``--hil-port`` at an ``opmob virtual`` device it deploys, provisions, verifies and runs its
functional checks; without a board it skips and says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opmob_host.vaccessory import MICROPYTHON
from virtualdev import ROOT, running

pytestmark = pytest.mark.slow


def hil_pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/hil", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_hil_suite_on_a_virtual_device(tmp_path: Path) -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    with running(tmp_path / "dev") as dev:
        r = hil_pytest("--hil-port", dev.port, "--hil-board", "unix-sim")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed, 1 skipped" in r.stdout, r.stdout
    assert "no --hil-firmware" in r.stdout


def test_hil_suite_without_a_board_skips_and_says_why() -> None:
    r = hil_pytest()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 skipped" in r.stdout and "no board attached: pass --hil-port" in r.stdout, r.stdout
