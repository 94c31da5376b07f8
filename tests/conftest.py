"""Test configuration shared by every tier.

The dual-runtime harness lives here: each ``tests/fw/test_*.py`` module is collected twice, once
as an ordinary pytest module (CPython) and once as a ``[micropython]`` twin whose tests run in a
MicroPython unix-port subprocess (``tests/fw/mpy_runner.py``), one subprocess per module, with each
test's outcome reported as its own pytest result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FW_TESTS = ROOT / "tests" / "fw"
FIRMWARE = ROOT / "firmware"
sys.path.insert(0, str(FIRMWARE))
sys.path.insert(0, str(FW_TESTS))
sys.path.insert(0, str(ROOT / "tests" / "host"))

MPY_TIMEOUT_S = float(os.environ.get("OPMOB_MPY_TIMEOUT", "600"))

# `make test` (and CI) replays the same hypothesis examples every run, so a red CI is a change in the
# code, not a new draw; `make fuzz` (OPMOB_FUZZ_EXAMPLES set) explores with fresh randomness.
if "OPMOB_FUZZ_EXAMPLES" not in os.environ:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    _hypothesis_settings.load_profile("ci")


def micropython_binary() -> str | None:
    venv = ROOT / ".venv" / "bin" / "micropython"
    if venv.exists():
        return str(venv)
    return shutil.which("micropython")


def micropython_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = f"{FIRMWARE}:{FW_TESTS}:.frozen"
    return env


class MpyModuleRun:
    """Runs one test module in MicroPython once and parses its per-test lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, tuple[str, float, str]] | None = None
        self.output = ""

    def run(self) -> dict[str, tuple[str, float, str]]:
        if self.results is not None:
            return self.results
        exe = micropython_binary()
        if exe is None:
            pytest.fail("MicroPython unix port not installed: run `make setup`")
        # A large heap: some conformance tests keep thousands of vectors in memory.
        cmd = [exe, "-X", "heapsize=64M", str(FW_TESTS / "mpy_runner.py"), self.path.stem]
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=MPY_TIMEOUT_S,
                env=micropython_env(),
                cwd=str(ROOT),
            )
            out = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            out = (
                (e.stdout or b"").decode(errors="replace")
                if isinstance(e.stdout, bytes)
                else (e.stdout or "")
            )
            out += f"\n@@TIMEOUT after {MPY_TIMEOUT_S} s"
        self.output = out
        self.results = parse_runner_output(out)
        return self.results


def parse_runner_output(out: str) -> dict[str, tuple[str, float, str]]:
    results: dict[str, tuple[str, float, str]] = {}
    lines = out.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("@@OPMOB-TEST "):
            _, name, status, secs = line.split()
            tb = ""
            if i + 1 < len(lines) and lines[i + 1] == "@@BEGIN":
                j = i + 2
                body = []
                while j < len(lines) and lines[j] != "@@END":
                    body.append(lines[j])
                    j += 1
                tb = "\n".join(body)
                i = j
            results[name] = (status, float(secs), tb)
        i += 1
    return results


class MpyFile(pytest.File):
    def collect(self) -> Any:
        import ast

        tree = ast.parse(self.path.read_text(), str(self.path))
        run = MpyModuleRun(self.path)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield MpyItem.from_parent(self, name=f"{node.name}[micropython]", run=run, test=node.name)


class MpyItem(pytest.Item):
    def __init__(self, *, run: MpyModuleRun, test: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.run_ = run
        self.test = test
        self.add_marker(pytest.mark.micropython)

    def runtest(self) -> None:
        results = self.run_.run()
        if self.test not in results:
            tail = "\n".join(self.run_.output.splitlines()[-30:])
            raise MpyFailure(f"{self.test} did not run under MicroPython; runner output:\n{tail}")
        status, _secs, tb = results[self.test]
        if status == "SKIP":
            pytest.skip(tb.strip().splitlines()[-1] if tb.strip() else "skipped")
        if status != "PASS":
            raise MpyFailure(tb)

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, MpyFailure):
            return f"under MicroPython:\n{excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.test} (micropython)"


class MpyFailure(Exception):
    pass


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.parent == FW_TESTS and file_path.name.startswith("test_") and file_path.suffix == ".py":
        # A distinct name keeps the node ids apart from the CPython collection of the same file.
        return MpyFile.from_parent(parent, path=file_path, name=f"{file_path.name}::mpy")
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("hil", "hardware in the loop (tests/hil, docs/technician.md)")
    g.addoption("--hil-port", help="the serial port of a board (or of an `opmob virtual` device)")
    g.addoption("--hil-board", help="its board name (boards/NAME.json), e.g. esp32-s3-ptt or unix-sim")
    g.addoption("--hil-firmware", help="flash this MicroPython image first (opmob flash)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "micropython: a firmware test run under the MicroPython unix port")
    config.addinivalue_line("markers", "slow: a long test (network, processes); still part of make test")
    config.addinivalue_line(
        "markers", "fuzz: property-based bad-input test; `make fuzz` runs these at a higher count"
    )
