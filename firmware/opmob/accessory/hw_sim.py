"""The unix-sim board: the accessory's peripherals as things a test drives.

- **Control channel**: a TCP server on ``sim.control_host:control_port`` speaking lines. Commands
  press buttons, change the radio and audio, and ask for status; the device reports its LED
  pattern, tones, state and console lines back to every connected client. Protocol:
  docs/accessory.md ("The unix-sim board").
- **Buttons**: levels set by ``press``/``release``/``click``/``long`` (the firmware's own debounce
  and long-press logic reads them, as it reads GPIOs on a board).
- **LEDs**: each pattern change is reported as ``led <pattern>``.
- **Microphone**: 16-bit 8 kHz mono from a raw (s16le) or WAV file, advancing only while the
  firmware captures (while it has the floor); frames are paced by a 20 ms clock.
- **Speaker**: the board's I2S DMA (``i2s_out.dma_frames`` frames of 20 ms) as it plays: every
  sample goes to a WAV file when it sounds (silence included, and the DMA's own silence when it
  ran dry), so a sample's place in the file is the time it was played; ``speaker start <wall
  time>`` tells when sample 0 was.
- **WiFi**: access points from a scenario file (or one per configured relay), changed by
  ``ap``/``wifi`` commands.
- **Watchdog**: a thread that kills the process (SIGKILL, as a hardware watchdog resets a chip)
  when the event loop has not fed it in time.

Runs on the MicroPython unix port (CI) and on CPython (unit tests).
"""

import asyncio
import json
import os
import struct
import sys
import time

from opmob import compat
from opmob.accessory import hw
from opmob.accessory.jitter import FRAME_MS, tadd, tdiff

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_BYTES = 320
FAR_BEHIND_MS = 500
RATE = 8000
CLIENT_BACKLOG = 4000  # report lines held for a slow client before it is dropped
MAX_LINE = 512
WAV_HEADER_LEN = 44


def wall_time():
    """Seconds since the epoch (shared between processes on one host: for delay measurements)."""
    return time.time()


# --- WAV ----------------------------------------------------------------------------------------------


def wav_header(nbytes):
    """A RIFF/WAVE header for ``nbytes`` of 16-bit mono PCM at 8 kHz."""
    h = bytearray(WAV_HEADER_LEN)
    _pack_wav_header(h, nbytes)
    return bytes(h)


def _pack_wav_header(h, nbytes):
    h[0:4] = b"RIFF"
    struct.pack_into("<I", h, 4, 36 + nbytes)
    h[8:16] = b"WAVEfmt "
    struct.pack_into("<IHHIIHH", h, 16, 16, 1, 1, RATE, RATE * 2, 2, 16)
    h[36:40] = b"data"
    struct.pack_into("<I", h, 40, nbytes)


