# The ESP32 board's peripherals (firmware/opmob/accessory/hw_esp32.py) against stand-ins for
# MicroPython's ``machine``, ``network`` and ``select`` modules: the frame logic of the I2S
# microphone and speaker (short DMA transfers, 32-bit slots narrowed to 16-bit PCM, the amplifier's
# enable pin) runs here, on CPython and the unix port, since no board is attached. What only a
# board can show (the DMA's timing, the real poll) is for the hardware-in-the-loop suite.
import struct
import sys


class _Pin:
    IN, OUT, PULL_UP, PULL_DOWN, IRQ_FALLING, IRQ_RISING = 1, 2, 3, 4, 8, 16

    def __init__(self, n, mode=None, pull=None, value=None):
        self.n = n
        self.level = value or 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v
        return None

    def irq(self, trigger=0, handler=None):
        self.handler = handler


class _I2S:
    RX, TX, MONO = 0, 1, 2
    made = []

    def __init__(self, ident, sck=None, ws=None, sd=None, mode=None, bits=16, format=None, rate=8000, ibuf=0):
        self.mode = mode
        self.bits = bits
        self.source = b""  # RX: what the DMA has, handed out ``chunk`` bytes at a time at most
        self.sink = bytearray()  # TX: what the DMA took
        self.chunk = 1 << 20
        self.ready = True
        self.open = True
        self.ibuf = ibuf
        _I2S.made.append(self)

    def readinto(self, mv):
        n = min(len(mv), len(self.source), self.chunk)
        mv[:n] = self.source[:n]
        self.source = self.source[n:]
        return n

    def write(self, mv):
        n = min(len(mv), self.chunk)
        self.sink.extend(bytes(mv[:n]))
        return n

    def deinit(self):
        self.open = False


class _Poll:
    def __init__(self):
        self.objs = []

    def register(self, obj, mask):
        self.objs.append((obj, mask))

    def ipoll(self, timeout):
        return [(o, m) for o, m in self.objs if o.ready]


class _WDT:
    made = []

    def __init__(self, timeout=5000):
        self.timeout = timeout
        self.fed = 0
        _WDT.made.append(self)

    def feed(self):
        self.fed += 1


class _Timer:
    PERIODIC = 1
    running = {}  # id -> the timer running there

    def __init__(self, ident):
        self.ident = ident

    def init(self, period=0, mode=0, callback=None):
        self.period = period
        self.callback = callback
        _Timer.running[self.ident] = self

    def deinit(self):
        if _Timer.running.get(self.ident) is self:
            del _Timer.running[self.ident]


class _RTC:
    mem = b""  # RTC memory: kept across soft resets

    def memory(self, data=None):
        if data is None:
            return _RTC.mem
        _RTC.mem = bytes(data)
        return None


class _Module:
    pass


def _fakes():
    machine = _Module()
    machine.Pin = _Pin
    machine.I2S = _I2S
    machine.WDT = _WDT
    machine.Timer = _Timer
    machine.RTC = _RTC
    network = _Module()
    select = _Module()
    select.POLLIN, select.POLLOUT = 1, 4
    select.poll = _Poll
    return {"machine": machine, "network": network, "select": select}


def _hw_esp32():
    """hw_esp32, imported with the stand-ins in place of the board's modules (sys.modules is put
    back afterwards, so nothing else in this process sees them)."""
    name = "opmob.accessory.hw_esp32"
    if name in sys.modules:
        return sys.modules[name]
    fakes = _fakes()
    saved = {k: sys.modules.get(k) for k in fakes}
    try:
        for k in fakes:
            sys.modules[k] = fakes[k]
        from opmob.accessory import hw_esp32

        return hw_esp32
    finally:
        for k in saved:
            if saved[k] is None:
                del sys.modules[k]
            else:
                sys.modules[k] = saved[k]


MIC = {"id": 0, "sck": 12, "ws": 13, "sd": 14, "rate": 8000, "bits": 16, "slot_bits": 32, "gain_shift": 0}
SPEAKER = {"id": 1, "sck": 15, "ws": 16, "sd": 17, "rate": 8000, "bits": 16, "enable": 18, "dma_frames": 2}


def _slots(samples, low=0):
    """24-bit samples as an INMP441 sends them: left-justified in 32-bit little-endian slots."""
    return b"".join(struct.pack("<i", (s << 16) | low) for s in samples)


