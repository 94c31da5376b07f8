"""Bench rows of the accessory core's end-to-end behaviour, measured on virtual accessories (the
firmware on the MicroPython unix port, host_tools/opmob_host/vaccessory.py) around a relay process.

``accessory.release_tail_ms``: audio a listener's speaker plays after the last voice frame of a
burst (goal <= 20 ms). The talker's microphone plays a steady loud tone, so every burst is cut off
"mid-word"; the listener's speaker WAV is cut into 20 ms frames (its playback is frame-aligned),
a frame is voice when it is at least 0.7 of the burst's typical level, and the tail is the audio
(any frame not all silence) after the last voice frame. Concealment repeats the last frame 6 dB
quieter each time, so each repeat counts as 20 ms of tail. The value is the worst of the bursts.

    rows() -> [("accessory.release_tail_ms", value, "ms")]
    measure_release_tail(workdir, bursts=3) -> {"tails_ms": [...], "jitter": {...}}
"""

from __future__ import annotations

import math
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from opmob_host.vaccessory import MICROPYTHON, Fleet

GROUP = "fire-1@no"
RATE = 8000
FRAME = 160  # samples: the speaker's 20 ms
FRAME_MS = 20
TONE_HZ = 440
TONE_AMPLITUDE = 8000
SILENT_RMS = 30.0  # the jitter buffer's silence is exact zeros; a -24 dB repeat is far above this
VOICE_SHARE = 0.7  # a concealment repeat is at most half (-6 dB) of the voice level
GOAL_MS = 20.0
BURST_GAP = 10  # frames (200 ms) of silence part two bursts; the bench leaves 500 ms between them


def tone_raw(path: Path, seconds: float = 60.0) -> Path:
    """A steady tone (raw s16le, 8 kHz): whenever PTT is released, a "word" is cut off."""
    n = int(seconds * RATE)
    path.write_bytes(
        b"".join(
            struct.pack("<h", int(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * i / RATE)))
            for i in range(n)
        )
    )
    return path


def frame_levels(pcm: bytes) -> list[float]:
    """RMS of each whole 20 ms frame of 16-bit PCM."""
    out = []
    n = len(pcm) // (2 * FRAME)
    for k in range(n):
        samples = struct.unpack_from(f"<{FRAME}h", pcm, 2 * FRAME * k)
        out.append(math.sqrt(sum(s * s for s in samples) / FRAME))
    return out


def burst_tails_ms(levels: list[float]) -> list[float]:
    """For each burst as heard (non-silent frames with no silence of BURST_GAP frames or more
    between them: a mid-burst underrun on a busy host is not a burst's end), the ms of audio after
    its last voice frame (a frame at VOICE_SHARE of the burst's median level or more)."""
    tails = []
    k = 0
    n = len(levels)
    while k < n:
        if levels[k] <= SILENT_RMS:
            k += 1
            continue
        start = end = k
        quiet = 0
        while k < n and quiet < BURST_GAP:
            if levels[k] > SILENT_RMS:
                end = k + 1
                quiet = 0
            else:
                quiet += 1
            k += 1
        run = levels[start:end]
        typical = sorted(run)[len(run) // 2]
        voice = [i for i, v in enumerate(run) if v >= VOICE_SHARE * typical]
        if len(run) < 5 or not voice:
            continue  # a click, not a burst
        tails.append(float((len(run) - 1 - voice[-1]) * FRAME_MS))
    return tails


def measure_release_tail(workdir: Path, bursts: int = 3, talk_s: float = 1.0) -> dict[str, Any]:
    """alice talks ``bursts`` times (the tone, released mid-word), bob listens; his speaker's tails."""
    src = tone_raw(workdir / "tone.raw")
    fleet = Fleet(workdir / "fleet", ["alice@no", "bob@no"], [GROUP])
    with fleet.relay():
        with fleet.accessory("alice@no", mic=src) as alice, fleet.accessory("bob@no") as bob:
            for a in (alice, bob):
                a.wait_last("ptt", "U: has no permission", 20)
                a.wait_last("led", "registered")
            for _ in range(bursts):
                since = bob.mark()
                alice.command("press ptt")
                alice.wait_for("tone talk_permit")
                bob.wait_for(f"rx {GROUP} alice@no", 10, since=since)
                time.sleep(talk_s)
                alice.command("release ptt")
                alice.wait_for("mic stop")
                bob.wait_for("rx none", 10, since=since)
                alice.wait_last("ptt", "U: has no permission")
                time.sleep(0.5)  # the jitter buffer's tail, whatever it is
            _t0, pcm = bob.speaker_pcm()
            jb = bob.status()["jitter"]
    tails = burst_tails_ms(frame_levels(pcm))
    return {"tails_ms": tails, "jitter": jb}


def rows() -> list[tuple[str, float, str]]:
    if not MICROPYTHON.exists():
        raise RuntimeError("MicroPython unix port not installed: run `make setup`")
    with tempfile.TemporaryDirectory(prefix="opmob-bench-acc-") as d:
        res = measure_release_tail(Path(d))
    tails = res["tails_ms"]
    if not tails:
        raise RuntimeError("release tail: the listener heard no burst")
    return [("accessory.release_tail_ms", max(tails), "ms")]
