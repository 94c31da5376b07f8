"""The accessory's hardware layer: one small object per peripheral, chosen by the board.

This module holds what every board shares and what can be tested without hardware:

- ``Button``: debounce (acting on the first edge, or after the level held) and long press over
  raw samples (``sample(now, pressed) -> event``);
- ``PATTERNS`` and ``LedPlayer``: the LED pattern table (on/off timings per LED) and where in
  its cycle a pattern is at a given time;
- ``battery_percent``: cell voltage to a charge estimate;
- ``make_hardware(board, **options)``: the board's implementations, from ``hw_esp32`` (the
  ``machine`` and ``network`` modules, imported only on a device) or ``hw_sim`` (the unix-sim
  board: a control channel, audio files, a WiFi scenario).

Every implementation offers the same objects (``Hardware`` below names them); times are the
cores' integer milliseconds modulo 2^30 (``ticks.now_ms()``), compared wrap-safely.
"""

from opmob.ticks import tadd, tdiff

# --- buttons --------------------------------------------------------------------------------------

PRESS = "press"  # debounced press
SHORT = "short"  # released before the long-press time
LONG = "long"  # still held at the long-press time (once per press)
RELEASE = "release"  # released after a long press


class Button:
    """Debounce and long press for one button, sans-I/O.

    ``sample(now, pressed)`` takes the raw level (True = pressed, after active-low inversion) at
    time ``now`` (int ms, opmob.ticks) and returns None or one event: PRESS, LONG when the key has
    then been held for ``long_press`` ms (once per press), and on release SHORT (no LONG was given)
    or RELEASE. ``long_press_ms=None``: the button has no long press (a PTT key held for 30 s is
    not busy).

    Two ways to debounce:

    - ``first_edge=True`` (PTT and emergency: the user waits for what the key does): the first
      edge acts at once, and the level is then ignored for ``debounce`` ms (contact bounce within
      that window neither presses again nor releases). At the window's end a level that differs
      from the state is the next edge: a press shorter than the window gives PRESS at its edge and
      SHORT at the window's end, the short press it was. The long press counts from the edge.
    - ``first_edge=False`` (group keys, where a glove brushing a key must do nothing): a level
      must hold for ``debounce`` ms before it counts; shorter chatter gives nothing.

    Sample at least every ``debounce / 2`` while ``busy``; otherwise an edge interrupt (or a slow
    poll) is enough.
    """

    __slots__ = (
        "name",
        "debounce",
        "long_press",
        "first_edge",
        "pressed",
        "_raw",
        "_raw_since",
        "_down_at",
        "_long",
        "_locked_at",
    )

    def __init__(self, name, debounce_ms, long_press_ms, first_edge=False):
        self.name = name
        self.debounce = debounce_ms
        self.long_press = long_press_ms
        self.first_edge = first_edge
        self.pressed = False  # debounced state
        self._raw = False
        self._raw_since = None
        self._down_at = None
        self._long = False
        self._locked_at = None  # first_edge: the last edge acted on, while its window lasts

    def sample(self, now, pressed):
        pressed = bool(pressed)
        if pressed != self._raw or self._raw_since is None:
            self._raw = pressed
            self._raw_since = now
        if self._locked_at is not None and tdiff(now, self._locked_at) >= self.debounce:
            self._locked_at = None
        if pressed != self.pressed:
            if self.first_edge:
                if self._locked_at is not None:
                    return None  # bounce within the window after the edge acted on
                self._locked_at = now
            elif tdiff(now, self._raw_since) < self.debounce:
                return None
            self.pressed = pressed
            if pressed:
                self._down_at = self._raw_since if self.first_edge else now
                self._long = False
                return PRESS
            return RELEASE if self._long else SHORT
        if (
            pressed
            and not self._long
            and self.long_press is not None
            and tdiff(now, self._down_at) >= self.long_press
        ):
            self._long = True
            return LONG
        return None

    @property
    def edge_at(self):
        """When the level last changed (the raw edge the current state began with): with
        ``first_edge=False`` a PRESS happened this long before the debounce confirmed it."""
        return self._raw_since

    @property
    def busy(self):
        """True while a change is being debounced, a bounce window runs or a long press is
        timed: sample again soon."""
        return (
            self._locked_at is not None
            or self._raw != self.pressed
            or (self.pressed and not self._long and self.long_press is not None)
        )

    def reset(self):
        """Forget the state (after a task restart): the next press starts afresh."""
        self.pressed = False
        self._raw = False
        self._raw_since = None
        self._down_at = None
        self._long = False
        self._locked_at = None


