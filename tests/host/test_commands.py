"""The README's commands run: ``opmob demo`` (behind ``make demo``) and ``opmob bench``."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def opmob(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_demo_runs_the_scripted_exchange(tmp_path: Path) -> None:
    proc = opmob("demo", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # The scripted exchange: grant, busy deny, pre-emption (revoke cause 4), emergency.
    assert "alice@no   <- Floor Granted" in out
    assert "bob@se     <- Floor Deny (cause 1)" in out
    assert "alice@no   <- Floor Revoke (cause 4)" in out
    assert "bob@se     <- Floor Granted [EMERGENCY]" in out
    # Speech arrived and decoded: bob heard alice's 2 s and the chief's 1 s.
    with wave.open(str(tmp_path / "bob-heard.wav")) as w:
        assert w.getframerate() == 8000
        assert w.getnframes() == 3 * 8000
    # tshark decoded the capture the demo wrote.
    assert "(MCPT) Floor Request" in out
    assert "PT=DVI4 8000" in out


def test_bench_writes_rows_for_both_runtimes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = opmob("bench", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    for row in rows:
        assert set(row) == {"name", "value", "unit", "goal", "runtime", "note"}
        assert row["value"] > 0
    names = {(r["name"], r["runtime"]) for r in rows}
    for name in ("rtp_srtp.protect_us", "rtp_srtp.unprotect_us", "dvi4.encode_frame_us", "mcpt.decode_us"):
        assert (name, "cpython") in names
        assert (name, "micropython") in names
        assert (f"ratio.micropython_over_cpython.{name}", "both") in names
