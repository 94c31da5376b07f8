"""The relay fuzzer (``opmob fuzz relay``, host_tools/opmob_host/fuzz_relay.py): a short run in
``make test`` (``make fuzz`` runs a million inputs), and proof that each of its checks fails when
the relay misbehaves: a core that raises, hangs, is slow, miscounts, answers malformed datagrams
or loses a device's state is caught, with the input that did it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opmob.relay import Relay
from opmob_host import fuzz_relay
from opmob_host.fuzz_relay import REQUIRED_LABELS, WITNESS_MEMBERS, Report, run

ROOT = Path(__file__).resolve().parents[2]
SHORT_RUN = int(os.environ.get("OPMOB_FUZZ_SHORT_INPUTS", "20000"))


def test_short_run_finds_nothing_and_reaches_every_plane() -> None:
    rep = run(SHORT_RUN, seed=20_000)
    assert rep.ok, rep.summary()
    assert rep.inputs == SHORT_RUN
    # The corpus holds every kind of datagram the relay accepts, captured from a real exchange.
    for label in REQUIRED_LABELS:
        assert rep.corpus.get(label, 0) >= 1, (label, rep.corpus)
    # Every mutator ran; the inputs reached all three planes and got past authentication.
    assert set(rep.mutators) == set(fuzz_relay.MUTATORS), rep.mutators
    drops = rep.drops()
    for plane in ("sig_", "rtp_", "rtcp_"):
        assert sum(v for k, v in drops.items() if k.startswith("drop_" + plane)) > 100, drops
    for reason in ("sig_auth_failed", "sig_replayed", "rtp_replayed", "rtcp_replayed", "rtcp_unknown_ssrc"):
        assert drops.get("drop_" + reason, 0) > 0, drops
    # Authentic garbage was decoded (its drops come after the tag check) and some was accepted.
    assert drops.get("drop_sig_bad_value", 0) > 0 and drops.get("drop_rtcp_bad_value", 0) > 0
    assert rep.mutator_accepted.get("authentic", 0) > 0
    c = rep.counters
    assert c["rx_datagrams"] == c["accepted"] + sum(drops.values()) > SHORT_RUN
    # The witnesses talked through the storm and were heard, every packet, by every other member.
    w = rep.witness
    assert w["bursts"] >= SHORT_RUN * 0.002 / fuzz_relay.BURST_EVERY_S - 2, w
    assert w["granted"] >= w["bursts"] - 1
    listeners = len(next(iter(WITNESS_MEMBERS.values()))) - 1
    assert w["voice_heard"] == w["voice_sent"] * listeners > 0, w
    json.dumps(rep.as_dict())


def test_same_seed_same_run() -> None:
    a, b = run(3000, seed=5), run(3000, seed=5)
    assert a.ok and b.ok
    assert a.counters == b.counters and a.mutators == b.mutators
    assert run(3000, seed=6).counters != a.counters


# --- each check fails when it should -------------------------------------------------------------------


def _first_failure(rep: Report, kind: str) -> fuzz_relay.Failure:
    assert not rep.ok, rep.summary()
    kinds = [f.kind for f in rep.failures]
    assert kind in kinds, rep.summary()
    return rep.failures[kinds.index(kind)]


def _trigger(data: bytes, addr: Any = ("203.0.113.1", 1)) -> bool:
    # About one signalling-shaped input in a few hundred, from a stranger (never the devices' own
    # traffic, so the corpus is captured cleanly).
    return addr[0].startswith("203.0.113.") and data[:2] == b"OM" and len(data) % 53 == 7


class RaisingRelay(Relay):  # type: ignore[misc]
    def _dispatch(self, now: float, addr: Any, data: bytes) -> Any:
        if _trigger(data, addr):
            raise IndexError("planted bug")
        return super()._dispatch(now, addr, data)


def test_an_exception_is_caught_with_the_input_that_raised_it() -> None:
    rep = run(20_000, seed=1, relay_factory=RaisingRelay)
    f = _first_failure(rep, "exception")
    assert "IndexError: planted bug" in f.detail and "_dispatch" in f.detail
    assert f.index is not None and f.mutator and f.data is not None
    data = bytes.fromhex(f.data)
    assert _trigger(data)
    assert rep.inputs == f.index + 1  # the run stopped there


class MiscountingRelay(Relay):  # type: ignore[misc]
    def on_datagram(self, now: float, addr: Any, data: bytes) -> Any:
        out = super().on_datagram(now, addr, data)
        if _trigger(data, addr) and self.counters["accepted"]:
            self.counters["accepted"] -= 1  # a datagram neither accepted nor dropped
        return out


def test_a_datagram_not_counted_is_caught() -> None:
    f = _first_failure(run(20_000, seed=2, relay_factory=MiscountingRelay), "accounting")
    assert f.data is not None and _trigger(bytes.fromhex(f.data))


class OversizeRelay(Relay):  # type: ignore[misc]
    def on_datagram(self, now: float, addr: Any, data: bytes) -> Any:
        out = super().on_datagram(now, addr, data)
        if _trigger(data, addr):
            out.append((addr, bytes(1600)))
        return out


def test_a_malformed_answer_is_caught() -> None:
    f = _first_failure(run(20_000, seed=3, relay_factory=OversizeRelay), "output")
    assert "1600 bytes" in f.detail


class HangingRelay(Relay):  # type: ignore[misc]
    def _dispatch(self, now: float, addr: Any, data: bytes) -> Any:
        if _trigger(data, addr):
            end = time.perf_counter() + 60
            while time.perf_counter() < end:  # a busy loop: the core never returns by itself
                pass
        return super()._dispatch(now, addr, data)


def test_a_hang_is_interrupted_and_reported() -> None:
    t0 = time.monotonic()
    rep = run(20_000, seed=4, relay_factory=HangingRelay, input_limit_s=0.5, hang_s=1.0)
    assert time.monotonic() - t0 < 30  # interrupted, not waited out
    f = _first_failure(rep, "hang")
    assert f.data is not None and _trigger(bytes.fromhex(f.data))


class SlowRelay(Relay):  # type: ignore[misc]
    def _dispatch(self, now: float, addr: Any, data: bytes) -> Any:
        if _trigger(data, addr):
            time.sleep(1.0)
        return super()._dispatch(now, addr, data)


def test_a_slow_input_is_reported() -> None:
    f = _first_failure(run(20_000, seed=5, relay_factory=SlowRelay, input_limit_s=0.5, hang_s=5), "slow")
    assert "limit 0.5 s" in f.detail
    assert f.data is not None and _trigger(bytes.fromhex(f.data))


class ForgetfulRelay(Relay):  # type: ignore[misc]
    """Validates too late: a malformed request naming a live session wipes its affiliations."""

    def _on_sig(self, now: float, addr: Any, data: bytes) -> Any:
        try:
            return super()._on_sig(now, addr, data)
        except Exception:
            if len(data) >= 16:
                s = self._sessions.get(int.from_bytes(data[12:16], "big"))
                if s is not None and s.identity.startswith("w-"):
                    s.affs = []
            raise


def test_lost_state_is_caught_by_the_witnesses() -> None:
    rep = run(20_000, seed=6, relay_factory=ForgetfulRelay)
    assert not rep.ok
    assert {f.kind for f in rep.failures} <= {"witness", "final"}, rep.summary()


class FloorLosingRelay(Relay):  # type: ignore[misc]
    """Drops voice to one listener after a while: only the witnesses can tell."""

    def _on_rtp(self, now: float, addr: Any, data: bytes) -> Any:
        out = super()._on_rtp(now, addr, data)
        if self.counters["rx_datagrams"] > 3000 and len(out) > 1:
            out = out[1:]
        return out


def test_voice_that_does_not_arrive_is_caught() -> None:
    f = _first_failure(run(20_000, seed=7, relay_factory=FloorLosingRelay), "witness")
    assert "voice packets" in f.detail


def test_the_command_runs_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "opmob_host.cli",
            "fuzz",
            "relay",
            "--inputs",
            "2000",
            "--seed",
            "9",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2000 inputs" in proc.stdout and "inputs/s" in proc.stdout and "OK:" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["inputs"] == 2000 and doc["seed"] == 9
    c = doc["counters"]
    assert c["rx_datagrams"] == c["accepted"] + sum(v for k, v in c.items() if k.startswith("drop_"))


def test_the_command_fails_on_a_bad_count() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", "fuzz", "relay", "--inputs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "--inputs" in proc.stderr


def test_the_coverage_guided_stage_runs(tmp_path: Path) -> None:
    # make fuzz's atheris stage, briefly: the harness builds its world and feeds the relay.
    proc = subprocess.run(
        [sys.executable, "-m", "opmob_host.fuzz_relay_atheris", "-runs=3000", "-max_len=1600", "-timeout=5"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 3000 runs" in proc.stderr
    assert not list(tmp_path.iterdir())  # no crash-* artifact
