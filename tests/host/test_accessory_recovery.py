"""Acceptance: recovery on virtual accessories. A task that raises is logged (type and place, not
the message) and started again while the rest carries on; losing the relay or the WiFi gives the
lost-link tone and pattern, retries with back-off, and the accessory comes back by itself; the
watchdog resets a hung device, and only a hung one.
"""

from __future__ import annotations

import signal
import time
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


def _call(talker: Accessory, listener: Accessory) -> None:
    talker.command("press ptt")
    talker.wait_for("tone talk_permit")
    listener.wait_for(f"rx {GROUP} {talker.name}")
    talker.command("release ptt")
    listener.wait_for("rx none")


def test_crashed_tasks_restart_and_lost_links_come_back(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, ["alice@no", "bob@no"], [GROUP], keepalive=2)
    relay = fleet.relay()
    relay.__enter__()
    alice = fleet.accessory("alice@no", mic=SPEECH)
    bob = fleet.accessory("bob@no")
    try:
        _ready(alice, bob)

        # A task that raises is logged and restarted; the accessory keeps working.
        for task in ("leds", "buttons", "playback", "link"):
            alice.command(f"crash {task}")
            line = alice.wait_for(f"log opmob accessory: task {task} failed: RuntimeError at File ").text
            assert "fault injected" not in line  # the message is never logged, only type and place
        _call(alice, bob)
        alice.wait_last("led", "registered")
        st = alice.status()
        assert (
            st["tasks"]["leds"]
            == st["tasks"]["buttons"]
            == st["tasks"]["playback"]
            == st["tasks"]["link"]
            == 1
        )

        # The relay dies: PTT gets no answer -> lost-link tone and pattern.
        assert fleet.relay_proc is not None
        fleet.relay_proc.send_signal(signal.SIGKILL)
        fleet.relay_proc.wait()
        alice.command("press ptt")
        alice.wait_for("tone lost_link", 10)
        alice.wait_last("led", "lost_link", 10)
        alice.command("release ptt")
        alice.wait_last("led", "lost_link")
        # It comes back (same port, same state): both register again by themselves (the session's
        # keep-alive retransmissions reach the new relay, which no longer knows the session).
        relay.__exit__(None, None, None)
        relay = fleet.relay()
        relay.__enter__()
        for a in (alice, bob):
            a.wait_for("state registered", 30)
            a.wait_last("led", "registered", 10)
        _call(alice, bob)

        # The WiFi goes: lost link at once, retries with back-off, back when the radio is.
        bob.command("wifi off")
        bob.wait_for("wifi down", 5)
        bob.wait_for("tone lost_link")
        bob.wait_last("led", "lost_link")
        bob.wait_for("wifi retry 1")
        bob.wait_for("wifi retry 2", 10)
        bob.command("wifi on")
        bob.wait_for("wifi up", 10)
        bob.wait_for("state registered", 10)
        bob.wait_last("led", "registered")
        _call(alice, bob)
        _call(bob, alice)
    finally:
        alice.stop()
        bob.stop()
        relay.__exit__(None, None, None)


def test_watchdog_resets_only_a_hung_device(tmp_path: Path) -> None:
    with Accessory("ghost@no", tmp_path, None, watchdog_ms=1500).start() as a:
        a.wait_last("led", "unprovisioned")
        time.sleep(3.0)  # twice the watchdog's time: a live event loop feeds it
        assert a.alive()
        a.status()
        a.send("hang")  # the event loop never runs again
        assert a.proc is not None
        rc = a.proc.wait(10)
        assert rc == -signal.SIGKILL, rc
        assert "opmob watchdog: not fed for" in a.console_text()
