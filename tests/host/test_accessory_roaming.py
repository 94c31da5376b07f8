"""Acceptance: a virtual accessory moves between two relays of its home system as its WiFi scan
changes (the access point of its relay goes, another one's appears), registers at the new relay by
itself (that relay's registry has issued other vector ids: the sync-failure path of protocol.md
§6.3) and is heard there. Low battery shows while idle.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opmob_host.vaccessory import MICROPYTHON, SPEECH, Fleet

GROUP = "fire-1@no"

pytestmark = pytest.mark.slow


def setup_module() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")


def test_the_accessory_follows_its_scan_to_another_relay(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, ["alice@no", "bob@no"], [GROUP], relays=2)
    no1, no2 = fleet.ssid(0), fleet.ssid(1)
    with fleet.relay(0), fleet.relay(1):
        alice = fleet.accessory(
            "alice@no", mic=SPEECH, wifi_scenario={"networks": [{"ssid": no1, "rssi": -60}]}
        )
        bob = fleet.accessory("bob@no", wifi_scenario={"networks": [{"ssid": no2, "rssi": -50}]})
        try:
            for a, r in ((alice, 0), (bob, 1)):
                a.wait_last("ptt", "U: has no permission", 20)
                assert a.status()["relay"] == fleet.relay_id(r)
            # Walking away: relay-2's access point comes into reach, relay-1's fades out.
            alice.command(f"ap {no2} -45")
            alice.command(f"ap {no1} off")
            alice.wait_for("wifi down", 5)
            alice.wait_for(f"wifi up {no2}", 10)
            alice.wait_for(f"state registering {fleet.relay_id(1)}")
            alice.wait_for("state registered", 20)
            alice.wait_last("ptt", "U: has no permission", 20)
            st = alice.status()
            assert st["relay"] == fleet.relay_id(1) and st["affiliated"] == [GROUP]
            assert st["device"]["sync_failures"] >= 1  # relay-2's vector ids were stale for alice
            alice.command("press ptt")
            alice.wait_for("tone talk_permit")
            bob.wait_for(f"rx {GROUP} alice@no")
            alice.command("release ptt")
            bob.wait_for("rx none")
            # A low cell shows while nothing else is going on, and goes with a charge.
            bob.command("battery 3350")
            bob.wait_last("led", "low_battery", 5)
            bob.command("battery 4100")
            bob.wait_last("led", "registered", 5)
        finally:
            alice.stop()
            bob.stop()
