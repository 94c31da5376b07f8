# Board definitions (firmware/opmob/accessory/board.py): the shipped boards load, and every kind of
# mistake is refused with the key it concerns. Runs under CPython and MicroPython.
import json

from fwtest import ROOT, raises
from opmob.accessory import board as bd

BOARDS = ROOT + "/boards"


def _doc(name):
    with open("%s/%s.json" % (BOARDS, name)) as f:
        return json.load(f)


def _problems(doc):
    e = raises(bd.BoardError, bd.Board.from_dict, doc, "test")
    return e, [p[0] for p in e.problems]


def test_shipped_boards_load():
    s3 = bd.load(BOARDS + "/esp32-s3-ptt.json")
    assert s3.name == "esp32-s3-ptt" and s3.mcu == "esp32s3" and not s3.is_sim
    assert s3.i2s_in["slot_bits"] == 32 and s3.i2s_in["rate"] == 8000 and s3.i2s_in["bits"] == 16
    assert s3.i2s_out["enable"] == 18
    assert s3.buttons["ptt"] == {"pin": 4, "active_low": True, "pull": "up"}
    assert sorted(s3.leds) == ["amber", "green", "red"]
    assert s3.battery["adc"] == 1 and s3.watchdog_ms == 8000
    dk = bd.load(BOARDS + "/esp32-devkitc.json")
    assert dk.mcu == "esp32" and dk.i2s_in["sd"] == 34 and dk.battery["adc"] == 35
    sim = bd.load(BOARDS + "/unix-sim.json")
    assert sim.is_sim and sim.sim["control_host"] == "127.0.0.1" and sim.long_press_ms == 1000
    for b in (s3, dk, sim):
        for cap in bd.CAPABILITIES:
            assert b.has(cap), (b.name, cap)


def test_missing_and_damaged_files_name_the_file():
    e = raises(bd.BoardError, bd.load, "/nonexistent/board.json")
    assert "/nonexistent/board.json" in str(e) and "cannot read" in str(e)
    from fwtmp import TempDir, write_bytes

    with TempDir() as d:
        write_bytes(d + "/b.json", b'{"format": "opmob-board", ')
        e = raises(bd.BoardError, bd.load, d + "/b.json")
        assert "not valid JSON" in str(e)


def test_unknown_and_wrong_keys_are_named():
    doc = _doc("esp32-s3-ptt")
    doc["debounce"] = 20  # a typo for debounce_ms
    doc["buttons"]["ptt"]["pinn"] = 3
    doc["i2s_in"]["rate"] = 16000
    doc["i2s_out"]["bits"] = 24
    doc["battery"]["full_mv"] = 3000
    e, keys = _problems(doc)
    assert keys == ["debounce", "buttons.ptt.pinn", "i2s_in.rate", "i2s_out.bits", "battery.full_mv"], keys
    assert e.key == "debounce"
    assert "esp32-s3-ptt" in str(e) and "5 problems" in str(e)


def test_a_pin_used_twice_names_both_users():
    doc = _doc("esp32-s3-ptt")
    doc["leds"]["red"]["pin"] = 13  # the microphone's word select
    e, keys = _problems(doc)
    assert keys == ["i2s_in.ws"], keys
    assert "GPIO 13 is already used by leds.red.pin" in str(e)


def test_reserved_and_input_only_pins_are_refused():
    doc = _doc("esp32-s3-ptt")
    doc["buttons"]["ptt"]["pin"] = 27  # SPI flash on the S3
    doc["leds"]["green"]["pin"] = 35  # octal PSRAM
    doc["buttons"]["emergency"]["pin"] = 19  # native USB
    doc["battery"]["adc"] = 11  # not an ADC1 pin
    e, keys = _problems(doc)
    assert keys == ["buttons.ptt.pin", "buttons.emergency.pin", "leds.green.pin", "battery.adc"], keys
    assert "SPI flash" in str(e) and "octal PSRAM" in str(e) and "USB" in str(e) and "ADC1" in str(e)
    # The same pins are fine where the module has no octal PSRAM and no USB console.
    doc = _doc("esp32-s3-ptt")
    doc["psram"] = "quad"
    doc["usb_console"] = False
    doc["leds"]["green"]["pin"] = 35
    doc["buttons"]["emergency"]["pin"] = 19
    assert bd.Board.from_dict(doc).leds["green"]["pin"] == 35

    dk = _doc("esp32-devkitc")
    dk["leds"]["red"]["pin"] = 36  # input-only
    dk["buttons"]["ptt"]["pin"] = 39  # input-only, and "pull up" asked for
    dk["i2s_out"]["sd"] = 7  # flash
    e, keys = _problems(dk)
    assert keys == ["buttons.ptt.pin", "leds.red.pin", "i2s_out.sd"], keys
    assert "no internal pull" in str(e) and "input-only" in str(e)
    dk = _doc("esp32-devkitc")
    dk["buttons"]["ptt"] = {"pin": 39, "pull": "none"}  # an external pull-up: allowed
    assert bd.Board.from_dict(dk).buttons["ptt"]["pull"] == "none"


def test_capabilities_decide_what_is_required():
    doc = _doc("esp32-devkitc")
    del doc["i2s_out"]
    e, keys = _problems(doc)
    assert keys == ["i2s_out"] and "capabilities" in str(e)
    doc["capabilities"].remove("speaker")
    b = bd.Board.from_dict(doc)
    assert b.i2s_out is None and not b.has("speaker")
    doc["capabilities"].append("teleport")
    e, keys = _problems(doc)
    assert keys == ["capabilities"]


def test_sim_section_only_on_the_unix_board():
    doc = _doc("esp32-devkitc")
    doc["sim"] = {"control_port": 1}
    _e, keys = _problems(doc)
    assert keys == ["sim"]
    sim = _doc("unix-sim")
    del sim["sim"]
    _e, keys = _problems(sim)
    assert keys == ["sim"]
    sim = _doc("unix-sim")
    sim["sim"]["control_port"] = 0
    sim["sim"]["colour"] = "blue"
    _e, keys = _problems(sim)
    assert keys == ["sim.colour", "sim.control_port"], keys


def test_same_i2s_peripheral_twice_is_refused():
    doc = _doc("esp32-s3-ptt")
    doc["i2s_out"]["id"] = 0
    _e, keys = _problems(doc)
    assert keys == ["i2s_out.id"]


def test_speaker_dma_frames():
    # The shipped boards keep two 20 ms frames in the speaker's DMA; absent, two as well.
    for name in ("esp32-s3-ptt", "esp32-devkitc", "unix-sim"):
        assert bd.load("%s/%s.json" % (BOARDS, name)).i2s_out["dma_frames"] == 2, name
    doc = _doc("esp32-devkitc")
    del doc["i2s_out"]["dma_frames"]
    assert bd.Board.from_dict(doc, "test").i2s_out["dma_frames"] == bd.DMA_FRAMES == 2
    for bad in (0, 9, 2.5, "2"):
        doc["i2s_out"]["dma_frames"] = bad
        _e, keys = _problems(doc)
        assert keys == ["i2s_out.dma_frames"], (bad, keys)


def test_bad_mcu_stops_early_with_its_key():
    doc = _doc("esp32-s3-ptt")
    doc["mcu"] = "esp8266"
    e, keys = _problems(doc)
    assert keys == ["mcu"] and "esp8266" in str(e)
    e = raises(bd.BoardError, bd.Board.from_dict, [1, 2], "x")
    assert e.key == "(document)"
