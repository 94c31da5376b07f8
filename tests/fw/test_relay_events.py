"""The relay's event log (opmob.relay_events) alone, on both runtimes; the events a relay reports
are checked in test_relay.py and test_relay_link_core.py."""

from opmob import relay_events as ev


def test_event_log_is_bounded_when_nobody_drains_it():
    log = ev.EventLog(max_events=8)
    for i in range(20):
        log.add((ev.FLOOR_IDLE, i))
    kept = log.drain()
    assert len(kept) <= 8 and kept[-1] == (ev.FLOOR_IDLE, 19) and log.dropped == 20 - len(kept)
    assert [e[1] for e in kept] == list(range(20 - len(kept), 20))
    assert log.drain() == () and len(log) == 0


def test_voice_started_once_per_burst_and_stopped_when_the_floor_moves():
    log = ev.EventLog()
    for _ in range(3):
        log.voice("g@no", "ann@no")
    log.floor_moved("g@no", "ann@no")  # still ann's: nothing ends
    log.voice("g@no", "bob@no")  # bob's voice without a floor event between: ann's burst ended
    log.floor_moved("g@no", None)
    log.floor_moved("g@no", None)
    assert log.drain() == [
        (ev.VOICE_STARTED, "g@no", "ann@no"),
        (ev.VOICE_STOPPED, "g@no", "ann@no"),
        (ev.VOICE_STARTED, "g@no", "bob@no"),
        (ev.VOICE_STOPPED, "g@no", "bob@no"),
    ]
