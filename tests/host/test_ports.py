"""``opmob ports``: pyserial's list plus named ports, with what answers on each; a virtual device
answers as MicroPython (and names its board once deployed); a missing port is an error."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_port_held_open_without_a_lock_is_busy(tmp_path: Path) -> None:
    """A program holding the port open without pyserial's exclusive lock (cat, screen) would eat
    the device's answers: every command names it instead, and mpremote's own prints stay out."""
    with running(tmp_path / "dev") as dev:
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import sys, time\nf = open({dev.port!r}, 'rb')\nprint(1, flush=True)\ntime.sleep(60)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
            says = f"port {dev.port} is busy: open in "
            for cmd in (
                ("verify", "--port", dev.port),
                ("deploy", "--port", dev.port, "--board", "unix-sim"),
            ):
                r = opmob(*cmd)
                assert r.returncode == 1, r.stdout + r.stderr
                assert r.stderr.startswith(f"opmob {cmd[0]}: {says}"), r.stderr
                assert f"(pid {holder.pid}); close it first" in r.stderr, r.stderr
                assert r.stdout == "" and "Traceback" not in r.stderr, r.stdout + r.stderr
            r = opmob("ports", dev.port, "--json", timeout=60)
            rows = {row["port"]: row for row in json.loads(r.stdout)}
            assert rows[dev.port]["detected"].startswith("busy: open in "), rows[dev.port]
            assert f"(pid {holder.pid})" in rows[dev.port]["detected"]
        finally:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()
        r = opmob("verify", "--port", dev.port)  # the holder gone, the device answers again
        assert r.stdout.startswith(f"port           {dev.port}") and "busy" not in r.stderr, (
            r.stdout + r.stderr
        )
