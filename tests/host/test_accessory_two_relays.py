"""Acceptance: voice through two linked relays, heard by the firmware.

Two ``opmob relay run`` processes of one system on loopback, joined by a ``dvi4`` link: relay 1
controls ``fire-1@no``; relay 2 initiates the link and attaches the group, so it is a
participating relay that fans the group's voice out to its own devices. Three virtual accessories
(the accessory firmware on the MicroPython unix port, ``unix-sim`` board) stand under each relay.
A talker on either side speaks recorded speech (codec2-examples' hts1a) into its microphone; every
listener on both sides must hear it in its speaker WAV, correlating with the source above the
single-relay threshold (NCC 0.9: a DVI4 link keeps the waveform, so the same bar applies).

This is the test that listens with the firmware rather than a bare DeviceSession: the firmware plays
only the stream that Floor Taken names, so a participating relay that names one SSRC and sends
another is heard by nobody there (the bug issue 11 fixed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from opmob_host.vaccessory import MICROPYTHON, SPEECH, Accessory, Fleet, segment_ncc

NCC_MIN = 0.9
GROUP = "fire-1@no"
SIDE = {
    0: ["ann@no", "bob@no", "cat@no"],  # under relay-1@no, the controlling relay
    1: ["dan@no", "eve@no", "fay@no"],  # under relay-2@no, participating
}

pytestmark = pytest.mark.slow


def setup_module() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    if not SPEECH.exists():
        pytest.fail(f"{SPEECH} missing: install Debian's codec2-examples (make setup)")


class LinkedFleet(Fleet):
    """A Fleet whose two relays are joined by a dvi4 link (relay 2 initiates and attaches)."""

    def __init__(self, workdir: Path, identities: list[str], groups: list[str]) -> None:
        super().__init__(workdir, identities, groups, relays=2)
        self.link_key = os.urandom(32).hex()

    def relay_toml(self, i: int = 0) -> Path:
        path = super().relay_toml(i)
        key = self.dir / f"link-{i + 1}.key"
        key.write_text(self.link_key + "\n")
        key.chmod(0o600)
        other = 1 - i
        link = f'\n[[link]]\npeer = "{self.relay_id(other)}"\nkey_file = "{key.name}"\ncodec = "dvi4"\n'
        if i == 1:
            link += f'host = "127.0.0.1"\nport = {self.udps[0]}\nattach = ["{GROUP}"]\n'
        path.write_text(path.read_text() + link)
        return path

    def config(
        self, ident: str, talk: list[str] | None = None, priority: int | None = None
    ) -> dict[str, Any]:
        cfg = super().config(ident, talk, priority)
        side = 0 if ident in SIDE[0] else 1
        cfg["relays"] = [cfg["relays"][side]]  # each accessory stands under its own relay
        return cfg


def _source(mic_start: str, mic_stop: str) -> bytes:
    off = int(mic_start.split()[2])
    end = int(mic_stop.split()[2])
    return SPEECH.read_bytes()[2 * off : 2 * end]


def _burst(talker: Accessory, listeners: list[Accessory]) -> tuple[bytes, dict[str, int]]:
    """One burst of ~3 s from ``talker``; returns the source PCM and each listener's mark."""
    marks = {a.name: a.mark() for a in listeners}
    talker.command("press ptt")
    talker.wait_for("tone talk_permit")
    mic_start = talker.wait_for("mic start").text
    for a in listeners:
        a.wait_for(f"rx {GROUP} {talker.name}", 10, since=marks[a.name])
    time.sleep(3.0)
    talker.command("release ptt")
    mic_stop = talker.wait_for("mic stop").text
    for a in listeners:
        a.wait_for("rx none", 10, since=marks[a.name])
    time.sleep(0.3)  # the jitter buffer's tail
    return _source(mic_start, mic_stop), marks


def test_voice_crosses_two_relays_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    everyone = SIDE[0] + SIDE[1]
    fleet = LinkedFleet(tmp_path, everyone, [GROUP])
    results: list[str] = []
    with fleet.relay(0), fleet.relay(1):
        accs: dict[str, Accessory] = {}
        try:
            for ident in everyone:
                accs[ident] = fleet.accessory(ident, mic=SPEECH)
            for a in accs.values():
                a.wait_last("ptt", "U: has no permission", 30)
                a.wait_last("led", "registered")
            time.sleep(1.0)  # relay 2's GROUP_ATTACH for its members' group
            for talker_id in ("ann@no", "dan@no"):  # a talker on either relay
                talker = accs[talker_id]
                listeners = [a for n, a in accs.items() if n != talker_id]
                before = {a.name: len(a.speaker_pcm()[1]) for a in listeners}
                source, _ = _burst(talker, listeners)
                assert len(source) >= 2 * 8000 * 2, "the talker spoke at least 2 s"
                for a in listeners:
                    _t0, pcm = a.speaker_pcm()
                    heard = pcm[before[a.name] :]
                    _lag, gncc, ncc = segment_ncc(source, heard)
                    jb = a.status()["jitter"]
                    where = (
                        "same relay" if (a.name in SIDE[0]) == (talker_id in SIDE[0]) else "across the link"
                    )
                    results.append(f"{talker_id} -> {a.name} ({where}): NCC {gncc:.3f} (median {ncc:.3f})")
                    # As for one relay (test_accessory_voice): the whole burst under one alignment,
                    # unless a packet came later than the jitter buffer held and it moved playout.
                    assert ncc >= NCC_MIN, f"{a.name} ({where}) heard {talker_id}: {results}; {jb}"
                    if not (jb["late"] or jb["underruns"]):
                        assert gncc >= NCC_MIN, f"{a.name} ({where}): playout moved: {results}; {jb}"
                talker.wait_last("led", "registered", 10)
        finally:
            for a in accs.values():
                a.stop()
    with capsys.disabled():
        print("\n  " + "\n  ".join(results))
