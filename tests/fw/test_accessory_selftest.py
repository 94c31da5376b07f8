# opmob verify's check of the peripherals (firmware/opmob/accessory/selftest.py) on the sim board's
# hardware as the app builds it: every check passes on a good board; a battery out of range, a
# microphone that gives no frame and a missing microphone source each fail, named. Runs under
# CPython and MicroPython.
import json

from fwtest import ROOT
from fwtmp import TempDir, read_bytes, write_bytes
from opmob.accessory import board as bd
from opmob.accessory import hw, selftest

SIM_BOARD = ROOT + "/boards/unix-sim.json"


def _sim(d, **options):
    board = bd.load(SIM_BOARD)
    options.setdefault("speaker", d + "/speaker.wav")
    return board, hw.make_hardware(board, **options)


def _by_name(checks):
    return {c[0]: c[1:] for c in checks}


def test_every_peripheral_passes_on_a_good_board():
    with TempDir() as d:
        board, h = _sim(d, battery_mv=3900)
        checks = selftest.check(board, h)
        h.close()
        assert [c[0] for c in checks] == ["buttons", "leds", "battery", "mic", "speaker", "wifi"], checks
        got = _by_name(checks)
        assert all(v[0] == "ok" for v in got.values()), checks
        assert got["battery"][1] == "3900 mV, 70 %"
        assert got["buttons"][1] == "4 read, none pressed"
        assert h.leds.pattern == "off"
        # The speaker took one frame of silence (the sim writes it to its WAV file, after the
        # silence its DMA played from its start until the frame came, if a ms or more passed).
        data = read_bytes(d + "/speaker.wav")[44:]
        assert 320 <= len(data) <= 320 + 16 * 100 and data == bytes(len(data)), len(data)


def test_a_held_button_is_read_not_failed():
    with TempDir() as d:
        board, h = _sim(d)
        h.buttons["ptt"].level = True
        got = _by_name(selftest.check(board, h))
        h.close()
        assert got["buttons"] == ["ok", "4 read; pressed now: ptt"]


def test_battery_out_of_range_fails_named():
    with TempDir() as d:
        board, h = _sim(d, battery_mv=0)
        got = _by_name(selftest.check(board, h))
        h.close()
        assert got["battery"][0].startswith("reads 0 mV, outside 2500..4450 mV"), got
        assert got["mic"][0] == "ok"


def test_a_microphone_that_gives_nothing_fails_named():
    class _Dead:
        def start(self):
            pass

        def stop(self):
            pass

        async def readinto(self, buf):
            import asyncio

            while True:
                await asyncio.sleep(0.01)

    with TempDir() as d:
        board, h = _sim(d)
        h.mic = _Dead()
        old = selftest.AUDIO_TIMEOUT_S
        selftest.AUDIO_TIMEOUT_S = 0.05
        try:
            got = _by_name(selftest.check(board, h))
        finally:
            selftest.AUDIO_TIMEOUT_S = old
        h.close()
        assert got["mic"] == ["no frame from it within 0.05 s: check its I2S wiring"], got
        assert got["speaker"][0] == "ok"


def test_run_builds_the_board_with_its_wiring_and_names_a_missing_mic_source():
    with TempDir() as d:
        write_bytes(d + "/board.json", read_bytes(SIM_BOARD))
        wiring = {"mic": d + "/gone.raw", "speaker": d + "/speaker.wav", "battery_mv": 3700}
        write_bytes(d + "/sim.json", json.dumps(wiring).encode())
        checks = selftest.run(d + "/board.json", d + "/sim.json")
        assert checks[0][0] == "hardware" and len(checks) == 1, checks
        assert "mic source " + d + "/gone.raw" in checks[0][1], checks
        write_bytes(d + "/gone.raw", bytes(640))
        got = _by_name(selftest.run(d + "/board.json", d + "/sim.json"))
        assert got["battery"] == ["ok", "3700 mV, 47 %"] and got["mic"][0] == "ok", got
