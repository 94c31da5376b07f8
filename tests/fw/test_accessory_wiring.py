# A virtual device's sim wiring (/.sim.json, written by ``opmob virtual``): read by the firmware's
# main.run() on a sim board; every mistake names the key and stops before the hardware starts,
# leaving the REPL. Runs under CPython and MicroPython.
import json

from fwtest import ROOT, raises
from fwtmp import TempDir
from opmob.accessory import main

SIM_BOARD = ROOT + "/boards/unix-sim.json"


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_no_wiring_file_is_no_wiring():
    assert main.load_wiring("/nonexistent/.sim.json") == {}


def test_wiring_gives_the_hardware_options():
    doc = {
        "control_port": 4242,
        "mic": "/.sim/mic.raw",
        "speaker": "/.sim/speaker.wav",
        "wifi_scenario": "/.sim/wifi.json",
        "battery_mv": 3700,
    }
    with TempDir() as d:
        _write(d + "/w.json", json.dumps(doc))
        assert main.load_wiring(d + "/w.json") == doc


def test_wiring_mistakes_name_the_key():
    cases = (
        ("{", "is not JSON"),
        ("[4242]", "expected an object"),
        ('{"control_port": "4242"}', "control_port: expected a number"),
        ('{"control_port": true}', "control_port: expected a number"),
        ('{"control_port": 0}', "control_port: expected a TCP port"),
        ('{"control_port": 65536}', "control_port: expected a TCP port"),
        ('{"mic": 3}', "mic: expected text"),
        ('{"control_host": "0.0.0.0"}', "unknown key 'control_host'"),
    )
    with TempDir() as d:
        path = d + "/w.json"
        for text, want in cases:
            _write(path, text)
            e = raises(main.WiringError, main.load_wiring, path)
            assert want in str(e) and path in str(e), (text, str(e))


def test_rejected_wiring_stops_before_the_hardware():
    said = []
    console = main._console
    main._console = said.append
    try:
        with TempDir() as d:
            _write(d + "/w.json", '{"speaker": 1}')
            rc = main.run(SIM_BOARD, d + "/config.json", d + "/state", d + "/w.json")
    finally:
        main._console = console
    assert rc == 2, rc
    assert said and "SIM WIRING REJECTED" in said[0] and "speaker: expected text" in said[0], said
