"""The README's commands run: ``opmob demo`` (behind ``make demo``) and ``opmob bench``."""

from __future__ import annotations

import json
import re
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
    """One relay and three virtual accessories (the firmware on the MicroPython unix port)."""
    proc = opmob("demo", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    timeline = out.split("Floor timeline")[1].split("Access time")[0]
    # The scripted exchange, in order: alice's talk burst, bob denied while busy (cause 1), the
    # chief pre-empting alice (revoke cause 4), bob's emergency pre-empting the chief, its cancel.
    script = [
        "alice@no  floor granted",
        "bob@no    rx fire-1@no alice@no",
        "bob@no    floor denied 1",
        "alice@no  floor revoked 4",
        "chief@no  floor granted",
        "bob@no    emergency on fire-1@no",
        "chief@no  floor revoked 4",
        "bob@no    floor granted",
        "alice@no  alert fire-1@no bob@no",
        "bob@no    emergency off fire-1@no",
        "alice@no  alert_cancel fire-1@no bob@no",
    ]
    # In order for each accessory (lines of different accessories are stamped when the host got
    # them, so their order across accessories is not the order of events).
    for who in ("alice@no", "bob@no", "chief@no"):
        mine = [ln.split("ms  ", 1)[1] for ln in timeline.splitlines() if f"ms  {who} " in ln]
        at = 0
        for step in (x for x in script if x.startswith(who)):
            assert step in mine[at:], f"{step!r} missing (or out of order) in:\n{timeline}"
            at = mine.index(step, at) + 1
    # Each request's access time, measured on the accessory.
    access = re.findall(r"^  (\S+)\s+.*?((?:queued|granted|denied) after [\d.]+ ms.*)$", out, re.M)
    assert [(w, r.split()[-4] if "," in r else r.split()[0]) for w, r in access] == [
        ("alice@no", "granted"),
        ("bob@no", "denied"),
        ("chief@no", "granted"),
        ("bob@no", "granted"),
    ], access
    # Alice's speech arrived in bob's speaker, and the WAV files are where the demo says.
    m = re.search(r"normalised cross-correlation ([\d.]+), mouth-to-ear (\d+) ms", out)
    assert m is not None and float(m.group(1)) >= 0.9, out
    for name in ("alice", "bob", "chief"):
        wav = tmp_path / name / "speaker.wav"
        assert str(wav) in out
        with wave.open(str(wav)) as w:
            assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            assert w.getnframes() > 5 * 8000


RESIDUAL_ROWS = {"accessory.release_tail_ms"}


def test_bench_writes_rows_for_both_runtimes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = opmob("bench", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    for row in rows:
        assert set(row) == {"name", "value", "unit", "goal", "runtime", "note"}
        # A residual (audio played after the burst ended, frames concealed, underruns) is at its
        # best at zero; every other figure is a time or a rate, and zero would mean no measurement.
        if row["name"] in RESIDUAL_ROWS or "underruns" in row["name"] or "concealed" in row["name"]:
            assert row["value"] >= 0, row
        else:
            assert row["value"] > 0, row
    names = {(r["name"], r["runtime"]) for r in rows}
    for name in ("rtp_srtp.protect_us", "rtp_srtp.unprotect_us", "dvi4.encode_frame_us", "mcpt.decode_us"):
        assert (name, "cpython") in names
        assert (name, "micropython") in names
        assert (f"ratio.micropython_over_cpython.{name}", "both") in names


def test_the_installed_opmob_command_has_every_subcommand() -> None:
    """`make setup` installs `opmob` into the virtual environment (pyproject's entry point): the
    technician's command, not `python -m`, with every subcommand docs/technician.md names."""
    exe = ROOT / ".venv" / "bin" / "opmob"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    for sub in ("ports", "flash", "deploy", "provision", "verify", "registry", "relay", "virtual"):
        assert re.search(rf"^\s+{sub}\s", proc.stdout, re.M), (sub, proc.stdout)
    for sub in ("demo", "bench", "monitor", "fuzz"):
        assert re.search(rf"^\s+{sub}\s", proc.stdout, re.M), (sub, proc.stdout)
    export = subprocess.run(
        [str(exe), "registry", "export", "--help"], capture_output=True, text=True, timeout=60
    )
    assert export.returncode == 0 and "--partner" in export.stdout and "--strict" in export.stdout, (
        export.stdout
    )