# --- LEDs ------------------------------------------------------------------------------------------
# A pattern: for each LED that lights, a cycle of (level, milliseconds) steps; LEDs not named are
# off. A single step is a steady light. Read with gloves on and in sunlight: colour first, rhythm
# second; the states a user must act on (emergency, lost link, denied) blink fast.

PATTERNS = {
    "off": (),
    # powered, provisioned, not (yet) registered: amber heartbeat
    "idle": (("amber", ((1, 100), (0, 1900))),),
    # registered, nothing going on: green heartbeat
    "registered": (("green", ((1, 100), (0, 2900))),),
    # this accessory holds the floor: steady red
    "talking": (("red", ((1, 1000),)),),
    # a call is heard: steady green
    "receiving": (("green", ((1, 1000),)),),
    # floor denied or revoked (shown for a moment): fast red flicker
    "denied": (("red", ((1, 100), (0, 100))),),
    # waiting in the floor queue: slow amber
    "queued": (("amber", ((1, 500), (0, 500))),),
    # emergency in force: red and amber alternate
    "emergency": (("red", ((1, 250), (0, 250))), ("amber", ((0, 250), (1, 250)))),
    # moving to another relay: green double blink
    "roaming": (("green", ((1, 100), (0, 100), (1, 100), (0, 1700))),),
    # no WiFi or no relay: fast amber
    "lost_link": (("amber", ((1, 150), (0, 150))),),
    # no valid configuration: red and green alternate
    "unprovisioned": (("red", ((1, 500), (0, 500))), ("green", ((0, 500), (1, 500)))),
    # registered but the battery is low: red heartbeat instead of green
    "low_battery": (("red", ((1, 100), (0, 2900))),),
    # stunned or killed by the home system: a rare red blink
    "disabled": (("red", ((1, 100), (0, 9900))),),
}


_CYCLE_MS = 30000  # a multiple of every pattern's cycle (checked by tests/fw/test_accessory_hw.py)
_REBASE_MS = 86400000


class LedPlayer:
    """Which LEDs are lit for the current pattern at a given time, and when that next changes."""

    def __init__(self, leds=("green", "red", "amber")):
        self.leds = tuple(leds)
        self.pattern = "off"
        self._steps = ()
        self._start = 0

    def set(self, name, now):
        """Start ``name`` at ``now`` (from the top of its cycle); False if it is already on."""
        if name not in PATTERNS:
            raise ValueError("no LED pattern %r" % name)
        if name == self.pattern:
            return False
        self.pattern = name
        self._steps = PATTERNS[name]
        self._start = now
        return True

    def _phase(self, now):
        # ms into the pattern. A pattern shown for days (registered, idle) is moved on by whole
        # cycles of 30 s (every pattern's cycle divides it), so the difference stays far from the
        # 2^29 ms a wrap-safe tdiff can tell.
        ms = tdiff(now, self._start)
        if ms >= _REBASE_MS:
            ms %= _CYCLE_MS
            self._start = tadd(now, -ms)
        return ms

    def levels(self, now):
        """[(led, 0 or 1)] for every LED, in ``leds`` order."""
        ms = self._phase(now)
        out = []
        for led in self.leds:
            out.append((led, self._level(led, ms)[0]))
        return out

    def next_change(self, now):
        """The time (int ms) of the next on/off change, or None for a steady pattern."""
        ms = self._phase(now)
        best = None
        for led in self.leds:
            left = self._level(led, ms)[1]
            if left is not None and (best is None or left < best):
                best = left
        return None if best is None else tadd(now, best)

    def _level(self, led, ms):
        for name, steps in self._steps:
            if name != led:
                continue
            if len(steps) == 1:
                return steps[0][0], None
            period = 0
            for s in steps:
                period += s[1]
            t = ms % period
            for level, dur in steps:
                if t < dur:
                    return level, dur - t
                t -= dur
            return steps[-1][0], 1
        return 0, None


