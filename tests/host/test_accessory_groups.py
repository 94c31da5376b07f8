"""Acceptance: talk group selection and the scan list on virtual accessories against a relay
process. The group buttons change the talk group (PTT then talks there); a scanning accessory
hears its scan groups, the talk group first; a call in a group nobody listens to is not heard;
the selection survives a reboot.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from opmob_host.vaccessory import MICROPYTHON, SPEECH, Accessory, Fleet, segment_ncc

G1, G2 = "fire-1@no", "fire-2@no"

pytestmark = pytest.mark.slow


def setup_module() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")


def _ready(*accs: Accessory) -> None:
    for a in accs:
        a.wait_last("ptt", "U: has no permission", 20)
        a.wait_last("led", "registered")


def _silent(pcm: bytes) -> bool:
    return not any(pcm)


def test_group_change_scan_and_reboot(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, ["alice@no", "bob@no", "carol@no"], [G1, G2], scan={"bob@no": [G2]})
    with fleet.relay():
        alice = fleet.accessory("alice@no", mic=SPEECH)
        bob = fleet.accessory("bob@no")
        carol = fleet.accessory("carol@no", talk=[G1], mic=SPEECH)
        try:
            _ready(alice, bob, carol)
            assert bob.status()["listening"] == [G1, G2]
            assert carol.status()["listening"] == [G1]

            # Alice steps to her second talk group and talks there.
            alice.command("click group_up")
            alice.wait_for(f"group {G2} scan off")
            alice.wait_for(f"affiliation {G2} ok")
            alice.wait_last("ptt", "U: has no permission")
            assert alice.status()["affiliated"] == [G2]
            carol_mark = carol.mark()
            _, before = carol.speaker_pcm()
            alice.command("press ptt")
            alice.wait_for("tone talk_permit")
            start = alice.wait_for("mic start").text
            bob.wait_for(f"rx {G2} alice@no")  # bob scans G2
            bob.wait_last("led", "receiving")
            time.sleep(2.0)
            alice.command("release ptt")
            stop = alice.wait_for("mic stop").text
            bob.wait_for("rx none")
            time.sleep(0.3)
            _, bob_pcm = bob.speaker_pcm()
            _, carol_pcm = carol.speaker_pcm()
            src = SPEECH.read_bytes()[2 * int(start.split()[2]) : 2 * int(stop.split()[2])]
            _lag, _, ncc = segment_ncc(src, bob_pcm)
            assert ncc >= 0.9, ncc
            # Carol listens to G1 only: she heard nothing of it.
            assert carol.seen("rx ", carol_mark) == []
            assert _silent(carol_pcm[len(before) :])

            # The talk group outranks a scan group: carol's G1 call takes bob's speaker from G2.
            alice.command("press ptt")
            bob.wait_for(f"rx {G2} alice@no")
            carol.command("press ptt")
            carol.wait_for("tone talk_permit")
            bob.wait_for(f"rx {G1} carol@no")
            carol.command("release ptt")
            bob.wait_for(f"rx {G2} alice@no")  # back to the scan call that is still running
            alice.command("release ptt")
            bob.wait_for("rx none")

            # Scan off (long press on a group key): G2 calls are no longer heard.
            bob.command("long group_down")
            bob.wait_for(f"group {G1} scan off")
            assert bob.status()["listening"] == [G1]
            bob_mark = bob.mark()
            alice.command("press ptt")
            alice.wait_for("tone talk_permit")
            time.sleep(1.0)
            alice.command("release ptt")
            alice.wait_last("ptt", "U: has no permission")
            time.sleep(0.3)
            assert bob.seen("rx ", bob_mark) == []

            # The selection survives a reboot.
            alice.stop()
            bob.stop()
            alice = fleet.accessory("alice@no", mic=SPEECH)
            bob = fleet.accessory("bob@no")
            alice.wait_for(f"group {G2} scan off", since=0)
            bob.wait_for(f"group {G1} scan off", since=0)
            _ready(alice, bob)
            assert alice.status()["affiliated"] == [G2]
            assert bob.status()["listening"] == [G1]
        finally:
            for a in (alice, bob, carol):
                a.stop()
