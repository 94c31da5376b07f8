# Relay selection from a WiFi scan (accessory/link.py): home first, partners next, hysteresis and
# dwell time against ping-pong. Runs under CPython and MicroPython.
from opmob.accessory import link
from opmob.ticks import DAY_MS, MASK, tadd

RELAYS = [
    {"identity": "relay-1@no", "ssid": "no-1"},
    {"identity": "relay-2@no", "ssid": "no-2"},
    {"identity": "relay-7@se", "ssid": "se-7"},
    {"identity": "relay-9@fi", "ssid": "fi-9"},
    {"identity": "relay-3@dk", "ssid": "dk-3"},  # no roaming agreement: never chosen
]


def _sel():
    return link.RelaySelector(RELAYS, "no", ("se", "fi"), hysteresis_db=8, dwell_s=20)


def test_home_first_then_partners_in_order():
    s = _sel()
    assert s.choose(0, [("se-7", -40), ("no-2", -80), ("fi-9", -30)])["identity"] == "relay-2@no"
    s = _sel()
    assert s.choose(0, [("fi-9", -30), ("se-7", -70), ("dk-3", -20)])["identity"] == "relay-7@se"
    s = _sel()
    assert s.choose(0, [("dk-3", -20), ("stranger", -10)]) is None
    s = _sel()
    assert s.choose(0, [("no-1", -95)]) is None  # too weak to carry voice


def test_hysteresis_and_dwell_stop_ping_pong():
    # Times are the cores' int milliseconds: from boot, after 60 days, and across the 2^30 wrap.
    for base in (0, 60 * DAY_MS, MASK - 10000):

        def at(s):
            return tadd(base, int(s * 1000))

        s = _sel()
        cur = s.choose(at(0), [("no-1", -60), ("no-2", -65)])
        assert cur["identity"] == "relay-1@no"
        # Slightly stronger, or much stronger too soon: stay.
        assert s.choose(at(30), [("no-1", -60), ("no-2", -55)], cur) is cur
        assert s.choose(at(10), [("no-1", -60), ("no-2", -40)], cur) is cur
        assert s.choose(at(19.999), [("no-1", -60), ("no-2", -40)], cur) is cur
        # Much stronger after the dwell time: move.
        nxt = s.choose(at(30), [("no-1", -60), ("no-2", -45)], cur)
        assert nxt["identity"] == "relay-2@no"
        # Back home from a partner as soon as the dwell allows, whatever the signal.
        s = _sel()
        cur = s.choose(at(0), [("se-7", -50)])
        assert s.choose(at(5), [("se-7", -40), ("no-1", -85)], cur) is cur
        assert s.choose(at(20), [("se-7", -40), ("no-1", -85)], cur)["identity"] == "relay-1@no"


def test_losing_the_current_relay_moves_at_once():
    s = _sel()
    cur = s.choose(0, [("no-1", -60)])
    nxt = s.choose(1000, [("se-7", -70)], cur)
    assert nxt["identity"] == "relay-7@se"
    assert s.choose(2000, [], nxt) is None


def test_backoff_doubles_to_its_cap_and_resets():
    b = link.Backoff(1.0, 8.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 1.0
