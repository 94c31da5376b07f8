"""Acceptance: floor control as the user sees and hears it on virtual accessories against a relay
process: a request while busy is queued (queued tone and LED) or, with the queue full, denied
(deny tone, denied LED); a higher priority pre-empts the talker (revoked tone on the talker,
talk-permit on the pre-emptor); the emergency long press pre-empts even that, alerts the group,
shows the emergency pattern, and a second long press cancels it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opmob_host.vaccessory import MICROPYTHON, SPEECH, Accessory, Fleet

GROUP = "fire-1@no"

pytestmark = pytest.mark.slow


def setup_module() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")


def _ready(*accs: Accessory) -> None:
    for a in accs:
        a.wait_last("ptt", "U: has no permission", 20)
        a.wait_last("led", "registered")


def test_queue_deny_preemption_and_emergency(tmp_path: Path) -> None:
    ids = ["alice@no", "bob@no", "carol@no", "chief@no", "dave@no"]
    # One place in the queue: the first waiting request is queued, the next one denied (cause 7).
    fleet = Fleet(tmp_path, ids, [GROUP], ceilings={"chief@no": 200}, floor={"queue_max": 1})
    with fleet.relay():
        accs = [fleet.accessory(i, mic=SPEECH) for i in ids]
        alice, bob, carol, chief, dave = accs
        try:
            _ready(*accs)
            alice.command("press ptt")
            alice.wait_for("tone talk_permit")
            alice.wait_last("led", "talking")
            for a in (bob, carol, chief, dave):
                a.wait_last("led", "receiving")

            # Busy: bob is queued.
            bob.command("press ptt")
            bob.wait_for("tone queued")
            bob.wait_for("floor queued 1")
            bob.wait_last("led", "queued")
            bob.wait_last("ptt", "U: queued")

            # Busy and the queue full: carol is denied.
            carol.command("press ptt")
            carol.wait_for("tone deny")
            carol.wait_for("floor denied 7")
            carol.wait_last("led", "denied")
            carol.command("release ptt")
            carol.wait_last("led", "receiving", 5)  # the flash passes, the call is still on

            # Bob gives up his place; the chief (priority 200) pre-empts alice (100).
            bob.command("release ptt")
            bob.wait_last("ptt", "U: has no permission")
            chief.command("press ptt")
            alice.wait_for("tone revoked")
            alice.wait_for("floor revoked 4")
            alice.wait_last("transmit", "off")
            chief.wait_for("tone talk_permit")
            chief.wait_last("led", "talking")
            alice.wait_for("rx fire-1@no chief@no")
            bob.wait_for("rx fire-1@no chief@no")
            alice.command("release ptt")

            # Emergency: dave's long press pre-empts the chief and alerts everyone.
            dave.command("long emergency")
            dave.wait_for("tone emergency")
            dave.wait_for("emergency on fire-1@no")
            chief.wait_for("floor revoked 4")
            chief.wait_for("tone revoked")
            dave.wait_for("tone talk_permit")
            dave.wait_last("transmit", "on")
            dave.wait_last("led", "emergency")
            for a in (alice, bob, carol, chief):
                a.wait_for("alert fire-1@no dave@no")
                a.wait_for("rx fire-1@no dave@no")
            chief.command("release ptt")
            # The emergency call keeps the floor without PTT (latched, open microphone).
            assert dave.last("ptt") == "U: has permission"

            # A normal request cannot take the floor from an emergency call: the chief is queued.
            chief.command("press ptt")
            chief.wait_for("tone queued")
            chief.command("release ptt")

            # The second long press cancels: cancel tone, floor released, everyone told.
            dave.command("long emergency")
            dave.wait_for("tone emergency_cancel")
            dave.wait_for("emergency off fire-1@no")
            dave.wait_last("transmit", "off")
            dave.wait_last("led", "registered")
            for a in (alice, bob, carol, chief):
                a.wait_for("alert_cancel fire-1@no dave@no")
                a.wait_last("led", "registered")
            # Nothing was dropped or restarted on the way.
            for a in accs:
                st = a.status()
                assert all(v == 0 for v in st["tasks"].values()), (a.name, st["tasks"])
                assert st["driver"]["driver_errors"] == 0, (a.name, st["driver"])
        finally:
            for a in accs:
                a.stop()
