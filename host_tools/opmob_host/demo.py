"""``opmob demo``: a push-to-talk exchange on this machine, end to end, with the real firmware.

One relay (``opmob relay run``, CPython) and three virtual accessories (the accessory firmware on
the MicroPython unix port with the ``unix-sim`` board, each its own process) in one talk group.
A script presses their buttons through each board's control channel:

1. alice talks: real recorded speech goes into her microphone and out of the others' speakers;
2. bob asks for the floor while alice talks: denied (busy);
3. the chief, of higher priority, pre-empts alice;
4. bob's emergency long press pre-empts the chief, alerts the group; a second long press cancels.

It prints the floor timeline as the accessories reported it, the access time of each request
(measured on the accessory: key edge to the answer the user hears), how well alice's speech
arrived, and where each accessory's speaker audio was written.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from opmob_host.vaccessory import (
    MICROPYTHON_CMD,
    MICROPYTHON_MISSING,
    Accessory,
    Fleet,
    segment_ncc,
)

GROUP = "fire-1@no"
NAMES = ("alice@no", "bob@no", "chief@no")
SHOWN: tuple[str, ...] = (
    "button ptt press",
    "button ptt short",
    "button emergency long",
    "floor ",
    "transmit ",
    "emergency ",
    "alert ",
    "alert_cancel ",
    "rx ",
)


def _timeline(accs: list[Accessory], t0: float) -> list[str]:
    rows = []
    for a in accs:
        for line in a.lines:
            text = line.text
            if (
                line.t >= t0
                and text.startswith(SHOWN)
                and not (text.startswith("rx ") and a.name == NAMES[0])
            ):
                rows.append((line.t, a.name, text))
    rows.sort()
    return [f"  t={(t - t0) * 1000:8.1f} ms  {name:<9} {text}" for t, name, text in rows]


def _access(a: Accessory, since: int) -> str:
    """The accessory's own measurement: ``access queued <ms>`` (if queued first), then
    ``access granted|denied <ms>``."""
    final = a.wait_for(lambda s: s.startswith(("access granted", "access denied")), 10, since=since)
    parts = []
    for line in a.seen("access ", since):
        w = line.text.split()
        parts.append(f"{w[1]} after {float(w[2]):.1f} ms")
        if line is final:
            break
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    speech = Path(args.speech)
    if not speech.exists():
        print(f"opmob demo: speech file {speech} not found (install Debian's codec2-examples: make setup)")
        return 2
    if not MICROPYTHON_CMD:
        print(f"opmob demo: {MICROPYTHON_MISSING}")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    # A fresh exchange each time: this demo's own state from an earlier run goes.
    for sub in ("relay-state", *(n.split("@")[0] for n in NAMES)):
        shutil.rmtree(out / sub, ignore_errors=True)
    for f in ("relay.log",):
        (out / f).unlink(missing_ok=True)

    # No queueing: a request while busy is denied (emergency and pre-emption still queue).
    fleet = Fleet(out, list(NAMES), [GROUP], ceilings={"chief@no": 200}, floor={"queueing": False})
    print(
        f"OpMob demo: one relay and three virtual accessories (firmware on the MicroPython unix port,"
        f" unix-sim board) in talk group {GROUP}, real UDP on loopback\n"
    )
    accs: list[Accessory] = []
    with fleet.relay():
        try:
            for n in NAMES:
                # alice speaks the given speech; the others other recordings, if installed.
                other = speech.parent / ("hts2a.raw" if n == "chief@no" else "kristoff.raw")
                accs.append(fleet.accessory(n, mic=speech if n == NAMES[0] or not other.exists() else other))
            alice, bob, chief = accs
            for a in accs:
                a.wait_last("ptt", "U: has no permission", 30)
            access = []
            t0 = time.time()

            m = alice.send("press ptt")
            access.append(("alice@no", "PTT", _access(alice, m)))
            mic_start = alice.wait_for("mic start").text
            bob.wait_for(f"rx {GROUP} alice@no")
            time.sleep(2.0)

            m = bob.send("press ptt")
            access.append(("bob@no", "PTT while alice talks", _access(bob, m)))
            bob.wait_for("tone deny")
            bob.command("release ptt")
            time.sleep(1.0)

            m = chief.send("press ptt")
            alice.wait_for("floor revoked 4")
            chief.wait_for("floor granted", since=m)
            access.append(("chief@no", "PTT, priority 200 > 100", _access(chief, m)))
            mic_stop = alice.wait_for("mic stop").text
            alice.command("release ptt")
            time.sleep(1.5)

            m = bob.send("long emergency")
            chief.wait_for("floor revoked 4")
            bob.wait_for("floor granted", since=m)
            access.append(("bob@no", "emergency (at the 1 s mark)", _access(bob, m)))
            chief.command("release ptt")
            time.sleep(1.5)
            bob.command("long emergency")
            bob.wait_for("emergency off")
            for a in (alice, chief):
                a.wait_for("alert_cancel ")
                a.wait_last("led", "registered", 10)
            time.sleep(0.3)

            wavs = []
            for a in accs:
                _t, pcm = a.speaker_pcm()
                wavs.append((a, len(pcm) / 16000))
            b_t0, b_pcm = bob.speaker_pcm()
        finally:
            for a in accs:
                a.stop()

    print("Floor timeline (as each accessory reported it; rx = what its speaker plays):")
    print("\n".join(_timeline(accs, t0)))

    print(
        "\nAccess time (KPI 1: PTT key edge -> the answer the user hears, measured on the accessory;"
        " the key acts on its first edge and debounces after it):"
    )
    for who, what, result in access:
        print(f"  {who:<9} {what:<26} {result}")

    # Alice's first 1.8 s: after that, bob's own deny tone is mixed into what his speaker plays.
    off, end = int(mic_start.split()[2]), int(mic_stop.split()[2])
    source = speech.read_bytes()[2 * off : 2 * min(end, off + 14400)]
    expect = int((float(mic_start.split()[3]) - b_t0) * 8000)  # where it would be with no delay
    # Median NCC of 0.5 s segments, each aligned on its own (the jitter buffer may move playout).
    lag, _, ncc = segment_ncc(source, b_pcm, max(0, expect), expect + 8000)
    delay = (b_t0 + lag / 8000 - float(mic_start.split()[3])) * 1000
    print(
        f"\nalice's speech ({len(source) / 16000:.2f} s of {speech.name}) in bob's speaker: "
        f"normalised cross-correlation {ncc:.3f}, mouth-to-ear {delay:.0f} ms"
    )
    print("\nReceived audio (every frame each accessory played, tones included, 8 kHz WAV):")
    for a, secs in wavs:
        print(f"  {a.name:<9} {secs:5.1f} s -> {a.speaker}")
    print(f"\nConsoles: {out}/<name>/console.log; relay log: {fleet.relay_log}")
    return 0