def test_mic_narrows_32_bit_slots_to_16_bit_pcm_across_short_reads():
    m = _hw_esp32()
    samples = [(i * 409) % 65536 - 32768 for i in range(160)]  # the whole range, signs included
    mic = m.Esp32Mic(MIC)
    mic.start()
    i2s = mic.i2s
    assert i2s.mode == _I2S.RX and i2s.bits == 32
    i2s.source = _slots(samples, 0xAB00)
    i2s.chunk = 200  # the DMA has 200 bytes at a time: four reads for one 640-byte frame
    buf = bytearray(320)
    assert [mic.read(buf) for _ in range(4)] == [False, False, False, True]
    assert list(struct.unpack("<160h", buf)) == samples
    # The next frame starts afresh; with gain, loud samples saturate rather than wrap.
    mic.stop()
    mic = m.Esp32Mic(dict(MIC, gain_shift=2))
    mic.start()
    mic.i2s.source = _slots([100, -100, 20000, -20000] * 40)
    assert mic.read(buf)
    assert list(struct.unpack("<4h", buf[:8])) == [400, -400, 32767, -32768]
    assert not mic.read(buf)  # nothing more from the DMA yet: not a frame
    i2s = mic.i2s
    mic.stop()
    assert mic.i2s is None and not i2s.open


def test_mic_with_16_bit_slots_reads_straight_into_the_frame():
    m = _hw_esp32()
    mic = m.Esp32Mic(dict(MIC, slot_bits=16))
    mic.start()
    pcm = bytes(range(256)) + bytes(64)
    mic.i2s.source = pcm
    mic.i2s.chunk = 100
    buf = bytearray(320)
    assert [mic.read(buf) for _ in range(4)] == [False, False, False, True]
    assert bytes(buf) == pcm


def test_speaker_hands_the_dma_a_frame_in_as_many_writes_as_it_takes():
    m = _hw_esp32()
    spk = m.Esp32Speaker(SPEAKER)
    assert spk.enable.level == 0  # the amplifier is off until something plays
    spk.start()
    assert spk.enable.level == 1 and spk.i2s.mode == _I2S.TX
    assert spk.i2s.ibuf == 2 * 320  # the board's dma_frames, no more queued ahead
    spk.i2s.chunk = 128
    a = bytes(range(256)) + bytes(range(64))
    b = bytes(320 * [7])
    assert [spk.put(a) for _ in range(3)] == [False, False, True]
    assert spk.put(b) is False  # a new frame: from its start, not where the last one ended
    assert spk.put(b) is False and spk.put(b) is True
    assert bytes(spk.i2s.sink) == a + b
    spk.stop()
    assert spk.enable.level == 0 and spk.i2s is None


def test_speaker_drop_starts_the_dma_empty():
    m = _hw_esp32()
    spk = m.Esp32Speaker(SPEAKER)
    assert spk.drop() is False  # not playing: nothing to drop
    spk.start()
    old = spk.i2s
    assert spk.put(bytes(320))
    assert spk.drop() is True
    assert not old.open and spk.i2s is not old and spk.i2s.open and bytes(spk.i2s.sink) == b""
    assert spk.enable.level == 1 and spk.i2s.ibuf == 2 * 320
    spk.stop()


def test_ready_asks_the_i2s_objects_own_poller():
    m = _hw_esp32()
    mic = m.Esp32Mic(MIC)
    mic.start()
    r = mic._wait
    assert r.now()
    mic.i2s.ready = False
    assert not r.now()


def _fresh_watchdog_world(rtc=b""):
    _WDT.made = []
    _Timer.running = {}
    _RTC.mem = rtc


def test_watchdog_is_held_fed_while_the_app_is_stopped_and_handed_back_at_start():
    hw = _hw_esp32()
    _fresh_watchdog_world()
    wd = hw.Esp32Watchdog()
    wd.start(8000)
    assert [w.timeout for w in _WDT.made] == [8000] and _Timer.running == {}
    assert _RTC.mem == b"opmob-wdt:8000"  # for boot.py after a soft reset
    wd.hold(True)  # the app stopped for the REPL
    guard = _Timer.running[hw.GUARD_TIMER]
    assert guard.period <= 8000 // 3
    guard.callback(guard)
    guard.callback(guard)
    assert _WDT.made[0].fed == 2
    wd.start(8000)  # the app again: it feeds, the timer stops, the same watchdog
    assert _Timer.running == {} and len(_WDT.made) == 1
    wd.hold(True)
    wd.hold(False)
    assert _Timer.running == {}


def test_boot_holds_a_watchdog_started_before_the_soft_reset_until_the_app_takes_it():
    hw = _hw_esp32()
    _fresh_watchdog_world(b"opmob-wdt:6000")
    held = hw.hold_after_reset()
    assert held is not None and [w.timeout for w in _WDT.made] == [6000]
    guard = _Timer.running[hw.GUARD_TIMER]
    guard.callback(guard)
    assert _WDT.made[0].fed == 1
    # The app's own watchdog object (another instance) stops boot's timer when it starts.
    hw.Esp32Watchdog().start(6000)
    assert _Timer.running == {}


def test_boot_starts_no_watchdog_without_a_valid_mark():
    hw = _hw_esp32()
    for mem in (b"", b"other data", b"opmob-wdt:", b"opmob-wdt:x1", b"opmob-wdt:5", b"opmob-wdt:999999"):
        _fresh_watchdog_world(mem)
        assert hw.hold_after_reset() is None, mem
        assert _WDT.made == [] and _Timer.running == {}, mem