def wav_data_offset(f):
    """Where the samples of an open WAV file start; ValueError unless it is 8 kHz 16-bit mono PCM."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt_ok = False
    while True:
        ch = f.read(8)
        if len(ch) < 8:
            raise ValueError("WAV file without a data chunk")
        cid = ch[:4]
        size = struct.unpack("<I", ch[4:])[0]
        pos += 8
        if cid == b"fmt ":
            body = f.read(size)
            tag, chans, rate, _br, _ba, bits = struct.unpack("<HHIIHH", body[:16])
            if tag != 1 or chans != 1 or rate != RATE or bits != 16:
                raise ValueError("WAV must be 8 kHz 16-bit mono PCM")
            fmt_ok = True
        elif cid == b"data":
            if not fmt_ok:
                raise ValueError("WAV data before its format")
            return pos
        else:
            f.seek(pos + size)
        pos += size + (size & 1)
        f.seek(pos)


class FrameClock:
    """A 20 ms cadence that does not drift: frame n is due at start + n * 20 ms.

    In integer milliseconds (``compat.ticks_ms``, modulo 2^30: jitter.tadd/tdiff), and ``wait()`` returns
    ``compat.sleep_ms``'s awaitable: the audio tasks await it every frame, and a float time or a
    coroutine would be a heap object per frame on MicroPython."""

    def __init__(self, ticks=compat.ticks_ms):
        self.ticks = ticks
        self.due = None  # when the frame just waited for fell due

    def reset(self):
        self.due = tadd(self.ticks(), 0)

    def wait(self):
        """An awaitable that ends when the next frame falls due."""
        if self.due is None:
            self.reset()
        due = self.due = tadd(self.due, FRAME_MS)
        d = tdiff(due, self.ticks())
        if d < -FAR_BEHIND_MS:
            # Far behind (the process was stopped): start a fresh cadence, do not burst.
            self.reset()
            d = 0
        return compat.sleep_ms(d if d > 0 else 0)


# --- peripherals --------------------------------------------------------------------------------------


class SimPin:
    __slots__ = ("level", "edge_ms")

    def __init__(self):
        self.level = False
        self.edge_ms = None  # ticks of the last level change: the key's physical edge

    def pressed(self):
        return self.level


class SimLeds(hw.Leds):
    def __init__(self, control):
        hw.Leds.__init__(self)
        self.control = control
        self.trace = False

    def _on_pattern(self, name):
        self.control.report("led %s" % name)

    def _drive(self, led, level):
        if self.trace:
            self.control.report("ledpin %s %d" % (led, level))


class SimMic:
    """Frames from a file, paced at 20 ms; silence when there is no file or it has run out."""

    def __init__(self, control, path=""):
        self.control = control
        self.clock = FrameClock()
        self.path = ""
        self._f = None
        self._data_at = 0
        self._pos = 0  # samples of the file consumed
        self._eof_told = False
        self.running = False
        if path:
            self.set_source(path)

    def set_source(self, path, offset=0):
        """Play ``path`` (raw s16le or WAV) from sample ``offset``; "" for silence."""
        self._close()
        self.path = path
        self._pos = offset
        self._eof_told = False
        if not path:
            return
        try:
            f = open(path, "rb")
        except OSError as e:
            # Named, so that a missing source reads as the microphone's fault (opmob verify).
            raise OSError("mic source %s: %s" % (path, e))
        try:
            self._data_at = wav_data_offset(f) if path.endswith(".wav") else 0
        except Exception:
            f.close()
            raise
        self._f = f
        f.seek(self._data_at + 2 * offset)

    def _close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def start(self):
        self.running = True
        self.clock.reset()
        self.control.report("mic start %d %.6f" % (self._pos, wall_time()))

    def stop(self):
        if self.running:
            self.running = False
            self.control.report("mic stop %d" % self._pos)

    def wait(self):
        """What the capture task awaits each frame (hw.Hardware): the end of the next frame."""
        return self.clock.wait()

    def read(self, buf):
        """The frame that just ended into ``buf`` (320 bytes); True (a file gives whole frames)."""
        n = 0
        if self._f is not None:
            n = self._f.readinto(buf) or 0
            if n < FRAME_BYTES and not self._eof_told:
                self._eof_told = True
                self.control.report("mic end %d" % (self._pos + n // 2))
        for i in range(n, FRAME_BYTES):
            buf[i] = 0
        self._pos += FRAME_SAMPLES
        return True

    async def readinto(self, buf):
        """``wait()`` and ``read(buf)`` in one, for code that does not mind a coroutine per frame."""
        await self.wait()
        self.read(buf)
        return FRAME_BYTES


class SimSpeaker:
    """The board's I2S amplifier as its DMA plays: every sample played goes to a WAV file, so a
    sample's place in the file is the time it sounded (``speaker start <wall time>``: sample 0).

    The DMA holds ``dma_frames`` 20 ms frames (the board's ``i2s_out.dma_frames``, as the ESP32's
    ``ibuf``) and plays them at the sample rate: ``wait()`` returns when a frame's room is free,
    ``put()`` queues a frame behind what is still playing, and ``play_at`` / ``play_pos`` say when
    (ticks) and at which sample the frame just put will sound. A frame put after the DMA ran dry
    follows the silence the DMA played meanwhile (``underruns`` counts those), as on the board."""

    def __init__(self, control, path, dma_frames=2, ticks=compat.ticks_ms):
        self.control = control
        self.path = path
        self.dma_frames = dma_frames
        self.ticks = ticks
        self._f = None
        self._hdr = bytearray(WAV_HEADER_LEN)
        self._zero = bytearray(FRAME_BYTES)
        self._bytes = 0
        self._frames = 0
        self._end = 0  # ticks when what the DMA holds has played
        self.play_at = 0
        self.play_pos = 0
        self.underruns = 0
        self.gap_ms = 0  # how long the DMA was dry before the last underrun's frame
        self.started_at = None

    def start(self):
        if self._f is not None or not self.path:
            return
        self._f = open(self.path, "wb")
        self._f.write(wav_header(0))
        self._bytes = 0
        # The DMA plays from now on (silence until a frame is queued): sample 0 is now.
        self._end = self.ticks()
        self.started_at = wall_time()
        self.control.report("speaker start %.6f %s" % (self.started_at, self.path))

    def stop(self):
        if self._f is not None:
            self.flush()
            self._f.close()
            self._f = None

    def queued_ms(self):
        """Audio the DMA holds that has not sounded yet, in ms."""
        d = tdiff(self._end, self.ticks())
        return d if d > 0 else 0

    def drop(self):
        """Drop what the DMA holds and has not played (the app does it only when that is
        silence, for a tone that must sound now); True when the next frame sounds at once."""
        if self._f is None:
            return False
        q = tdiff(self._end, self.ticks())
        if q > 0:
            self._bytes -= q * (2 * RATE // 1000)
            self._f.seek(WAV_HEADER_LEN + self._bytes)
            self._end = tadd(self._end, -q)
        return True

    def pad(self, ms):
        """Queue ``ms`` of silence behind what the DMA holds (the app moves the speaker's frame
        clock with it, at a talk burst's start). True when queued."""
        f = self._f
        if f is None or ms < 0:
            return False
        self._dry(self.ticks())
        self._zeros(ms)
        self._end = tadd(self._end, ms)
        return True

    def _zeros(self, ms):
        # ``ms`` of silence into the file (rare: at a burst's start, after the DMA ran dry)
        n = ms * (2 * RATE // 1000)
        while n > 0:
            k = n if n < FRAME_BYTES else FRAME_BYTES
            self._f.write(memoryview(self._zero)[:k])
            self._bytes += k
            n -= k

    def _dry(self, now):
        """If the DMA ran dry before ``now``, the silence it played meanwhile; True if it did."""
        gap = tdiff(now, self._end)
        if gap <= 0:
            return False
        self.gap_ms = gap
        self._zeros(gap)
        self._end = now
        return True

    def room(self):
        """True when the DMA has room for a frame (what ``wait()`` waits for)."""
        return tdiff(self._end, self.ticks()) <= (self.dma_frames - 1) * FRAME_MS

    def wait(self):
        """What the playback task awaits before each frame: room for it in the DMA."""
        d = tdiff(self._end, self.ticks()) - (self.dma_frames - 1) * FRAME_MS
        return compat.sleep_ms(d if d > 0 else 0)

    def put(self, buf):
        """Queue the 20 ms frame ``buf`` behind what the DMA holds; True: all of it was taken."""
        f = self._f
        if f is None:
            return True
        if self._dry(self.ticks()):
            self.underruns += 1  # the frame comes late: the DMA played silence meanwhile
        self.play_at = self._end
        self.play_pos = self._bytes // 2
        f.write(buf)
        self._end = tadd(self._end, FRAME_MS)
        self._bytes += len(buf)
        self._frames += 1
        if self._frames % 50 == 0:
            self.flush()
        return True

    async def write(self, buf):
        """``wait()`` and ``put(buf)`` in one."""
        await self.wait()
        self.put(buf)

    def flush(self):
        """Bring the WAV header up to date, so the file reads as a whole WAV now."""
        f = self._f
        if f is None:
            return
        f.seek(0)
        # Once a second while playing: the header is packed into a kept buffer, so that the
        # sim's recording allocates nothing the board's speaker would not.
        _pack_wav_header(self._hdr, self._bytes)
        f.write(self._hdr)
        f.seek(44 + self._bytes)
        if hasattr(f, "flush"):
            f.flush()


class SimBattery:
    poll_s = 1.0  # a test changes the voltage and wants to see it soon

    def __init__(self, mv):
        self.mv = mv

    def read_mv(self):
        return self.mv


class SimWifi:
    """Access points from a scenario: ``{"networks": [{"ssid", "rssi", "psk"?}], "events": [{"at": s,
    "ssid", "rssi" (null: gone)}]}``; ``at`` counts from boot. Commands change it at run time."""

    def __init__(self, control, scenario=None, clock=compat.monotonic):
        self.control = control
        self.clock = clock
        self.t0 = clock()
        self.networks = {}  # ssid -> [rssi, psk or None]
        self.events = []
        self.radio_ok = True
        self.on = False
        self.connected = None
        self.scripted = scenario is not None
        if scenario:
            for n in scenario.get("networks", ()):
                self.networks[n["ssid"]] = [n.get("rssi", -60), n.get("psk")]
            self.events = sorted(scenario.get("events", ()), key=lambda e: e["at"])

    def _advance(self):
        now = self.clock() - self.t0
        while self.events and self.events[0]["at"] <= now:
            e = self.events.pop(0)
            self.set_ap(e["ssid"], e.get("rssi"), e.get("psk"))

    def set_ap(self, ssid, rssi, psk=None):
        if rssi is None:
            self.networks.pop(ssid, None)
            if self.connected == ssid:
                self.connected = None
        else:
            old = self.networks.get(ssid)
            self.networks[ssid] = [rssi, psk if psk is not None else (old[1] if old else None)]

    def default_networks(self, ssids):
        """Without a scenario: every configured access point is in reach."""
        if self.scripted:
            return
        for s in ssids:
            if s not in self.networks:
                self.networks[s] = [-50, None]

    def active(self, on):
        self.on = on
        if not on:
            self.connected = None

    def scan(self):
        self._advance()
        if not (self.on and self.radio_ok):
            return []
        return sorted(((s, self.networks[s][0]) for s in self.networks), key=lambda x: -x[1])

    def connect(self, ssid, psk):
        self._advance()
        if not (self.on and self.radio_ok):
            return False
        n = self.networks.get(ssid)
        if n is None or (n[1] is not None and n[1] != psk):
            return False
        self.connected = ssid
        return True

    def isconnected(self):
        self._advance()
        return self.on and self.radio_ok and self.connected is not None and self.connected in self.networks

    def disconnect(self):
        self.connected = None

    def rssi(self):
        n = self.networks.get(self.connected)
        return None if n is None else n[0]


class SimWatchdog:
    """A hardware watchdog's behaviour: once started it cannot be stopped, and if ``feed`` is not
    called within the timeout the process is killed (SIGKILL, like a reset: no clean-up runs)."""

    def __init__(self, log=None):
        self.timeout_ms = None
        self.held = False
        self._last = None
        self.log = log

    def start(self, timeout_ms):
        self.held = False  # the app feeds it (again)
        if self.timeout_ms is not None:
            return
        self.timeout_ms = timeout_ms
        self.feed()
        import _thread

        _thread.start_new_thread(self._watch, ())

    def feed(self):
        self._last = time.ticks_ms() if compat.IS_MICROPYTHON else int(time.monotonic() * 1000)

    def hold(self, on=True):
        """Fed by the watcher itself while held, as a board's hardware timer feeds it for the REPL."""
        self.held = on

    def overdue_ms(self):
        now = time.ticks_ms() if compat.IS_MICROPYTHON else int(time.monotonic() * 1000)
        if compat.IS_MICROPYTHON:
            return time.ticks_diff(now, self._last)
        return now - self._last

    def _watch(self):
        while True:
            time.sleep(0.1)
            if self.held:
                self.feed()
            late = self.overdue_ms()
            if late > self.timeout_ms:
                sys.stderr.write("opmob watchdog: not fed for %d ms: reset\n" % late)
                # The shell's parent is this process: the one portable way to SIGKILL ourselves on the
                # unix port, which has neither os.kill nor os.getpid.
                os.system("kill -KILL $PPID")
                return


class Faults:
    """Fault injection for tests (sim only): ``crash <task>`` raises in that task's next round."""

    def __init__(self):
        self.pending = set()

    def check(self, task):
        if task in self.pending:
            self.pending.discard(task)
            raise RuntimeError("fault injected into task %s" % task)


# --- the control channel ------------------------------------------------------------------------------


class _Client:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.queue = []
        self.wake = asyncio.Event()
        self.closed = False


class Control:
    """Line protocol on TCP: commands in, reports out (to every client)."""

    def __init__(self, host, port, sim):
        self.host = host
        self.port = port
        self.sim = sim
        self.clients = []
        self.on_command = None  # app hook: fn(words) -> list of reply lines, or None if unknown
        self.hello = None  # app hook: fn() -> lines a new client gets first
        self.dropped_clients = 0

    def report(self, line):
        for c in self.clients:
            if c.closed:
                continue
            if len(c.queue) >= CLIENT_BACKLOG:
                c.closed = True  # a client that does not read must not eat the device's memory
                self.dropped_clients += 1
                c.wake.set()
                continue
            c.queue.append(line)
            c.wake.set()

    async def serve(self):
        srv = await asyncio.start_server(self._client, self.host, self.port)
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            srv.close()

    async def _client(self, reader, writer):
        c = _Client(reader, writer)
        self.clients.append(c)
        for line in self.hello() if self.hello else ():
            c.queue.append(line)
        c.wake.set()
        out = asyncio.create_task(self._writer(c))
        try:
            while not c.closed:
                line = await reader.readline()
                if not line:
                    break
                try:
                    text = line.decode().strip()
                except Exception:
                    text = ""
                if text:
                    asyncio.create_task(self._run(c, text[:MAX_LINE]))
        except Exception:
            pass
        finally:
            c.closed = True
            c.wake.set()
            if c in self.clients:
                self.clients.remove(c)
            try:
                await out
            except Exception:
                pass
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass

    async def _writer(self, c):
        w = c.writer
        while True:
            await c.wake.wait()
            c.wake.clear()
            if c.queue:
                q = c.queue
                c.queue = []
                w.write(("\n".join(q) + "\n").encode())
                await w.drain()
            if c.closed:
                return

    async def _run(self, c, text):
        words = text.split()
        try:
            lines = await self.sim.command(words)
            if lines is None and self.on_command is not None:
                lines = self.on_command(words)
            if lines is None:
                lines = ["error unknown command %r" % words[0]]
        except Exception as e:
            lines = ["error %s: %s" % (words[0], type(e).__name__)]
        if not c.closed:
            c.queue.extend(lines)
            c.wake.set()


class SimHardware(hw.Hardware):
    def __init__(
        self,
        board,
        control_port=None,
        mic=None,
        speaker=None,
        wifi_scenario=None,
        battery_mv=None,
        watchdog_ms=None,
    ):
        hw.Hardware.__init__(self)
        s = board.sim
        self.board = board
        self.control = Control(
            s["control_host"], control_port if control_port is not None else s["control_port"], self
        )
        if board.has("ptt") or board.has("emergency") or board.has("group_select"):
            for name in board.buttons:
                self.buttons[name] = SimPin()
        self.button_edge = asyncio.Event()
        if board.has("leds"):
            self.leds = SimLeds(self.control)
        if board.has("mic"):
            self.mic = SimMic(self.control, mic if mic is not None else s["mic"])
        if board.has("speaker"):
            self.speaker = SimSpeaker(
                self.control,
                speaker if speaker is not None else s["speaker"],
                board.i2s_out["dma_frames"] if board.i2s_out is not None else 2,
            )
        if board.has("battery"):
            self.battery = SimBattery(battery_mv if battery_mv is not None else s["battery_mv"])
        if board.has("wifi"):
            path = wifi_scenario if wifi_scenario is not None else s["wifi_scenario"]
            scenario = None
            if path:
                with open(path) as f:
                    scenario = json.load(f)
            self.wifi = SimWifi(self.control, scenario)
        if board.has("watchdog"):
            self.watchdog = SimWatchdog()
            if watchdog_ms is not None:
                board.watchdog_ms = watchdog_ms
        self.faults = Faults()

    def report(self, line):
        self.control.report(line)

    def serve(self):
        return self.control.serve()

    def close(self):
        if self.speaker is not None:
            self.speaker.stop()

    async def wait_button_edge(self, timeout_s):
        try:
            await asyncio.wait_for(self.button_edge.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        self.button_edge.clear()

    def _set_button(self, name, level):
        pin = self.buttons[name]
        if pin.level != level:
            pin.level = level
            pin.edge_ms = compat.ticks_ms()
        self.button_edge.set()

    async def command(self, words):
        """Hardware commands; None for a command the app handles."""
        cmd = words[0]
        args = words[1:]
        b = self.board
        if cmd in ("press", "release", "click", "long"):
            if len(args) != 1 or args[0] not in self.buttons:
                return ["error %s needs a button: %s" % (cmd, " ".join(sorted(self.buttons)))]
            name = args[0]
            if cmd in ("press", "release"):
                self._set_button(name, cmd == "press")
                # Answer once the firmware has debounced it, so that a script's next command is
                # a new event and not contact bounce.
                await compat.sleep_ms(3 * b.debounce_ms)
            else:
                hold = b.long_press_ms + 3 * b.debounce_ms if cmd == "long" else 4 * b.debounce_ms
                self._set_button(name, True)
                await compat.sleep_ms(hold)
                self._set_button(name, False)
                await compat.sleep_ms(3 * b.debounce_ms)  # the release is debounced too
            return ["ok %s %s" % (cmd, name)]
        if cmd == "bounce":
            # A key pressed or released through a bouncing contact: the level chatters in 2 ms
            # steps for half the debounce time, then settles. The firmware must act once.
            if len(args) != 2 or args[0] not in self.buttons or args[1] not in ("press", "release"):
                return ["error bounce needs a button and press|release"]
            name = args[0]
            level = args[1] == "press"
            for _ in range(max(1, b.debounce_ms // 8)):
                self._set_button(name, level)
                await compat.sleep_ms(2)
                self._set_button(name, not level)
                await compat.sleep_ms(2)
            self._set_button(name, level)
            await compat.sleep_ms(3 * b.debounce_ms)
            return ["ok bounce %s %s" % (name, args[1])]
        if cmd == "mic" and self.mic is not None:
            if args == ["rewind"]:
                self.mic.set_source(self.mic.path)
            elif args == ["silence"]:
                self.mic.set_source("")
            elif len(args) in (1, 2):
                self.mic.set_source(args[0], int(args[1]) if len(args) == 2 else 0)
            else:
                return ["error mic FILE [OFFSET] | rewind | silence"]
            return ["ok mic"]
        if cmd == "speaker" and self.speaker is not None:
            if args != ["flush"]:
                return ["error speaker flush"]
            self.speaker.flush()
            return ["ok speaker %d %.6f" % (self.speaker._bytes // 2, self.speaker.started_at or 0.0)]
        if cmd == "wifi" and self.wifi is not None:
            if args not in (["on"], ["off"]):
                return ["error wifi on|off"]
            self.wifi.radio_ok = args[0] == "on"
            if not self.wifi.radio_ok:
                self.wifi.connected = None
            return ["ok wifi %s" % args[0]]
        if cmd == "ap" and self.wifi is not None:
            if len(args) != 2:
                return ["error ap SSID RSSI|off"]
            self.wifi.set_ap(args[0], None if args[1] == "off" else int(args[1]))
            return ["ok ap %s %s" % (args[0], args[1])]
        if cmd == "battery" and self.battery is not None:
            if len(args) != 1:
                return ["error battery MV"]
            self.battery.mv = int(args[0])
            return ["ok battery %d" % self.battery.mv]
        if cmd == "leds" and self.leds is not None:
            if args not in (["trace", "on"], ["trace", "off"]):
                return ["error leds trace on|off"]
            self.leds.trace = args[1] == "on"
            return ["ok leds trace %s" % args[1]]
        if cmd == "crash":
            if len(args) != 1:
                return ["error crash TASK"]
            self.faults.pending.add(args[0])
            return ["ok crash %s" % args[0]]
        if cmd == "hang":
            # A truly hung device: the event loop never runs again; only the watchdog ends this.
            while True:
                pass
        return None


def make(board, **options):
    return SimHardware(board, **options)
