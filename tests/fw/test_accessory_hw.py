# The accessory's hardware layer logic (firmware/opmob/accessory/hw.py, hw_sim.py): debounce and
# long press, the LED pattern table, battery, the sim board's WAV files, WiFi scenario and control
# channel. Runs under CPython and MicroPython.
import asyncio

from fwtest import raises
from fwtmp import TempDir, read_bytes, write_bytes
from opmob.accessory import hw, hw_sim
from opmob.ticks import DAY_MS, MASK, tadd


def _run(btn, script, base=0):
    """script: [(t_ms, level)] held until the next entry; sampled every 5 ms from ``base`` (the
    clock's reading at t 0, int ms modulo 2^30). -> [(t_ms, event)]"""
    out = []
    end = script[-1][0]
    i = 0
    level = False
    t = 0
    while t <= end:
        while i < len(script) and script[i][0] <= t:
            level = script[i][1]
            i += 1
        ev = btn.sample(tadd(base, t), level)
        if ev:
            out.append((t, ev))
        t += 5
    return out


def test_button_debounce_press_and_short_release():
    # The same at 60 days of uptime and across the 2^30 wrap of the millisecond clock.
    for base in (0, 60 * DAY_MS, MASK - 200):
        b = hw.Button("ptt", 20, 1000)
        ev = _run(b, [(0, False), (100, True), (400, False), (600, False)], base)
        assert ev == [(120, hw.PRESS), (420, hw.SHORT)], (base, ev)
        ev = _run(b, [(0, False), (100, True), (1300, False), (1400, False)], base)
        assert ev == [(120, hw.PRESS), (1120, hw.LONG), (1320, hw.RELEASE)], (base, ev)


def test_button_ignores_bounces_shorter_than_debounce():
    b = hw.Button("ptt", 20, 1000)
    script = [(0, False)]
    t = 100
    for _ in range(6):  # 10 ms chatter
        script += [(t, True), (t + 10, False)]
        t += 20
    script.append((t + 200, False))
    assert _run(b, script) == []
    # Chatter at the edges of a real press still gives one press and one release.
    b = hw.Button("ptt", 20, 1000)
    ev = _run(
        b,
        [
            (0, False),
            (100, True),
            (105, False),
            (110, True),
            (300, False),
            (305, True),
            (310, False),
            (500, False),
        ],
    )
    assert [e for _, e in ev] == [hw.PRESS, hw.SHORT], ev


def test_button_long_press_fires_once_while_held():
    b = hw.Button("emergency", 20, 1000)
    ev = _run(b, [(0, False), (100, True), (2500, False), (2700, False)])
    assert ev == [(120, hw.PRESS), (1120, hw.LONG), (2520, hw.RELEASE)], ev
    # A second long press fires again (emergency on, then cancel).
    ev = _run(b, [(3000, True), (4200, False), (4400, False)])
    assert [e for _, e in ev] == [hw.PRESS, hw.LONG, hw.RELEASE]


def _run_ms(btn, script, end):
    """As _run, sampled every 1 ms (a contact bounces faster than the 5 ms poll)."""
    out = []
    i = 0
    level = False
    for t in range(end + 1):
        while i < len(script) and script[i][0] <= t:
            level = script[i][1]
            i += 1
        ev = btn.sample(t, level)
        if ev:
            out.append((t, ev))
    return out


def _bouncing(t, level, n=4, step=2):
    """A contact reaching ``level`` at ``t`` through ``n`` bounces of ``step`` ms each way."""
    out = []
    for k in range(n):
        out += [(t + 2 * k * step, level), (t + (2 * k + 1) * step, not level)]
    out.append((t + 2 * n * step, level))
    return out


