"""``opmob virtual``: the MicroPython unix port behind a pseudo-terminal, driven by the real mpremote."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from virtualdev import Virtual, opmob, running


@pytest.fixture
def virtual(tmp_path: Path) -> Iterator[Virtual]:
    with running(tmp_path / "device") as v:
        yield v


def test_exec_and_error(virtual: Virtual) -> None:
    r = virtual.mpremote("exec", "print(1+1)")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "2\n"
    r = virtual.mpremote("exec", "raise ValueError('boom')")
    assert r.returncode == 1
    assert "ValueError: boom" in r.stdout + r.stderr


def test_fs_cp_ls_cat_rm(virtual: Virtual, tmp_path: Path) -> None:
    data = bytes(range(256)).hex() * 40  # 20 KB: many raw-paste windows
    src = tmp_path / "f.txt"
    src.write_text(data)
    r = virtual.mpremote("fs", "mkdir", ":lib", "+", "fs", "cp", str(src), ":lib/f.txt")
    assert r.returncode == 0, r.stderr
    assert (virtual.state / "lib" / "f.txt").read_text() == data  # the device's file system root
    r = virtual.mpremote("fs", "cat", ":/lib/f.txt")
    assert r.returncode == 0 and r.stdout == data
    r = virtual.mpremote("fs", "ls", ":lib")
    assert "f.txt" in r.stdout
    r = virtual.mpremote("fs", "rm", ":lib/f.txt", "+", "fs", "ls", ":lib")
    assert r.returncode == 0 and "f.txt" not in r.stdout.split("ls :lib")[1]
    # /lib is on sys.path, as on a board.
    (virtual.state / "lib" / "vmod.py").write_text("VALUE = 7\n")
    r = virtual.mpremote("exec", "import vmod, sys; print(vmod.VALUE, sys.path)")
    assert r.stdout.startswith("7 ['', '.frozen', '/lib']"), r.stdout + r.stderr
    r = virtual.mpremote("fs", "cat", ":missing")
    assert r.returncode != 0 and "No such file" in r.stderr + r.stdout


def test_soft_reset_restarts_the_interpreter_and_resume_keeps_it(virtual: Virtual) -> None:
    r = virtual.mpremote("exec", "x = 42", "+", "resume", "exec", "print(x)")
    assert r.stdout.strip() == "42", r.stderr
    r = virtual.mpremote("resume", "exec", "print(x)")  # a new connection, no soft reset
    assert r.stdout.strip() == "42", r.stderr
    r = virtual.mpremote("soft-reset", "exec", "print('x' in globals())")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
    r = virtual.mpremote("exec", "print(2*3)")  # mpremote's own soft reset before exec
    assert r.stdout.strip() == "6"


def test_ctrl_c_interrupts_and_friendly_repl(virtual: Virtual) -> None:
    with serial.Serial(virtual.port, timeout=5) as s:

        def until(marker: bytes) -> bytes:
            data = b""
            deadline = time.monotonic() + 10
            while not data.endswith(marker) and time.monotonic() < deadline:
                data += s.read(1)
            assert data.endswith(marker), data
            return data

        s.write(b"\r\x01")
        until(b"raw REPL; CTRL-B to exit\r\n>")
        s.write(b"while True: pass\x04")
        until(b"OK")
        time.sleep(0.3)
        s.write(b"\x03")
        assert b"KeyboardInterrupt" in until(b"\x04>")
        s.write(b"\x02")
        until(b">>> ")
        s.write(b"6*7\r")
        assert b"42\r\n" in until(b">>> ")
        s.write(b"\x04")
        assert b"soft reboot" in until(b">>> ")


def test_a_control_port_in_use_or_a_shared_state_directory_is_refused(tmp_path: Path) -> None:
    """Issue 12: both were accepted, and the second device then failed where nobody looked."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = opmob("virtual", "--state", str(tmp_path / "a"), "--control-port", str(port), timeout=30)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        assert (
            f"--control-port {port}: 127.0.0.1:{port} is in use" in r.stderr and "Traceback" not in r.stderr
        )
    with running(tmp_path / "shared") as first:
        wiring = (tmp_path / "shared" / ".sim.json").read_text()
        r = opmob("virtual", "--state", str(tmp_path / "shared"), timeout=30)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        assert f"is in use by another virtual device (pid {first.proc.pid})" in r.stderr, r.stderr
        assert (tmp_path / "shared" / ".sim.json").read_text() == wiring, "the first device's wiring is kept"
