"""A burst cut off mid-word, heard by a firmware listener (virtual accessories on the MicroPython
unix port around a relay process): after the talker's last voice frame the listener's speaker
plays silence, not the last frame repeated as if it had been lost. The speaker's WAV is what is
judged (opmob_host.bench_accessory_core); the goal of the bench row is 20 ms, one frame."""

from __future__ import annotations

from pathlib import Path

import pytest
from opmob_host.bench_accessory_core import GOAL_MS, measure_release_tail
from opmob_host.vaccessory import MICROPYTHON

pytestmark = pytest.mark.slow


def setup_module() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")


def test_no_concealment_after_the_talker_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The floor tells the listener the talker stopped (Floor Idle), and the playback path ends the
    # stream once what it holds has played: before, concealment ran after the talker had stopped
    # and repeated the last frame three times, fading (60 ms of stutter).
    res = measure_release_tail(tmp_path, bursts=3)
    tails = res["tails_ms"]
    jb = res["jitter"]
    assert len(tails) == 3, res
    assert max(tails) <= GOAL_MS, res
    assert jb["ended"] == 3, jb
    with capsys.disabled():
        print(f"\n  release tail per burst: {tails} ms (goal <= {GOAL_MS:.0f}); jitter {jb}")