def test_first_edge_button_acts_at_once_and_a_bouncing_contact_neither_repeats_nor_releases():
    for base in (0, 60 * DAY_MS, MASK - 200):
        b = hw.Button("ptt", 20, None, True)
        ev = _run(b, [(0, False), (100, True), (400, False), (600, False)], base)
        assert ev == [(100, hw.PRESS), (400, hw.SHORT)], (base, ev)
        assert b.edge_at == tadd(base, 400)
    # Bounces of 2 ms for 16 ms after the press edge and after the release edge.
    b = hw.Button("ptt", 20, None, True)
    script = [(0, False)] + _bouncing(100, True) + _bouncing(400, False) + [(600, False)]
    ev = _run_ms(b, script, 600)
    assert ev == [(100, hw.PRESS), (400, hw.SHORT)], ev
    assert b.edge_at == 416 and not b.pressed and not b.busy  # where the contact settled
    # Busy through the window after each edge, so the app samples its end.
    b = hw.Button("ptt", 20, None, True)
    assert b.sample(0, True) == hw.PRESS and b.busy
    assert b.sample(19, True) is None and b.busy
    assert b.sample(20, True) is None and not b.busy


def test_first_edge_press_shorter_than_the_window_is_a_short_press():
    b = hw.Button("ptt", 20, None, True)
    ev = _run_ms(b, [(0, False), (100, True), (108, False), (300, False)], 300)
    # Pressed at its edge; the release inside the window is taken at the window's end.
    assert ev == [(100, hw.PRESS), (120, hw.SHORT)], ev
    # Chatter with no press at all is a short press too (a first-edge key cannot tell them apart
    # before the window ends): one request, one release, never two.
    b = hw.Button("ptt", 20, None, True)
    ev = _run_ms(b, [(0, False)] + _bouncing(100, False, 5, 2)[1:], 300)
    assert [e for _, e in ev] == [hw.PRESS, hw.SHORT], ev


def test_first_edge_long_press_counts_from_the_edge_and_bounces_do_not_cancel_it():
    b = hw.Button("emergency", 20, 1000, True)
    script = [(0, False)] + _bouncing(100, True) + _bouncing(2500, False) + [(2700, False)]
    ev = _run_ms(b, script, 2700)
    assert ev == [(100, hw.PRESS), (1100, hw.LONG), (2500, hw.RELEASE)], ev
    # The second long press (cancel) fires again.
    ev = _run_ms(b, [(0, False), (3000, True), (4200, False)], 4400)
    assert [e for _, e in ev] == [hw.PRESS, hw.LONG, hw.RELEASE], ev


def test_led_pattern_table_covers_every_state():
    for name in (
        "idle",
        "registered",
        "talking",
        "receiving",
        "denied",
        "queued",
        "emergency",
        "roaming",
        "lost_link",
        "unprovisioned",
        "low_battery",
    ):
        assert name in hw.PATTERNS, name
    # Distinct patterns look distinct: no two share their LED timings.
    seen = {}
    for name in hw.PATTERNS:
        key = repr(hw.PATTERNS[name])
        assert key not in seen, (name, seen.get(key))
        seen[key] = name


def test_led_player_levels_and_next_change():
    for base in (0, 60 * DAY_MS, MASK - 15000):

        def at(ms):
            return tadd(base, ms)

        p = hw.LedPlayer()
        assert p.set("emergency", at(10000)) and not p.set("emergency", at(10100))
        assert p.levels(at(10000)) == [("green", 0), ("red", 1), ("amber", 0)]
        assert p.levels(at(10300)) == [("green", 0), ("red", 0), ("amber", 1)]
        assert p.levels(at(10500)) == [("green", 0), ("red", 1), ("amber", 0)]
        assert p.next_change(at(10100)) == at(10250)
        p.set("talking", at(20000))
        assert p.levels(at(25000)) == [("green", 0), ("red", 1), ("amber", 0)]
        assert p.next_change(at(25000)) is None  # steady
        p.set("registered", at(30000))
        assert p.levels(at(30050))[0] == ("green", 1) and p.levels(at(30200))[0] == ("green", 0)
        assert p.next_change(at(30200)) == at(33000)
        # Shown for a week (the LED task looks at least every second; here once a day): the phase
        # is kept (whole cycles), past the 6 days a wrap-safe difference can tell and the wrap.
        for day in range(1, 8):
            t = 30050 + day * DAY_MS
            assert p.levels(at(t))[0] == ("green", 1) and p.next_change(at(t + 150)) == at(t + 2950)
        raises(ValueError, p.set, "disco", 0)
    for name in hw.PATTERNS:
        for _led, steps in hw.PATTERNS[name]:
            assert hw._CYCLE_MS % sum(d for _lv, d in steps) == 0, name


