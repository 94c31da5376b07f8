"""A virtual device (``opmob virtual``) as a test fixture, and the real mpremote against it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MPREMOTE = ROOT / ".venv" / "bin" / "mpremote"


def opmob(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


class Virtual:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opmob_host.cli", "virtual", "--state", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.port = self.proc.stdout.readline().strip()
        if not self.port.startswith("/dev/"):
            self.proc.kill()
            raise RuntimeError(f"opmob virtual did not start: {self.proc.stderr.read()}")

    def mpremote(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MPREMOTE), "connect", self.port, *args], capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@contextmanager
def running(state: Path) -> Iterator[Virtual]:
    v = Virtual(state)
    try:
        yield v
    finally:
        v.stop()
