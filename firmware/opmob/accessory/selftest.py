"""The accessory's peripherals checked in place, for ``opmob verify`` (docs/technician.md).

The board's hardware is built as the app builds it (``hw.make_hardware``, with a virtual device's
sim wiring from ``/.sim.json`` as ``main.run`` reads it), and each peripheral gets a harmless
check, reported by name: buttons read, LEDs lit in turn and left off, battery read and within
what a cell can give, one microphone frame, one speaker frame of silence, WiFi interface there.
The app must not be running (verify's Ctrl-C and soft reset stop it). The watchdog is left
alone: once started it cannot be stopped, and would reset the board after the check.

    checks = selftest.run()     # [[name, "ok", detail] or [name, why it failed]]
"""

import asyncio

from opmob.accessory import hw as hwmod
from opmob.ticks import now_ms

FRAME_BYTES = 320
AUDIO_TIMEOUT_S = 1.0
# A connected Li-ion cell reads between these margins around the board's empty and full
# voltages; outside them the ADC pin, the divider or the cell is at fault.
BATTERY_BELOW_EMPTY_MV = 800
BATTERY_ABOVE_FULL_MV = 300


class Fail(Exception):
    """A check's finding, said as is (other exceptions are reported with their type)."""


def _why(e):
    if isinstance(e, Fail):
        return str(e)
    return "%s: %s" % (type(e).__name__, e)


def run(board_path="/board.json", wiring_path="/.sim.json"):
    """The checks of the board in ``board_path``; a board or hardware that cannot be built is one
    failed check, "hardware"."""
    try:
        from opmob.accessory import board as bd
        from opmob.accessory import main

        board = bd.load(board_path)
        options = main.load_wiring(wiring_path) if board.is_sim and wiring_path else {}
        hw = hwmod.make_hardware(board, **options)
    except Exception as e:
        return [["hardware", "cannot be set up: %s" % _why(e)]]
    try:
        return check(board, hw)
    finally:
        try:
            hw.close()
        except Exception:
            pass


def check(board, hw):
    out = []
    for name, present, fn in (
        ("buttons", hw.buttons, _buttons),
        ("leds", hw.leds, _leds),
        ("battery", hw.battery, _battery),
        ("mic", hw.mic, _mic),
        ("speaker", hw.speaker, _speaker),
        ("wifi", hw.wifi, _wifi),
    ):
        if not present:
            continue
        try:
            out.append([name, "ok", fn(board, hw)])
        except Exception as e:
            out.append([name, _why(e)])
    return out


def _buttons(board, hw):
    held = []
    for name in sorted(hw.buttons):
        level = hw.buttons[name].pressed()
        if level is not True and level is not False:
            raise Fail("%s reads %r, not pressed or released" % (name, level))
        if level:
            held.append(name)
    if held:
        return "%d read; pressed now: %s" % (len(hw.buttons), ", ".join(held))
    return "%d read, none pressed" % len(hw.buttons)


def _leds(board, hw):
    leds = hw.leds
    now = now_ms()
    # Steady green, steady red, amber's first half-second: each LED on once, through the
    # firmware's own pattern table and driver.
    for pattern in ("receiving", "talking", "queued", "off"):
        leds.set_pattern(pattern, now)
        leds.update(now)
    return "%s lit in turn, now off" % ", ".join(leds.player.leds)


def _battery(board, hw):
    mv = hw.battery.read_mv()
    spec = board.battery
    lo = spec["empty_mv"] - BATTERY_BELOW_EMPTY_MV
    hi = spec["full_mv"] + BATTERY_ABOVE_FULL_MV
    if not lo <= mv <= hi:
        raise Fail(
            "reads %d mV, outside %d..%d mV: is the cell in, and battery.adc/divider right?" % (mv, lo, hi)
        )
    return "%d mV, %d %%" % (mv, hwmod.battery_percent(mv, spec["empty_mv"], spec["full_mv"]))


def _audio(what, dev, step):
    dev.start()
    try:
        asyncio.run(asyncio.wait_for(step(), AUDIO_TIMEOUT_S))
    except asyncio.TimeoutError:
        raise Fail("no %s within %g s: check its I2S wiring" % (what, AUDIO_TIMEOUT_S))
    finally:
        dev.stop()


def _mic(board, hw):
    buf = bytearray(FRAME_BYTES)
    _audio("frame from it", hw.mic, lambda: hw.mic.readinto(buf))
    return "one 20 ms frame"


def _speaker(board, hw):
    silence = bytearray(FRAME_BYTES)
    _audio("room for a frame", hw.speaker, lambda: hw.speaker.write(silence))
    return "one 20 ms frame of silence"


def _wifi(board, hw):
    connected = hw.wifi.isconnected()
    return "interface there, %s" % ("connected" if connected else "not connected")