def test_leds_drive_only_changes():
    class Rec(hw.Leds):
        def __init__(self):
            hw.Leds.__init__(self)
            self.log = []

        def _on_pattern(self, name):
            self.log.append(name)

        def _drive(self, led, level):
            self.log.append((led, level))

    r = Rec()
    r.set_pattern("queued", 0)
    nxt = r.update(0)
    assert r.log == ["queued", ("green", 0), ("red", 0), ("amber", 1)] and nxt == 500
    r.log = []
    r.update(200)
    assert r.log == []
    r.update(600)
    assert r.log == [("amber", 0)]


def test_battery_percent():
    assert hw.battery_percent(3000, 3300, 4150) == 0
    assert hw.battery_percent(4200, 3300, 4150) == 100
    assert hw.battery_percent(3725, 3300, 4150) == 50


def test_wav_header_and_reader_agree():
    with TempDir() as d:
        pcm = bytes(range(200)) * 4
        write_bytes(d + "/a.wav", hw_sim.wav_header(len(pcm)) + pcm)
        with open(d + "/a.wav", "rb") as f:
            assert hw_sim.wav_data_offset(f) == 44
        head = read_bytes(d + "/a.wav")[:44]
        assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and head[36:40] == b"data"
        write_bytes(
            d + "/b.wav",
            b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\x10\x00\x00\x00" + b"\x01\x00\x02\x00" + bytes(12),
        )
        with open(d + "/b.wav", "rb") as f:
            raises(ValueError, hw_sim.wav_data_offset, f)


class _NullControl:
    def __init__(self):
        self.lines = []

    def report(self, line):
        self.lines.append(line)


def test_sim_wifi_scenario_and_commands():
    t = [0.0]
    w = hw_sim.SimWifi(
        _NullControl(),
        {
            "networks": [
                {"ssid": "opmob-no-1", "rssi": -60},
                {"ssid": "opmob-se-1", "rssi": -70, "psk": "secret-psk"},
            ],
            "events": [{"at": 5, "ssid": "opmob-no-1", "rssi": None}],
        },
        clock=lambda: t[0],
    )
    assert w.scan() == []  # radio off
    w.active(True)
    assert w.scan() == [("opmob-no-1", -60), ("opmob-se-1", -70)]
    assert not w.connect("opmob-se-1", "wrong-psk") and w.connect("opmob-se-1", "secret-psk")
    assert w.connect("opmob-no-1", None) and w.isconnected()
    t[0] = 5.0
    assert not w.isconnected()  # the access point went away
    assert w.scan() == [("opmob-se-1", -70)]
    w.set_ap("opmob-no-1", -40)
    assert w.scan()[0] == ("opmob-no-1", -40)
    w.radio_ok = False
    assert w.scan() == [] and not w.connect("opmob-no-1", None)


def test_sim_mic_reads_a_file_then_silence_and_reports():
    ctl = _NullControl()
    with TempDir() as d:
        pcm = bytes([1, 2]) * 200  # 200 samples
        write_bytes(d + "/m.raw", pcm)
        mic = hw_sim.SimMic(ctl, d + "/m.raw")
        mic.clock = hw_sim.FrameClock(ticks=lambda: 0)  # 20 ms a frame: 40 ms in all
        buf = bytearray(320)

        async def two():
            await mic.readinto(buf)
            a = bytes(buf)
            await mic.readinto(buf)
            return a, bytes(buf)

        mic.start()
        a, b = asyncio.run(two())
        mic.stop()
        assert a == pcm[:320]
        assert b == pcm[320:400] + bytes(240)
        assert ctl.lines[0].startswith("mic start 0 ")
        assert ctl.lines[1:] == ["mic end 200", "mic stop 320"], ctl.lines


