"""Start the accessory: board, hardware, configuration, the app's tasks.

On a board, ``boards/main.py`` (copied to the device as ``/main.py``) calls ``run()`` with the
defaults: ``/board.json``, ``/config.json``, ``/state``. A virtual device (``opmob virtual``) runs
the same ``/main.py``; its sim wiring (control port, microphone, speaker, WiFi scenario), given on
``opmob virtual``'s command line, is in ``/.sim.json`` beside its ``/.hwid``: part of the
(virtual) hardware, not of what ``opmob deploy`` copies. On the MicroPython unix port (CI, the
demo)::

    micropython -m opmob.accessory.main --board boards/unix-sim.json --config config.json \\
        --state state/ [--control-port N] [--mic FILE] [--speaker FILE] [--wifi-scenario FILE] \\
        [--watchdog-ms N]

Never a crash loop: a board file that does not validate stops here with a console message
naming the key (the REPL stays for a technician); a configuration that does not validate is the
app's unprovisioned mode; an exception that escapes the app (a bug) is logged and the app started
again in this process after a pause, without a reset.
"""

import gc
import sys

gc.collect()

import asyncio  # noqa: E402

from opmob import compat  # noqa: E402

RESTART_PAUSE_S = 5
WIRING = "/.sim.json"
# The sim board's settings a virtual device's wiring may set (the board file's sim keys that the
# hardware takes as options), with their JSON type.
_WIRING_KEYS = {
    "control_port": int,
    "mic": str,
    "speaker": str,
    "wifi_scenario": str,
    "battery_mv": int,
    "watchdog_ms": int,
}

_SIM_OPTIONS = {
    "--control-port": ("control_port", int),
    "--mic": ("mic", str),
    "--speaker": ("speaker", str),
    "--wifi-scenario": ("wifi_scenario", str),
    "--battery-mv": ("battery_mv", int),
    "--watchdog-ms": ("watchdog_ms", int),
}


def _console(line):
    print(line)


class WiringError(ValueError):
    pass


def load_wiring(path):
    """The sim wiring in ``path`` as ``make_hardware`` options; {} when there is no such file.
    WiringError names the key at fault: a technician's mistake must not look like a firmware bug."""
    import json

    try:
        f = open(path)
    except OSError:
        return {}
    try:
        try:
            doc = json.load(f)
        except ValueError:
            raise WiringError("%s is not JSON" % path)
    finally:
        f.close()
    if not isinstance(doc, dict):
        raise WiringError("%s: expected an object of sim settings" % path)
    options = {}
    for key in sorted(doc):
        want = _WIRING_KEYS.get(key)
        if want is None:
            raise WiringError("%s: unknown key %r (known: %s)" % (path, key, ", ".join(sorted(_WIRING_KEYS))))
        v = doc[key]
        # bool is an int to CPython: a port of true is a mistake, not 1.
        if not isinstance(v, want) or isinstance(v, bool):
            raise WiringError("%s: %s: expected %s" % (path, key, "a number" if want is int else "text"))
        if key == "control_port" and not 0 < v <= 65535:
            raise WiringError("%s: control_port: expected a TCP port 1..65535" % path)
        options[key] = v
    return options


def _code_heap():
    """Heap used once the firmware's modules are loaded: on a board they are frozen in flash; on
    the unix port their bytecode sits in this heap, so ``status`` reports the app's part apart."""
    from opmob import authvec, device, dvi4, mcpt, rtp, sig, srtp, ticks, txn, uasyncio_driver  # noqa: F401
    from opmob.accessory import app, audio, board, config, core, groups, hw, jitter, link, ptt, tones  # noqa: F401

    if compat.IS_MICROPYTHON:
        from opmob.accessory import hw_sim  # noqa: F401

        gc.collect()
        return gc.mem_alloc()
    return None


def run(
    board_path="/board.json", config_path="/config.json", state_dir="/state", wiring_path=WIRING, **options
):
    """Boot and run; returns the exit code (0 after ``quit``; 2 for a board or wiring file to fix).
    On a sim board, ``wiring_path`` (if it exists) overrides the board's sim section; ``options``
    override both."""
    from opmob.accessory import board as bd

    heap_code = _code_heap()
    try:
        board = bd.load(board_path)
    except bd.BoardError as e:
        _console("opmob accessory: BOARD DEFINITION REJECTED: %s" % e)
        _console("opmob accessory: fix %s (docs/accessory.md, Boards) and reset" % board_path)
        return 2
    if _safe_mode(board):
        _console("opmob accessory: SAFE MODE (PTT held at power-on): the app is not started; REPL free")
        return 0
    if board.is_sim and wiring_path:
        try:
            wiring = load_wiring(wiring_path)
        except WiringError as e:
            _console("opmob accessory: SIM WIRING REJECTED: %s" % e)
            _console(
                "opmob accessory: start the virtual device again with valid options (docs/technician.md)"
            )
            return 2
        if wiring:
            _console(
                "opmob accessory: sim wiring %s: %s"
                % (wiring_path, ", ".join("%s %s" % (k, wiring[k]) for k in sorted(wiring)))
            )
        for k in wiring:
            if k not in options:
                options[k] = wiring[k]
    from opmob.accessory.app import App, where
    from opmob.accessory.hw import make_hardware

    try:
        hw = make_hardware(board, **options)
    except Exception as e:
        _console(
            "opmob accessory: hardware of board %s failed to start: %s at %s"
            % (board.name, type(e).__name__, where(e))
        )
        return 2
    while True:
        app = App(board, hw, config_path, state_dir, heap_code=heap_code)
        try:
            return asyncio.run(app.run())
        except KeyboardInterrupt:
            # A technician's tool stopped the app for the REPL: a started watchdog keeps running
            # and must not reset the board under a deploy or provision.
            if hw.watchdog is not None and hw.watchdog.timeout_ms:
                hw.watchdog.hold(True)
                _console("opmob accessory: stopped for the REPL; the watchdog is held fed until reset")
            return 0
        except Exception as e:
            _console(
                "opmob accessory: the app stopped on %s at %s; starting it again in %d s"
                % (type(e).__name__, where(e), RESTART_PAUSE_S)
            )
        if compat.IS_MICROPYTHON:
            asyncio.new_event_loop()
            import time

            time.sleep(RESTART_PAUSE_S)
        else:
            import time

            time.sleep(RESTART_PAUSE_S)


def _safe_mode(board):
    """PTT held at power-on on a real board: leave the device to a technician (REPL, mpremote)
    whatever the app would do."""
    if board.is_sim or "ptt" not in board.buttons:
        return False
    import machine

    spec = board.buttons["ptt"]
    pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(spec["pull"])
    pin = machine.Pin(spec["pin"], machine.Pin.IN, pull)
    return pin.value() == (0 if spec["active_low"] else 1)


def _usage():
    print(
        "usage: micropython -m opmob.accessory.main --board FILE --config FILE --state DIR "
        "[--control-port N] [--mic FILE] [--speaker FILE] [--wifi-scenario FILE] [--battery-mv N] "
        "[--watchdog-ms N]"
    )
    return 2


def main(argv):
    paths = {"--board": None, "--config": None, "--state": None}
    options = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if i + 1 >= len(argv):
            return _usage()
        v = argv[i + 1]
        if a in paths:
            paths[a] = v
        elif a in _SIM_OPTIONS:
            name, conv = _SIM_OPTIONS[a]
            try:
                options[name] = conv(v)
            except ValueError:
                return _usage()
        else:
            return _usage()
        i += 2
    if None in paths.values():
        return _usage()
    return run(paths["--board"], paths["--config"], paths["--state"], None, **options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
