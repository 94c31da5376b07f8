"""``opmob ports``: pyserial's list plus named ports, with what answers on each; a virtual device
answers as MicroPython (and names its board once deployed); a missing port is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opmob_host.vaccessory import MICROPYTHON
from virtualdev import opmob, running

pytestmark = pytest.mark.slow


def test_virtual_device_is_detected(tmp_path: Path) -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    with running(tmp_path / "dev") as dev:
        r = opmob("ports", dev.port, "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        rows = {row["port"]: row for row in json.loads(r.stdout)}
        assert rows[dev.port]["detected"].startswith("MicroPython on "), rows
        assert rows[dev.port]["detected"].endswith("board none deployed")
        assert opmob("deploy", "--port", dev.port, "--board", "unix-sim").returncode == 0
        r = opmob("ports", dev.port, timeout=60)
        assert r.returncode == 0 and "board unix-sim" in r.stdout, r.stdout + r.stderr
        r = opmob("ports", dev.port, "--no-probe")
        assert r.returncode == 0 and dev.port in r.stdout and "MicroPython" not in r.stdout


def test_missing_device() -> None:
    r = opmob("ports", "/dev/ttyNOPE9", "--no-probe")
    assert r.returncode == 1
    assert "/dev/ttyNOPE9" in r.stdout and "absent: no such port" in r.stdout
    assert "a named port does not exist" in r.stderr and "Traceback" not in r.stderr