def test_sim_speaker_models_the_boards_dma():
    ctl = _NullControl()
    clock = [1000]
    with TempDir() as d:
        spk = hw_sim.SimSpeaker(ctl, d + "/s.wav", dma_frames=2, ticks=lambda: clock[0])
        spk.start()
        assert ctl.lines[0].startswith("speaker start ")
        a = bytes([1]) * 320
        b = bytes([2]) * 320
        # Empty DMA: the first frame sounds at once, the next one behind it.
        assert spk.put(a) and spk.play_at == 1000 and spk.play_pos == 0
        clock[0] = 1001
        assert spk.put(b) and spk.play_at == 1020 and spk.play_pos == 160
        assert spk.queued_ms() == 39
        # Ran dry at 1040: the DMA played 60 ms of silence before the frame put at 1100.
        clock[0] = 1100
        assert spk.put(a) and spk.play_at == 1100 and spk.play_pos == 320 + 60 * 8
        assert spk.underruns == 1
        # A tone that must sound now: what the DMA holds and has not played is dropped (the
        # app asks only when that is silence); 1 ms of the last frame had played.
        clock[0] = 1101
        assert spk.drop() and spk.queued_ms() == 0
        assert spk.put(b) and spk.play_at == 1101 and spk.play_pos == 800 + 8
        spk.stop()
        with open(d + "/s.wav", "rb") as f:
            f.seek(hw_sim.wav_data_offset(f))
            got = f.read(2 * 808 + 320)
        assert got == a + b + bytes(2 * 60 * 8) + a[:16] + b


def test_sim_watchdog_overdue_counts_from_the_last_feed():
    wd = hw_sim.SimWatchdog()
    wd.feed()
    assert 0 <= wd.overdue_ms() < 1000


def _free_tcp_port():
    """A port nobody listens on now (the unix port's sockets cannot tell which port 0 chose)."""
    import os
    import socket

    for _ in range(50):
        port = 20000 + (os.urandom(2)[0] << 8 | os.urandom(1)[0]) % 40000
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
            return port
        except OSError:
            pass
        finally:
            s.close()
    raise AssertionError("no free TCP port found")


def test_control_channel_round_trip():
    """A TCP client presses a button, gets the reply, and sees reports (both runtimes)."""
    from opmob.accessory import board as bd
    from fwtest import ROOT

    b = bd.load(ROOT + "/boards/unix-sim.json")
    port = _free_tcp_port()
    hwr = hw_sim.SimHardware(b, control_port=port, speaker="")
    hwr.control.hello = lambda: ["hello test"]
    hwr.control.on_command = lambda words: ["pong"] if words == ["ping"] else None
    got = []

    async def client():
        await asyncio.sleep(0.05)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        got.append((await r.readline()).decode().strip())
        w.write(b"ping\nclick ptt\nfly\n")
        await w.drain()
        for _ in range(3):
            got.append((await r.readline()).decode().strip())
        hwr.report("led talking")
        got.append((await r.readline()).decode().strip())
        w.close()

    async def main():
        srv = asyncio.create_task(hwr.serve())
        try:
            await asyncio.wait_for(client(), 10)
        finally:
            srv.cancel()
            await asyncio.sleep(0)

    asyncio.run(main())
    assert got[0] == "hello test"
    assert sorted(got[1:4]) == sorted(["pong", "ok click ptt", "error unknown command 'fly'"]), got
    assert got[4] == "led talking"
    assert hwr.buttons["ptt"].level is False