# --- battery ----------------------------------------------------------------------------------------


def battery_percent(mv, empty_mv, full_mv):
    """A Li-ion cell's charge estimate, 0..100, linear between the board's empty and full voltages."""
    if mv <= empty_mv:
        return 0
    if mv >= full_mv:
        return 100
    return (mv - empty_mv) * 100 // (full_mv - empty_mv)


# --- the board's implementations ----------------------------------------------------------------


class Hardware:
    """What a board provides; each attribute is None when the board lacks the capability.

    - ``buttons``: {name: pin}, ``pin.pressed()`` -> bool (raw, before debounce);
      ``await wait_button_edge(timeout_s)`` returns when a key's level may have changed, or after
      the timeout
    - ``leds``: ``set_pattern(name, now)``, ``update(now)`` -> next change time or None
    - ``mic``: ``start()``, ``stop()``; per frame ``await mic.wait()`` then ``mic.read(buf)``, True
      when ``buf`` holds the next 20 ms of 16-bit PCM (False: part of it, wait again). ``wait()``
      returns an awaitable that allocates nothing (MicroPython's ``asyncio.sleep_ms`` object),
      not a new coroutine: the capture task must not allocate per frame.
      ``await readinto(buf)`` does both, for code that does not mind a coroutine per frame
    - ``speaker``: ``start()``, ``stop()``; per frame ``await speaker.wait()`` (room for it: the
      device's pace) then ``speaker.put(buf)``, True when all of it was taken (False: wait, put
      again). ``await write(buf)`` does both. Optional, where the driver can: ``room()`` (a
      frame's room now), ``drop()`` (forget what the DMA holds unplayed) and ``pad(ms)`` (queue
      silence), with which the app moves the frame clock at a burst's start and starts tones at
      once; the sim's also says when the frame just put sounds (``play_at`` ticks,
      ``play_pos`` sample) and counts its DMA's underruns
    - ``battery``: ``read_mv()``
    - ``wifi``: ``active(on)``, ``scan()`` -> [(ssid, rssi)] (blocks for a second or two on a
      device), ``connect(ssid, psk)`` -> bool, ``isconnected()``, ``disconnect()``, ``rssi()``
    - ``watchdog``: ``start(timeout_ms)``, ``feed()``; ``hold(on)``: fed without the app (the
      app has stopped for a technician's REPL), until ``start`` or ``hold(False)``; ``timeout_ms``
    - ``report(line)``: state lines for whoever watches (the sim's control channel; a device's
      serial console only at debug level)
    - ``serve()``: a coroutine the app runs as a task (the sim's control channel), or None
    """

    def __init__(self):
        self.board = None
        self.buttons = {}
        self.leds = None
        self.mic = None
        self.speaker = None
        self.battery = None
        self.wifi = None
        self.watchdog = None
        self.faults = None  # sim only: fault injection for tests

    def report(self, line):
        pass

    async def wait_button_edge(self, timeout_s):
        import asyncio

        await asyncio.sleep(timeout_s)

    def serve(self):
        return None

    def close(self):
        pass


class Leds:
    """LEDs showing a pattern; subclasses drive the pins (``_drive(led, level)``)."""

    def __init__(self, names=("green", "red", "amber")):
        self.player = LedPlayer(names)
        self._shown = {}

    def set_pattern(self, name, now):
        changed = self.player.set(name, now)
        if changed:
            self._on_pattern(name)
        return changed

    @property
    def pattern(self):
        return self.player.pattern

    def update(self, now):
        for led, level in self.player.levels(now):
            if self._shown.get(led) != level:
                self._shown[led] = level
                self._drive(led, level)
        return self.player.next_change(now)

    def _on_pattern(self, name):
        pass

    def _drive(self, led, level):
        pass


def make_hardware(board, **options):
    """The board's peripherals. ``options`` are the sim board's overrides (``control_port``, ...)."""
    if board.is_sim:
        from opmob.accessory import hw_sim

        return hw_sim.make(board, **options)
    from opmob.accessory import hw_esp32

    return hw_esp32.make(board)
