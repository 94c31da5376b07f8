"""A virtual device (``opmob virtual``) as a test fixture, and the real mpremote against it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MPREMOTE = ROOT / ".venv" / "bin" / "mpremote"


def write_inventory(path: Path, port: int = 9, ssid: str = "opmob-none") -> Path:
    """A fleet inventory (docs/technician.md) of unix-sim devices in fire-1@no, served by one relay
    at 127.0.0.1:``port`` that the devices find as WiFi ``ssid`` (the defaults: no relay)."""
    path.write_text(
        'format = "opmob-fleet"\nversion = 1\nsystem = "no"\n\n'
        '[defaults]\nboard = "unix-sim"\ngroups = ["fire-1@no"]\nceiling = 100\n\n'
        f'[[relays]]\nidentity = "relay-1@no"\nhost = "127.0.0.1"\nport = {port}\nssid = "{ssid}"\n\n'
        '[[groups]]\nidentity = "fire-1@no"\npolicy = "members"\npriority = 100\n'
    )
    return path


def opmob(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


class Virtual:
    """``opmob virtual --state STATE [OPTIONS]``: ``port`` (its pseudo-terminal) and ``control_port``
    (the sim board's control channel, which /main.py's firmware serves) from its first two lines."""

    def __init__(self, state: Path, *options: str) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opmob_host.cli", "virtual", "--state", str(state), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.port = self.proc.stdout.readline().strip()
        control = self.proc.stdout.readline().split()
        if not self.port.startswith("/dev/") or len(control) != 2 or control[0] != "control":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"opmob virtual did not start: {self.proc.stderr.read()}")
        self.control_port = int(control[1].rsplit(":", 1)[1])

    def mpremote(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MPREMOTE), "connect", self.port, *args], capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@contextmanager
def running(state: Path, *options: str) -> Iterator[Virtual]:
    v = Virtual(state, *options)
    try:
        yield v
    finally:
        v.stop()
