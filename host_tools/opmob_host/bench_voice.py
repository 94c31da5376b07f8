"""Bench rows of local voice at the physical limit, measured on virtual accessories (the firmware
on the MicroPython unix port with the unix-sim board, whose speaker models the board's I2S DMA)
around one relay process. Every figure is taken where the event happens, never computed from
settings:

- ``accessory.access_ms.p95``: the PTT key's edge (the sim pin's level change, on the talker) to
  the first sample of the talk-permit tone at the talker's speaker: the talker's ``kpi access``
  report (docs/accessory-audio.md, "Measured where it happens"). Goal <= 10 ms.
- ``voice.mouth_to_ear_ms.p95``: for every voice frame of the talker's bursts, from the first one
  the listener played, the moment its first sample entered the talker's microphone (the mic's
  start time, reported with the burst's first sequence number: frame n of a burst began 20 n ms
  later) to the moment it left the listener's speaker (the speaker's start time plus the frame's
  place in the samples played; ``voice trace on`` reports that place wherever the playout
  moves, and the frames after sound at the same offset). Wall clock of this host, shared by the
  processes. Goal <= 60 ms.
- ``voice.late_entry_ms.p95``: a listener steps its talk group into a group where a call runs;
  from its affiliation's answer (it could first have heard) to the call's first voice at its
  speaker: the listener's ``kpi late_entry`` report. Goal <= 100 ms.
- the same with 0..10 ms of delay drawn per datagram on each hop (``vaccessory.DelayProxy`` in
  front of the relay: 0..20 ms of jitter talker to listener), rows ``.jitter20``; there also
  ``voice.concealed_pct.jitter20``: frames the listener's jitter buffer concealed, per cent of
  the frames it played (goal <= 1 %).
- ``voice.speaker_underruns[.jitter20]``: how often the listener's speaker DMA ran dry during
  the talk bursts (its process woke late: the host's load, which the figures above then carry).

Each figure is over at least ``EVENTS`` (50) events: key presses, talk bursts (every frame of
them), group entries.

    rows() -> [(name, value, unit)]
    measure(workdir, jitter_ms=0, events=EVENTS) -> dict of the raw samples
"""

from __future__ import annotations

import random
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from opmob_host.vaccessory import MICROPYTHON, SPEECH, Accessory, DelayProxy, Fleet

CALL = "fire-1@no"
OTHER = "fire-2@no"
EVENTS = 50
BURST_S = 0.4  # talk-burst length: 20 frames
FRAME_S = 0.020
RATE = 8000


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    if not values:
        raise ValueError("no samples")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(0.95 * len(s) + 0.5)) - 1))
    return s[k]


def _sdiff16(a: int, b: int) -> int:
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def _kpis(a: Accessory, kind: str, since: int) -> list[float]:
    return [float(x.text.split()[2]) for x in a.seen(f"kpi {kind} ", since)]


