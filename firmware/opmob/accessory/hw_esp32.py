"""ESP32 and ESP32-S3 peripherals through MicroPython's ``machine`` and ``network`` modules.

Imported only on a device (``hw.make_hardware`` picks it for the esp32 and esp32s3 boards); it must
still compile with ``mpy-cross -march=xtensawin``, which the tests check.

- Buttons: GPIO inputs with the board's pull; an edge interrupt sets a ``ThreadSafeFlag`` so the
  button task sleeps until something happens (debounce and long press are ``hw.Button``'s).
- LEDs: GPIO outputs driven from ``hw.LedPlayer``.
- Microphone: ``machine.I2S`` receive (an INMP441 sends 24-bit samples in 32-bit slots: they are
  narrowed to 16 bits here, with the board's ``gain_shift``), looked for with a ``select.poll`` of
  its own (``_Ready``: no StreamReader coroutine per frame, no registration per wake-up) and
  asyncio's ``sleep_ms``, so the DMA's own clock paces capture.
- Speaker: ``machine.I2S`` transmit to a MAX98357A, 16-bit mono, written when its own poller
  says the DMA has room (``_Ready``: the I2S clock paces playback; no StreamWriter, whose
  ``write`` keeps what does not fit in a new bytes object); the amplifier's
  enable pin is switched off when idle.
- Battery: ``machine.ADC`` on an ADC1 pin (ADC2 is unusable while WiFi runs), averaged.
- WiFi: ``network.WLAN`` station with scan.
- Watchdog: ``machine.WDT``: once started it cannot be stopped, as intended; held fed by a
  hardware timer while a technician has the REPL (``Esp32Watchdog``).
"""

import asyncio
import select

import machine
import network

from opmob.accessory import hw
from opmob.compat import micropython, ptr8

FRAME_SAMPLES = 160
FRAME_BYTES = 320
I2S_POLL_MS = 2  # how often a frame that is not ready yet is looked for again


class _Ready:
    """Whether an I2S object can be read (or written) now, from a ``select.poll`` of its own in
    which it stays registered: ``ipoll(0)`` allocates nothing, while asyncio's StreamReader would
    make a coroutine per frame and its poller a registration per wake-up. The first poll also
    puts the I2S object in its non-blocking (asyncio) mode, as a StreamReader would."""

    def __init__(self, i2s, write):
        self.poll = select.poll()
        self.mask = select.POLLOUT if write else select.POLLIN
        self.poll.register(i2s, self.mask)
        self.now()

    def now(self):
        for _obj, ev in self.poll.ipoll(0):
            if ev & self.mask:
                return True
        return False

    def wait(self):
        """An awaitable that allocates nothing: at once when ready, else a short sleep."""
        return asyncio.sleep_ms(0 if self.now() else I2S_POLL_MS)


@micropython.viper
def _narrow32(src, dst, n: int, shift: int):
    # 32-bit little-endian I2S slots (the sample's top bits first) -> 16-bit PCM, saturating.
    s = ptr8(src)
    d = ptr8(dst)
    i = 0
    while i < n:
        o = i * 4
        hi = s[o + 3]
        if hi > 127:
            hi -= 256  # the sample's sign, whatever the width of the integers here
        v = (hi << 24) | (s[o + 2] << 16) | (s[o + 1] << 8) | s[o]
        v = v >> (16 - shift)
        if v > 32767:
            v = 32767
        elif v < -32768:
            v = -32768
        d[2 * i] = v & 0xFF
        d[2 * i + 1] = (v >> 8) & 0xFF
        i += 1


class Esp32Pin:
    def __init__(self, spec, flag):
        pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(spec["pull"])
        self.pin = machine.Pin(spec["pin"], machine.Pin.IN, pull)
        self.active_low = spec["active_low"]
        self.pin.irq(trigger=machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING, handler=lambda p: flag.set())

    def pressed(self):
        return self.pin.value() == (0 if self.active_low else 1)


class Esp32Leds(hw.Leds):
    def __init__(self, specs):
        hw.Leds.__init__(self)
        self.pins = {}
        self.active_low = {}
        for name in specs:
            spec = specs[name]
            self.active_low[name] = spec["active_low"]
            self.pins[name] = machine.Pin(spec["pin"], machine.Pin.OUT, value=1 if spec["active_low"] else 0)

    def _drive(self, led, level):
        p = self.pins.get(led)
        if p is not None:
            p.value((1 - level) if self.active_low[led] else level)