def _mouth_to_ear(talker: Accessory, listener: Accessory, since_t: int, since_l: int) -> list[float]:
    """Per voice frame the talker sent: the listener's speaker time less the talker's microphone
    time. The listener reports a frame's place in its speaker's samples where the playout moves
    (``voice trace on``); the frames after it sound at the same offset until the next report."""
    bursts: list[tuple[int, int, float]] = []  # (first seq, frames, wall time of its first sample)
    start: tuple[int, float] | None = None
    first: int | None = None
    for x in talker.seen("", since_t):
        w = x.text.split()
        if w[:2] == ["mic", "start"]:
            start = (int(w[2]), float(w[3]))
        elif w[0] == "burst" and start is not None:
            first = int(w[1])
        elif w[:2] == ["mic", "stop"] and start is not None and first is not None:
            bursts.append((first, (int(w[2]) - start[0]) // 160, start[1]))
            start = first = None
    t0 = float(listener.command("speaker flush").split()[3])
    moves: list[tuple[int, int]] = []  # (seq, sample) where the playout moved
    for x in listener.seen("play ", since_l):
        _, seq_s, pos_s = x.text.split()
        moves.append((int(seq_s), int(pos_s)))
    out = []
    for first_seq, frames, mic_t in bursts:
        # the last move at or before each frame of this burst (sequence numbers wrap at 2^16)
        mine = [(_sdiff16(s, first_seq), p) for s, p in moves if 0 <= _sdiff16(s, first_seq) < frames]
        if not mine:
            continue  # the burst was not heard (it cannot be: the bench waits for it)
        mine.sort()
        for n in range(mine[0][0], frames):
            d, pos = max(m for m in mine if m[0] <= n)
            ear = t0 + (pos + (n - d) * 160) / RATE
            mouth = mic_t + n * FRAME_S
            out.append((ear - mouth) * 1000)
    return out


def measure(workdir: Path, jitter_ms: int = 0, events: int = EVENTS) -> dict[str, Any]:
    """Run the three measurements on a fresh relay, alice talking and bob listening."""
    fleet = Fleet(workdir, ["alice@no", "bob@no"], [CALL, OTHER], floor={"t2": 3600.0})
    rng = random.Random(19)
    res: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.enter_context(fleet.relay())
        cfgs = {}
        for ident in ("alice@no", "bob@no"):
            cfgs[ident] = fleet.config(ident)
        if jitter_ms:
            # Half the jitter on each hop (talker to relay, relay to listener), drawn per datagram.
            hop = jitter_ms / 2000.0
            proxy = stack.enter_context(DelayProxy(fleet.udp, lambda: rng.uniform(0.0, hop)))
            for c in cfgs.values():
                c["relays"][0]["port"] = proxy.port
        alice = stack.enter_context(fleet.accessory("alice@no", config=cfgs["alice@no"], mic=SPEECH))
        bob = stack.enter_context(fleet.accessory("bob@no", config=cfgs["bob@no"]))
        for a in (alice, bob):
            a.wait_last("ptt", "U: has no permission", 30)
            a.wait_last("led", "registered", 30)
        bob.command("voice trace on")
        j0 = bob.status()["jitter"]
        spk0 = bob.status().get("speaker", {}).get("underruns", 0)
        mark_a, mark_b = alice.mark(), bob.mark()

        # Access time and mouth-to-ear: alice's talk bursts, heard by bob.
        for _ in range(events):
            alice.command("mic rewind")
            m = alice.mark()
            alice.send("press ptt")
            alice.wait_for("kpi access", 10, since=m)
            time.sleep(BURST_S)
            m = bob.mark()
            alice.command("release ptt")
            bob.wait_for("rx none", 10, since=m)
            alice.wait_last("ptt", "U: has no permission", 10)
            time.sleep(0.1 + rng.uniform(0.0, 0.1))  # the next press at another phase of the ticks
        res["access_ms"] = _kpis(alice, "access", mark_a)
        res["mouth_to_ear_ms"] = _mouth_to_ear(alice, bob, mark_a, mark_b)
        st = bob.status()
        j1 = st["jitter"]
        res["played"] = j1["played"] - j0["played"]
        res["concealed"] = j1["concealed"] - j0["concealed"]
        # What moved playout on the listener, for the reader of the figures: its jitter buffer's
        # counters and how often its speaker's DMA ran dry (its playback task woke late).
        res["listener"] = {k: j1[k] - j0[k] for k in ("underruns", "late", "lost", "skipped", "shrunk")}
        res["listener"]["speaker_underruns"] = st.get("speaker", {}).get("underruns", 0) - spk0
        bob.command("voice trace off")

        # Late entry: alice talks on; bob steps out of the call's group and back in.
        m = bob.mark()
        alice.command("mic rewind")
        alice.command("press ptt")
        alice.wait_for("tone talk_permit", 10)
        bob.wait_for(f"rx {CALL} alice@no", 10, since=m)
        mark_b = bob.mark()
        for _ in range(events):
            m = bob.mark()
            bob.command("click group_up")
            bob.wait_for(f"group {OTHER}", 10, since=m)
            bob.wait_for("rx none", 10, since=m)
            time.sleep(0.05 + rng.uniform(0.0, 0.05))
            m = bob.mark()
            bob.command("click group_down")
            bob.wait_for("kpi late_entry", 10, since=m)
        res["late_entry_ms"] = _kpis(bob, "late_entry", mark_b)
        alice.command("release ptt")
    return res


def rows() -> list[tuple[str, float, str]]:
    if not MICROPYTHON.exists():
        raise RuntimeError("MicroPython unix port not installed: run `make setup`")
    if not SPEECH.exists():
        raise RuntimeError(f"{SPEECH} missing: install Debian's codec2-examples (make setup)")
    out: list[tuple[str, float, str]] = []
    for jitter_ms, suffix in ((0, ""), (20, ".jitter20")):
        with tempfile.TemporaryDirectory(prefix="opmob-bench-voice-") as d:
            res = measure(Path(d), jitter_ms)
        for key in ("access_ms", "mouth_to_ear_ms", "late_entry_ms"):
            if len(res[key]) < EVENTS:
                raise RuntimeError(f"voice bench: {key} has {len(res[key])} samples, fewer than {EVENTS}")
        out.append((f"accessory.access_ms.p95{suffix}", p95(res["access_ms"]), "ms"))
        out.append((f"voice.mouth_to_ear_ms.p95{suffix}", p95(res["mouth_to_ear_ms"]), "ms"))
        out.append((f"voice.late_entry_ms.p95{suffix}", p95(res["late_entry_ms"]), "ms"))
        if jitter_ms:
            pct = 100.0 * res["concealed"] / max(1, res["played"])
            out.append((f"voice.concealed_pct{suffix}", pct, "%"))
        # How often the listener's speaker ran dry because its process woke late: a busy host,
        # not the path (an ESP32's playback task has the chip to itself); it says how much of
        # the mouth-to-ear tail is the host's.
        out.append((f"voice.speaker_underruns{suffix}", float(res["listener"]["speaker_underruns"]), "count"))
    return out


if __name__ == "__main__":
    for name, value, unit in rows():
        print(f"{name} {value:.1f} {unit}")