class _Frame:
    """One 20 ms frame moved through an I2S object in as many calls as its DMA needs: in
    asyncio mode ``readinto``/``write`` move what fits now. The view of the frame's buffer is
    kept, and a slice is made only after a short transfer (rare)."""

    def __init__(self):
        self._mv = None
        self._of = None
        self.done = 0  # bytes of the frame moved so far

    def reset(self):
        """Forget a frame half moved (the I2S object was started again)."""
        self.done = 0

    def step(self, i2s, buf, write):
        """Move more of ``buf``; True once all of it has been moved (then ready for the next)."""
        mv = self._mv
        if buf is not self._of:
            mv = self._mv = memoryview(buf)
            self._of = buf
            self.done = 0
        done = self.done
        part = mv if done == 0 else mv[done:]
        n = i2s.write(part) if write else i2s.readinto(part)
        done += n or 0
        if done < len(buf):
            self.done = done
            return False
        self.done = 0
        return True


class Esp32Mic:
    def __init__(self, spec):
        self.spec = spec
        self.i2s = None
        self._wait = None
        self._slot = spec["slot_bits"]
        self._raw = bytearray(FRAME_SAMPLES * self._slot // 8)
        self._shift = spec["gain_shift"]
        self._frame = _Frame()

    def start(self):
        if self.i2s is not None:
            return
        s = self.spec
        self.i2s = machine.I2S(
            s["id"],
            sck=machine.Pin(s["sck"]),
            ws=machine.Pin(s["ws"]),
            sd=machine.Pin(s["sd"]),
            mode=machine.I2S.RX,
            bits=self._slot,
            format=machine.I2S.MONO,
            rate=s["rate"],
            ibuf=len(self._raw) * 4,
        )
        self._wait = _Ready(self.i2s, False)
        self._frame.reset()

    def stop(self):
        if self.i2s is not None:
            self.i2s.deinit()
            self.i2s = None
            self._wait = None

    def wait(self):
        if self.i2s is None:
            self.start()
        return self._wait.wait()

    def read(self, buf):
        """What the DMA has, up to the rest of the frame; True once the frame is whole (then
        narrowed into ``buf``). The I2S clock paces capture."""
        raw = self._raw if self._slot == 32 else buf
        if not self._frame.step(self.i2s, raw, False):
            return False
        if self._slot == 32:
            _narrow32(raw, buf, FRAME_SAMPLES, self._shift)
        return True

    async def readinto(self, buf):
        while True:
            await self.wait()
            if self.read(buf):
                return FRAME_BYTES


class Esp32Speaker:
    def __init__(self, spec):
        self.spec = spec
        self.i2s = None
        self._wait = None
        self._frame = _Frame()
        self._zero = None
        self.enable = None
        if spec.get("enable") is not None:
            self.enable = machine.Pin(spec["enable"], machine.Pin.OUT, value=0)

    def start(self):
        if self.i2s is not None:
            return
        s = self.spec
        self.i2s = machine.I2S(
            s["id"],
            sck=machine.Pin(s["sck"]),
            ws=machine.Pin(s["ws"]),
            sd=machine.Pin(s["sd"]),
            mode=machine.I2S.TX,
            bits=16,
            format=machine.I2S.MONO,
            rate=s["rate"],
            # The esp32 port sizes its DMA from ibuf: everything in it is queued ahead of the
            # frame being written, so it is kept to the board's dma_frames (2: one playing, one
            # written), not more (each frame more is 20 ms more mouth-to-ear).
            ibuf=FRAME_BYTES * s["dma_frames"],
        )
        self._wait = _Ready(self.i2s, True)
        self._frame.reset()
        if self.enable is not None:
            self.enable.value(1)

    def stop(self):
        if self.enable is not None:
            self.enable.value(0)
        if self.i2s is not None:
            self.i2s.deinit()
            self.i2s = None
            self._wait = None

    def room(self):
        """True when the DMA has room for more (what ``wait()`` waits for)."""
        return self.i2s is not None and self._wait.now()

    def pad(self, ms):
        """Queue ``ms`` of silence (at most the DMA's size) right after ``drop()``: the app moves
        the speaker's frame clock with it at a talk burst's start. True when the DMA took it."""
        if self.i2s is None:
            return False
        n = ms * 16  # 8 kHz, 16-bit mono
        cap = FRAME_BYTES * self.spec["dma_frames"]
        if n > cap:
            n = cap
        if self._zero is None or len(self._zero) < n:
            self._zero = bytearray(cap)
        return self.i2s.write(memoryview(self._zero)[:n]) == n

    def drop(self):
        """Drop what the DMA holds and has not played (silence: the app asks only then), so a
        tone sounds at once: the I2S channel is started again, its DMA empty. True when done."""
        if self.i2s is None:
            return False
        self.i2s.deinit()
        self.i2s = None
        self.start()
        return True

    def wait(self):
        """Until the DMA has room: the I2S clock paces playback."""
        if self.i2s is None:
            self.start()
        return self._wait.wait()

    def put(self, buf):
        """Give the DMA more of the frame ``buf``; True once it has taken all of it."""
        return self._frame.step(self.i2s, buf, True)

    async def write(self, buf):
        while True:
            await self.wait()
            if self.put(buf):
                return


class Esp32Battery:
    def __init__(self, spec):
        self.adc = machine.ADC(machine.Pin(spec["adc"]), atten=machine.ADC.ATTN_11DB)
        self.divider = spec["divider"]

    def read_mv(self):
        total = 0
        for _ in range(8):
            total += self.adc.read_uv()
        return int(total / 8 / 1000 * self.divider)


class Esp32Wifi:
    def __init__(self):
        self.wlan = network.WLAN(network.STA_IF)

    def active(self, on):
        self.wlan.active(on)

    def scan(self):
        out = []
        for ap in self.wlan.scan():
            try:
                ssid = ap[0].decode()
            except Exception:
                continue
            out.append((ssid, ap[3]))
        out.sort(key=lambda x: -x[1])
        return out

    def connect(self, ssid, psk):
        try:
            self.wlan.connect(ssid, psk or "")
        except OSError:
            return False
        return True

    def isconnected(self):
        return self.wlan.isconnected()

    def disconnect(self):
        try:
            self.wlan.disconnect()
        except OSError:
            pass

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except Exception:
            return None


# RTC memory survives a soft reset and a watchdog reset (not a power cycle): it tells boot.py that
# a watchdog is running, and its timeout.
WDT_MARK = b"opmob-wdt:"
GUARD_TIMER = 3  # the hardware timer that feeds a held watchdog; nothing else here uses timers
_guard = None  # the running guard timer: one per interpreter, shared by boot.py and the app


class Esp32Watchdog:
    """``machine.WDT``. Once started it cannot be stopped, and it outlives MicroPython's soft
    reset (the task stays subscribed to the ESP-IDF task watchdog). While the app runs only its
    watchdog task feeds it. When the app has stopped for a technician (Ctrl-C from mpremote or
    opmob: ``hold``), and after every soft reset until the app starts again (boot.py:
    ``hold_after_reset``), a hardware timer feeds it, or the board would reset in the middle of
    a deploy or provision that takes longer than the timeout, again at every attempt."""

    def __init__(self):
        self.wdt = None
        self.timeout_ms = None

    def start(self, timeout_ms):
        if self.wdt is None:
            self.wdt = machine.WDT(timeout=timeout_ms)
            self.timeout_ms = timeout_ms
            try:
                machine.RTC().memory(WDT_MARK + str(timeout_ms).encode())
            except Exception:  # no RTC memory on this port: no hold after a soft reset
                pass
        self.hold(False)

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def hold(self, on=True):
        """Feed from a hardware timer (on) or stop that (off: the app feeds it again)."""
        global _guard
        if _guard is not None:
            _guard.deinit()
            _guard = None
        if on and self.wdt is not None:
            wdt = self.wdt
            _guard = machine.Timer(GUARD_TIMER)
            _guard.init(
                period=max(100, self.timeout_ms // 3),
                mode=machine.Timer.PERIODIC,
                callback=lambda t: wdt.feed(),
            )


def hold_after_reset():
    """boot.py: if a watchdog was started since power-on, it is still running: hold it fed until
    the app takes it over (``Esp32Watchdog.start``). The watchdog object, or None."""
    try:
        mark = bytes(machine.RTC().memory())
    except Exception:
        return None
    if not mark.startswith(WDT_MARK):
        return None
    try:
        ms = int(mark[len(WDT_MARK) :])
    except ValueError:
        return None
    if not 1000 <= ms <= 60000:  # board.py's range: anything else is not our mark
        return None
    wd = Esp32Watchdog()
    wd.start(ms)
    wd.hold(True)
    return wd


class Esp32Hardware(hw.Hardware):
    def __init__(self, board):
        hw.Hardware.__init__(self)
        self.board = board
        self._edge = asyncio.ThreadSafeFlag()
        for name in board.buttons:
            self.buttons[name] = Esp32Pin(board.buttons[name], self._edge)
        if board.has("leds"):
            self.leds = Esp32Leds(board.leds)
        if board.has("mic"):
            self.mic = Esp32Mic(board.i2s_in)
        if board.has("speaker"):
            self.speaker = Esp32Speaker(board.i2s_out)
        if board.has("battery"):
            self.battery = Esp32Battery(board.battery)
        if board.has("wifi"):
            self.wifi = Esp32Wifi()
        if board.has("watchdog"):
            self.watchdog = Esp32Watchdog()

    async def wait_button_edge(self, timeout_s):
        try:
            await asyncio.wait_for(self._edge.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass

    def close(self):
        if self.mic is not None:
            self.mic.stop()
        if self.speaker is not None:
            self.speaker.stop()


def make(board):
    return Esp32Hardware(board)
