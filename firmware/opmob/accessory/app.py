"""The accessory application: the board's peripherals, the provisioned configuration and the
voice paths as asyncio tasks, driving the accessory's protocol core (core.AccessoryCore: the
registration with a relay, the PTT clients, the groups, relay choice, emergency; sans-I/O).

    app = App(board, hw, config_path, state_dir)
    asyncio.run(app.run())          # returns only on ``stop()`` (the sim's ``quit``)

Tasks (each runs under ``_guard``: an exception is logged with its type and place, never its
message, and the task is started again after a short, growing pause):

| task | does |
| --- | --- |
| control | the unix-sim board's control channel (sim only) |
| leds | shows the pattern of the current state (``pattern()``) |
| buttons | debounce and long press; PTT, emergency, group up/down, scan |
| link | WiFi: scan, connect to the relay the core chooses, watch; back-off; the core's timers while no driver runs |
| net | UDP to the relay: uasyncio_driver.Driver around the core (``_Drive``): datagrams and its deadline |
| capture | while the floor is ours: microphone -> DVI4 -> RTP -> SRTP -> relay, 20 ms frames |
| playback | always: jitter buffer + tones -> speaker, 20 ms frames |
| battery | reads the cell every 30 s; low battery pattern |
| watchdog | feeds the hardware watchdog while the event loop and playback make progress |

The voice goes around the driver's list of (addr, bytes) in both directions, so that a frame makes
no objects of its own (docs/accessory-audio.md, "Allocation per frame"): the capture task protects
the packet where CapturePath built it and hands a kept memoryview of it to the socket
(``_send_frame``, through ``core.dev.send_voice_into``); received voice is decrypted by the session
into its own buffer and given to the core's voice sink, which hands the call heard to ``_play``,
the playback path, instead of a ("voice", bytes) event.

The tasks know nothing of the protocol: buttons become the core's inputs (``press_ptt``,
``release_ptt``, ``emergency``, ``step_group``, ``toggle_scan``), WiFi becomes ``connect`` and
``link_down``, and the core's events (``_on_event``) become control-channel reports, tones, the
microphone's on/off, what the playback path plays and when a talker's stream ends. Time in the
core is integer milliseconds modulo 2^30 (opmob/ticks.py); the hardware's own timing (buttons,
LEDs, asyncio sleeps) stays in its units.

A device that is not provisioned (no configuration, or one that does not validate) or that was
killed runs leds, buttons, playback, watchdog and the control channel only: its LED pattern says
so, the console says why, PTT gives the deny tone, and it never reboots in a loop.

The core's ("persist", vid_state, ctrl_state) is written to flash before anything the same call
returned is sent (``_after``).
"""

import asyncio
import gc
import json
import os
import sys

from opmob import compat
from opmob.accessory import hw as hwmod
from opmob.accessory.audio import PACKET_LEN
from opmob.accessory.core import AccessoryCore
from opmob.accessory.link import Backoff
from opmob.ticks import due, now_ms, tadd, tdiff

IS_MP = compat.IS_MICROPYTHON
UNPROVISIONED = "unprovisioned"
KILLED = "killed"
RUNNING = "running"

BUTTON_SAMPLE_MS = 5
LATE_ENTRY_WINDOW_MS = 500  # Floor Taken this soon after our affiliation: we joined a running call
BUTTON_IDLE_S = 1.0  # with no edge, look at the buttons this often anyway
LINK_CHECK_S = 1.0
ROAM_SCAN_MS = 30000  # while connected, look for a better relay at most this often (core.ROAM_RSSI)
WIFI_CONNECT_MS = 10000
TASK_GOOD_MS = 30000  # a task that ran this long before failing has a new problem: short pause again
ERR_WINDOW_MS = 60000
BATTERY_EVERY_S = 30.0
TASK_RESTART_MAX_S = 10.0
ERR_LOG_MAX = 10  # task error lines per minute; the rest are counted
LOW_BATTERY_HYSTERESIS = 5  # percent


ticks_ms = compat.ticks_ms  # integer milliseconds for the audio paths (no heap object per call)


def where(e):
    """The place an exception was raised (file, line, function): never its message, which can
    quote packet bytes or keys."""
    try:
        if IS_MP:
            import io

            buf = io.StringIO()
            sys.print_exception(e, buf)
            lines = [x.strip() for x in buf.getvalue().split("\n") if x.strip().startswith("File ")]
            return lines[-1] if lines else "?"
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None:
            return "?"
        co = tb.tb_frame.f_code
        return 'File "%s", line %d, in %s' % (co.co_filename, tb.tb_lineno, co.co_name)
    except Exception:
        return "?"


class _Drive:
    """What uasyncio_driver.Driver drives: the accessory core, with the app's handling of the
    core's events (a ("persist", ...) on flash first) before the driver sends what it returned."""

    def __init__(self, app):
        self.app = app

    def on_datagram(self, now, addr, data):
        app = self.app
        return app._after(app.core.on_datagram(now, addr, data))

    def poll(self, now):
        app = self.app
        return app._after(app.core.poll(now))

    def next_deadline(self):
        return self.app.core.next_deadline()


class App:
    def __init__(self, board, hw, config_path, state_dir, log=None, rand=None, heap_code=None):
        self.board = board
        self.hw = hw
        self.config_path = config_path
        self.state_dir = state_dir
        self._print = log or print
        self.rand = rand or os.urandom
        self.ticks_ms = ticks_ms  # the audio paths' integer-millisecond clock
        self.heap_code = heap_code
        self.mode = UNPROVISIONED
        self.reason = None
        self.cfg = None
        self.state = None
        self.groups = None
        self.core = None  # core.AccessoryCore: the protocol, sans-I/O (None until provisioned)
        self.drv = None
        self.sock = None
        self.pb = None
        self.cap = None
        self.transmitting = False
        self._tx_event = asyncio.Event()
        self._ui_event = asyncio.Event()
        self._stop = asyncio.Event()
        self.wifi_ok = False
        self.roaming = False
        self.battery_pct = None
        self.battery_low = False
        self.rx_group = None  # the call the playback path plays (the core's last "rx" event)
        self.task_errors = {}
        self._err_window = None
        self._err_logged = 0
        self._beat = {}
        self.persist_errors = 0
        self._tasks = []
        self._buttons = {}
        self._voice_dest = None  # the relay's address as the socket takes it, made once a session
        self._voice_view = None  # memoryview of the capture buffer, as long as the SRTP packet
        self._voice_len = 0
        self.exit_code = 0
        # Measured at the speaker (docs/accessory-audio.md, "Measured where it happens"): the
        # PTT key's edge until the talk-permit tone sounds, and the moment a call could first be
        # heard (an affiliation) until its first voice sounds. Ticks (int ms), None when idle.
        self._key_edge = None
        self._permit_wait = False
        self._entry_at = None
        self._entry_rx = False
        self._entry_heard = None
        self.voice_trace = False  # "play <seq> <sample>" where the playout moves (control channel)
        self._trace_off = None
        self._loud_until = None  # ticks until which the DMA holds voice or a tone (not silence)
        self._tone_out = None  # a frame buffer for a tone that sounds at once

    # --- console ------------------------------------------------------------------------------------

    def log(self, line):
        self._print(line)
        self.hw.report("log " + line)

    def report(self, line):
        self.hw.report(line)

    # --- boot ---------------------------------------------------------------------------------------

    def boot(self):
        """Load the configuration and the persistent state; decide the mode. Never raises for a
        bad configuration: that is the unprovisioned mode."""
        from opmob.accessory import audio
        from opmob.accessory import config as cfgmod

        self.pb = audio.PlaybackPath()
        try:
            cfg = cfgmod.load(self.config_path)
        except cfgmod.ConfigError as e:
            self.mode = UNPROVISIONED
            self.reason = str(e)
            self.log("opmob accessory: NOT PROVISIONED: %s" % e)
            self.log(
                "opmob accessory: it stays off the air until provisioned (opmob provision; docs/accessory.md)"
            )
            return
        self.cfg = cfg
        if cfg.killed:
            self.mode = KILLED
            self.reason = "killed by its home system"
            self.log(
                "opmob accessory: %s was killed by its home system: it never registers again" % cfg.identity
            )
            return
        from opmob.accessory.groups import Groups, State

        self.state = State(self.state_dir, self.log)
        self.groups = Groups(cfg.talk_groups, cfg.scan_groups, self.state)
        self.cap = audio.CapturePath(ssrc=0, seq=self._first_seq(), ts=self._rand_int(4) & 0x3FFFFFFF)
        self.core = AccessoryCore(
            cfg.identity,
            cfg.secret,
            self.rand,
            self.groups,
            floor_priority=cfg.floor_priority,
            relays=cfg.relays,
            home=cfg.home,
            partners=cfg.partners,
        )
        self.core.play = self._play  # bound once: the core calls it per voice packet
        self.mode = RUNNING
        self.log(
            "opmob accessory: %s on board %s, talk group %s, scan %s"
            % (cfg.identity, self.board.name, self.groups.selected, "on" if self.groups.scan_on else "off")
        )

    def _first_seq(self):
        # Random (RFC 3550), but below 2^15, as WebRTC does: the relay's SRTP context takes ROC 0
        # at the first packet it gets, so a stream that wrapped before any packet reached it (the
        # first ones lost) would fail authentication to the end. Below 2^15 that takes more than
        # 32,768 lost frames (11 minutes).
        return self._rand_int(2) & 0x7FFF

    def _rand_int(self, n):
        v = 0
        for b in self.rand(n):
            v = (v << 8) | b
        return v

    # --- running ------------------------------------------------------------------------------------

    async def run(self):
        self.boot()
        hw = self.hw
        if hasattr(hw, "control"):
            hw.control.hello = self._hello
            hw.control.on_command = self.command
        self._make_buttons()
        spawn = self._spawn
        if hw.serve() is not None:
            spawn("control", hw.serve)
        spawn("leds", self._leds_task)
        spawn("buttons", self._buttons_task)
        spawn("playback", self._playback_task)
        if hw.battery is not None:
            spawn("battery", self._battery_task)
        if self.mode == RUNNING:
            spawn("capture", self._capture_task)
            spawn("link", self._link_task)
        if hw.watchdog is not None and self.board.watchdog_ms:
            spawn("watchdog", self._watchdog_task)
        self._ui()
        try:
            await self._stop.wait()
        finally:
            await self._shutdown()
        return self.exit_code

    def stop(self, code=0):
        self.exit_code = code
        self._stop.set()

    async def _shutdown(self):
        core = self.core
        if core is not None and core.dev is not None and self.drv is not None and core.dev.registered:
            self._act(core.deregister)
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        await asyncio.sleep(0)
        if self.drv is not None:
            self.drv.stop()
        if self.sock is not None:
            self.sock.close()
        if self.state is not None:
            self.state.close()
        self.hw.close()

    def _spawn(self, name, fn):
        self.task_errors[name] = 0
        # Finished tasks (a replaced session's driver) are let go: a device that roams for days
        # must not keep one per move.
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._guard(name, fn)))

    async def _guard(self, name, fn):
        delay = 0.1
        while True:
            t0 = now_ms()
            try:
                await fn()
                return
            except Exception as e:
                if tdiff(now_ms(), t0) > TASK_GOOD_MS:
                    delay = 0.1  # it ran well for a while: this is a new problem
                self.task_errors[name] += 1
                self._task_error("task " + name, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, TASK_RESTART_MAX_S)

    def _task_error(self, name, e, delay):
        now = now_ms()
        if self._err_window is None or tdiff(now, self._err_window) > ERR_WINDOW_MS:
            self._err_window = now
            self._err_logged = 0
        self._err_logged += 1
        if self._err_logged <= ERR_LOG_MAX:
            then = "dropped" if delay is None else "restarting it in %g s" % delay
            self.log("opmob accessory: %s failed: %s at %s; %s" % (name, type(e).__name__, where(e), then))

    def _fault(self, task):
        f = self.hw.faults
        if f is not None:
            f.check(task)

    # --- driving the core ----------------------------------------------------------------------------

    def _act(self, fn):
        """Run ``fn(now)`` on the core (``now`` in its int milliseconds), handle its events and send
        what it returns (through the driver when there is one; without a link it goes nowhere)."""
        if self.drv is not None:
            self.drv.act(lambda now: self._after(fn(now)))
        else:
            self._after(fn(now_ms()))

    def _after(self, out):
        """Handle what the core said (``core.events``); returns ``out``, to be sent after. A
        ("persist", ...) is written here, before the driver sends anything. With no event (a voice
        packet) nothing is allocated."""
        core = self.core
        if core is None or not core.events:
            return out
        evs = core.events
        core.events = []
        for ev in evs:
            if ev[0] == "persist":
                if not self.state.save_windows(ev[1], ev[2]):
                    self.persist_errors += 1
        for ev in evs:
            if ev[0] != "persist":
                try:
                    self._on_event(ev)
                except Exception as e:
                    self._task_error("event " + ev[0], e, None)
        self._ui()
        return out

    def _on_event(self, ev):
        """One event of the core: the console, the control channel, the audio paths."""
        kind = ev[0]
        if kind == "tone":
            self._tone(ev[1])
        elif kind == "transmit":
            self._set_transmit(ev[1])
        elif kind == "ptt":
            self.report("ptt %s" % ev[1])
        elif kind == "floor":
            self.report("floor %s%s" % (ev[1], "".join(" %s" % (x,) for x in ev[2])))
        elif kind == "access":
            self.report("access %s %.1f" % (ev[1], ev[2]))
        elif kind == "rx":
            self._note_rx(ev[1])
            pb = self.pb
            if self.rx_group is not None:
                # The talker heard so far has stopped, or another call wins: no concealment
                # past its last frame (jitter.py, "End of a stream").
                pb.end()
            self.rx_group = ev[1]
            if ev[1] is None:
                pb.select(None)
                self.report("rx none")
            else:
                pb.select(ev[3])
                self.report("rx %s %s" % (ev[1], ev[2]))
        elif kind == "affiliation":
            g, ok, code = ev[1], ev[2], ev[3]
            self.report("affiliation %s %s" % (g, "ok" if ok else "refused %d" % code))
            if ok and not self._entry_rx:
                # From here the relay sends us the group's call: a late entry counts from now.
                self._entry_at = self.ticks_ms()
                self._entry_heard = None
            if not ok:
                self.log("opmob accessory: group %s refused by the relay (code %d)" % (g, code))
        elif kind == "registered":
            # New SSRC and SRTP keys: a new RTP stream.
            self.cap.new_stream(self._first_seq())
            self.roaming = False
            relay = ev[1]
            self.report("state registered")
            self.log(
                "opmob accessory: registered at %s (%s:%d)"
                % (relay["identity"], relay["host"], relay["port"])
            )
        elif kind == "session":
            self.report("state registering %s" % ev[1]["identity"])
        elif kind == "session_lost":
            why = ev[1]
            if why == "relay_lost":
                self.log("opmob accessory: the relay does not answer; registering again")
            elif why == "rejected":
                self.log("opmob accessory: registration refused (cause %d); trying again later" % ev[2])
            else:
                self.log("opmob accessory: a relay that is not our home's challenged us; not trusted")
        elif kind == "lost":
            self.report("state lost_link")
        elif kind == "reregister":
            self.report("state reregister %d" % ev[1])
        elif kind == "stunned":
            self.log("opmob accessory: STUNNED by the home system: off the air until revived")
            self.report("state stunned")
        elif kind == "revived":
            self.log("opmob accessory: revived by the home system")
            self.report("state registered")
        elif kind == "killed":
            self._killed()
        elif kind == "alert":
            self.report("alert %s %s" % (ev[1], ev[2]))
            self.log("opmob accessory: EMERGENCY raised by %s in %s" % (ev[2], ev[1]))
        elif kind == "alert_cancel":
            self.report("alert_cancel %s %s" % (ev[1], ev[2]))
        elif kind == "emergency":
            if ev[2]:
                self.report("emergency on %s" % ev[1])
                self.log("opmob accessory: EMERGENCY call in %s" % ev[1])
            else:
                self.report("emergency off %s" % ev[1])
        elif kind == "error":
            self.report("error_event %d %d" % (ev[1], ev[2]))
        elif kind == "deregistered":
            self.report("state deregistered")
        elif kind == "group":
            why, g, on = ev[1], ev[2], ev[3]
            self.report("group %s scan %s" % (g, "on" if on else "off"))
            if why == "step":
                self.log("opmob accessory: talk group %s (%s)" % (self.groups.label, g))
            else:
                self.log("opmob accessory: scan %s" % ("on" if on else "off"))
        elif kind == "fault":
            self._task_error(ev[1], ev[2], None)
        # ("led", name): pattern() reads core.led() whenever the LED task looks

    def _tone(self, name):
        if self.pb is not None:
            self.pb.tones.start(name)
        if name == "talk_permit" and self._key_edge is not None:
            self._permit_wait = True
        self._sound_now()
        self.report("tone %s" % name)

    def _sound_now(self):
        """A tone begins: it sounds now rather than behind the silence the speaker's DMA holds
        (up to dma_frames x 20 ms). Only silence is dropped; after voice or another tone the new
        tone follows what is queued, as the voice ducked under it does."""
        spk = self.hw.speaker
        pb = self.pb
        if spk is None or pb is None or not hasattr(spk, "drop"):
            return
        now = self.ticks_ms()
        if self._loud_until is not None and tdiff(self._loud_until, now) > 0:
            return
        if not spk.drop():
            return
        out = self._tone_out
        if out is None:
            out = self._tone_out = bytearray(320)
        kind = pb.next_frame(now, out)
        if spk.put(out):
            self._heard(spk, kind)

    def _note_rx(self, group):
        if group is None:
            self._entry_at = None
            self._entry_rx = False
        elif self._entry_at is not None and tdiff(self.ticks_ms(), self._entry_at) <= LATE_ENTRY_WINDOW_MS:
            # Floor Taken right after our affiliation: the call was running when we came in.
            self._entry_rx = True
            self._late_entry()
        else:
            self._entry_at = None

    def _late_entry(self):
        if self._entry_rx and self._entry_heard is not None:
            self.report("kpi late_entry %d" % tdiff(self._entry_heard, self._entry_at))
            self._entry_rx = False
            self._entry_at = None
            self._entry_heard = None

    def _heard(self, spk, kind):
        """After a frame went to the speaker: the measures that end when it sounds. Integer
        compares only, nothing allocated unless there is something to report."""
        if kind != "silence" or self.pb.tones.active:
            at = getattr(spk, "play_at", None)
            self._loud_until = tadd(at if at is not None else self.ticks_ms(), 20)
        if self._permit_wait and self.pb.tones.name == "talk_permit":
            self._permit_wait = False
            at = getattr(spk, "play_at", None)
            self.report("kpi access %d" % tdiff(at if at is not None else self.ticks_ms(), self._key_edge))
            self._key_edge = None
        if kind != "audio":
            return
        if self._entry_at is not None and self._entry_heard is None:
            # The first voice since the affiliation sounds now (what played before it left
            # with the group, ended by the floor).
            at = getattr(spk, "play_at", None)
            self._entry_heard = at if at is not None else self.ticks_ms()
            self._late_entry()
        if self.voice_trace:
            # Only where the playout moves (a burst's first frame, a stall, a frame dropped):
            # the frames between sound at the same offset, and a line per frame would itself
            # load the sim's event loop.
            seq = self.pb.jitter.played_seq
            pos = getattr(spk, "play_pos", -1)
            off = pos - seq * 160
            if off != self._trace_off:
                self._trace_off = off
                self.report("play %d %d" % (seq, pos))

    def _set_transmit(self, on):
        if on == self.transmitting:
            return
        self.transmitting = on
        if on:
            self._tx_event.set()
        else:
            self._tx_event.clear()
        self.report("transmit %s" % ("on" if on else "off"))

    def _play(self, now, buf, n):
        """The core's ``play``: the plain RTP packet ``buf[:n]`` of the call heard, valid during
        the call, to the playback path on the audio clock."""
        jb = self.pb.jitter
        idle = jb.state == "idle"
        t = self.ticks_ms()
        self.pb.on_voice(t, buf, n)
        if idle and jb.state == "buffering":
            self._align(t)

    def _align(self, t):
        """A talk burst starts from silence at ``t``: move the speaker's 20 ms frame clock so
        that a frame is taken from the jitter buffer just when its jitter allowance has passed
        (else it waits up to a frame more for the next tick, for the whole burst). Done with the
        silence the DMA holds: dropped, and the right length of silence queued instead."""
        spk = self.hw.speaker
        if spk is None or not hasattr(spk, "pad"):
            return
        if self._loud_until is not None and tdiff(self._loud_until, t) > 0:
            return  # a tone or voice still sounds: it is not cut
        allowance = self.pb.jitter.target_ms - 20
        if spk.drop():
            # The playback task takes the next frame when one frame's room is left: that is
            # allowance (modulo a frame) from now, and it sounds a DMA frame later.
            spk.pad(20 + allowance % 20)

    # --- kill ----------------------------------------------------------------------------------------

    def _killed(self):
        from opmob.accessory import config as cfgmod

        self.log("opmob accessory: KILLED by the home system: erasing the secret; it never registers again")
        try:
            cfgmod.erase_secret(self.config_path, self.cfg)
        except Exception as e:
            self.log("opmob accessory: could not rewrite the configuration (%s)" % type(e).__name__)
        self.cfg.secret = None
        self.mode = KILLED
        self.report("state killed")
        self._ui()

    # --- LEDs ------------------------------------------------------------------------------------------

    def pattern(self, now=None):
        """The LED pattern: the core's (the protocol's state), with roaming, no WiFi and a low
        battery in their places of the precedence (core.AccessoryCore.led)."""
        if self.mode == UNPROVISIONED:
            return "unprovisioned"
        if self.mode == KILLED:
            return "disabled"
        led = self.core.led()
        if led in ("disabled", "denied", "emergency", "talking", "queued"):
            return led
        if self.roaming:
            return "roaming"
        if not self.wifi_ok:
            return "lost_link"
        if led == "registered" and self.battery_low:
            return "low_battery"
        return led

    def _ui(self):
        self._ui_event.set()

    async def _leds_task(self):
        leds = self.hw.leds
        while True:
            self._fault("leds")
            now = now_ms()
            nxt = None
            if leds is not None:
                leds.set_pattern(self.pattern(now), now)
                nxt = leds.update(now)
            wait = 1.0 if nxt is None else max(0.005, min(1.0, tdiff(nxt, now) / 1000))
            self._ui_event.clear()
            try:
                await asyncio.wait_for(self._ui_event.wait(), wait)
            except asyncio.TimeoutError:
                pass

    # --- buttons ----------------------------------------------------------------------------------------

    def _make_buttons(self):
        for name in self.board.buttons:
            lp = self.board.long_press_ms if name in ("emergency", "group_up", "group_down") else None
            # PTT and emergency act on the key's first edge (the debounce no longer adds to the
            # access time); the group keys wait for a level that holds.
            first = name in ("ptt", "emergency")
            self._buttons[name] = hwmod.Button(name, self.board.debounce_ms, lp, first)

    def _sample_buttons(self, now):
        """Every key's level at ``now`` through its Button; True while one needs sampling soon."""
        pins = self.hw.buttons
        btns = self._buttons
        busy = False
        for name in btns:
            b = btns[name]
            ev = b.sample(now, pins[name].pressed())
            if ev is not None:
                self._on_button(now, name, ev)
            if b.busy:
                busy = True
        return busy

    async def _buttons_task(self):
        for b in self._buttons.values():
            b.reset()
        while True:
            self._fault("buttons")
            if self._sample_buttons(now_ms()):
                await compat.sleep_ms(BUTTON_SAMPLE_MS)
            else:
                await self.hw.wait_button_edge(BUTTON_IDLE_S)

    def _on_button(self, now, name, ev):
        """A debounced button event at ``now`` (int ms, the core's clock) to the core's inputs."""
        self.report("button %s %s" % (name, ev))
        core = self.core
        if self.mode != RUNNING or core is None or core.off_air():
            if ev == hwmod.PRESS and name in ("ptt", "emergency"):
                self._tone("deny")
                if self.mode == UNPROVISIONED:
                    self.log("opmob accessory: not provisioned: %s" % self.reason)
            return
        if name == "ptt":
            if ev == hwmod.PRESS:
                # From the key's edge (the pin's own record of it where the board keeps one).
                edge = getattr(self.hw.buttons[name], "edge_ms", None)
                if edge is None:
                    edge = self._buttons[name].edge_at
                self._key_edge = edge
                self._permit_wait = False
                self._act(lambda t: core.press_ptt(t, edge))
            elif ev in (hwmod.SHORT, hwmod.RELEASE):
                self._act(core.release_ptt)
        elif name == "emergency":
            if ev == hwmod.LONG:
                self._act(core.emergency)
        elif name in ("group_up", "group_down"):
            if ev == hwmod.SHORT:
                delta = 1 if name == "group_up" else -1
                self._act(lambda t: core.step_group(t, delta))
            elif ev == hwmod.LONG:
                self._act(core.toggle_scan)
        self._ui()

    # --- audio -------------------------------------------------------------------------------------------

    async def _capture_task(self):
        mic = self.hw.mic
        if mic is None:
            return
        buf = bytearray(320)
        cap = self.cap
        while True:
            await self._tx_event.wait()  # once a burst: a coroutine here costs nothing per frame
            self._fault("capture")
            mic.start()
            cap.start_burst(self.ticks_ms())
            # The burst's first sequence number: with the mic's start time, when each frame's
            # sound entered the microphone (mouth-to-ear is measured from there).
            self.report("burst %d" % cap.seq)
            try:
                while self.transmitting:
                    # Per frame only the mic's wait() awaitable, which allocates nothing: an
                    # awaited coroutine would be a new generator object every 20 ms.
                    await mic.wait()
                    if not self.transmitting:
                        break
                    if mic.read(buf):
                        cap.frame(buf)
                        self._send_frame()
            finally:
                mic.stop()

    def _send_frame(self):
        """Protect the frame CapturePath just built where it lies and send it to the relay: no
        list, tuple or bytes per frame (what Driver.act would make). True when it went out."""
        dev = self.core.dev
        sock = self.sock
        if dev is None or sock is None:
            return False
        counters = self.drv.counters if self.drv is not None else None
        dest = self._voice_dest
        if dest is None:
            # Resolved once per session (a numeric host, normally); retried while it fails.
            try:
                dest = self._voice_dest = compat.addr_for_send(dev.relay_addr)
            except Exception:
                if counters is not None:
                    counters["send_errors"] += 1
                return False
        pkt = self.cap.buf
        try:
            # ``now`` is None: sending voice moves none of the session's timers, and a float
            # time would be a heap object per frame on MicroPython.
            m = dev.send_voice_into(None, pkt, PACKET_LEN)
        except Exception as e:
            self._task_error("capture send", e, None)
            return False
        if m == 0:
            return False  # not registered
        v = self._voice_view
        if m != self._voice_len:
            v = self._voice_view = memoryview(pkt)[:m]
            self._voice_len = m
        try:
            sock.sendto(v, dest)
        except OSError:
            # As the driver does: UDP promises nothing, and a lost frame is concealed.
            if counters is not None:
                counters["send_errors"] += 1
            return False
        if counters is not None:
            counters["datagrams_out"] += 1
            counters["bytes_out"] += m
        return True

    async def _playback_task(self):
        spk = self.hw.speaker
        pb = self.pb
        if spk is None:
            return
        out = bytearray(320)
        spk.start()
        beat = self._beat
        dry = getattr(spk, "underruns", None)  # boards whose speaker tells when its DMA ran dry
        room = getattr(spk, "room", None)
        while True:
            self._fault("playback")
            # Room in the DMA first, then the frame: decided as late as the DMA allows, so a
            # frame waits in the speaker path only behind what the DMA holds. As capture: the
            # speaker's wait() awaitable, not a coroutine per frame.
            await spk.wait()
            while room is not None and not room():
                await spk.wait()  # the frame clock was moved meanwhile (_align)
            kind = pb.next_frame(self.ticks_ms(), out)
            while not spk.put(out):
                await spk.wait()
            if dry is not None and spk.underruns != dry:
                # This task woke too late and the DMA ran dry: what the jitter buffer holds is
                # now that much late; as many frames go between words (jitter.skip_late).
                dry = spk.underruns
                pb.jitter.skip_late(spk.gap_ms)
            self._heard(spk, kind)
            beat["playback"] = self.ticks_ms()  # an int: a float time is a heap object per frame

    # --- link -------------------------------------------------------------------------------------------

    async def _link_task(self):
        wifi = self.hw.wifi
        core = self.core
        if hasattr(wifi, "default_networks"):
            wifi.default_networks([r["ssid"] for r in self.cfg.relays])
        wifi.active(True)
        backoff = Backoff(1.0, 30.0)
        next_scan = tadd(now_ms(), ROAM_SCAN_MS)
        while True:
            self._fault("link")
            # The core's own timers (the lost-link tone's repeat) when no driver runs them.
            if self.drv is None:
                self._act(core.poll)
            now = now_ms()
            if wifi.isconnected():
                if not self.wifi_ok:
                    self.wifi_ok = True
                    backoff.reset()
                    self.report("wifi up")
                    self._ui()
                if core.dev is None and core.relay is not None:
                    self._start_session(core.relay)
                elif core.relay is not None and due(now, next_scan) and core.quiet():
                    # Look for a better relay now and then: a WiFi scan blocks the radio (and on
                    # an ESP32 the whole loop) for a second or two, so only when nothing is
                    # being said, and only when it may pay: a weak signal, or away from home.
                    next_scan = tadd(now, ROAM_SCAN_MS)
                    if core.worth_a_scan(wifi.rssi()):
                        choice = core.choose_relay(now, wifi.scan(), roaming=True)
                        if choice is not None and choice["identity"] != core.relay["identity"]:
                            await self._connect(wifi, choice, roaming=True)
                await asyncio.sleep(LINK_CHECK_S)
                continue
            # No WiFi: say so, look for a relay's access point, connect, or wait and try again.
            if self.wifi_ok:
                self.wifi_ok = False
                self.report("wifi down")
                self.log("opmob accessory: WiFi lost; looking for a relay")
                self._act(core.link_down)
            choice = core.choose_relay(now, wifi.scan())
            if choice is not None and await self._connect(wifi, choice, roaming=False):
                continue
            if not core.lost:
                self._act(core.link_down)
            delay = backoff.next()
            self.report("wifi retry %g" % delay)
            await asyncio.sleep(delay)

    async def _connect(self, wifi, relay, roaming):
        if roaming:
            self.roaming = True
            self._ui()
            self.report("roaming %s" % relay["identity"])
        ok = wifi.connect(relay["ssid"], relay.get("psk"))
        end = tadd(now_ms(), WIFI_CONNECT_MS)
        while ok and not wifi.isconnected():
            if due(now_ms(), end):
                wifi.disconnect()
                ok = False
            else:
                await asyncio.sleep(0.1)
        if not ok:
            if roaming:
                self.roaming = False
                self._ui()
            return False
        self.wifi_ok = True
        self.report("wifi up %s" % relay["ssid"])
        if self.core.needs_session(relay):
            self._start_session(relay)
        else:
            self._act(lambda now: self.core.connect(now, relay))
        self._ui()
        return True

    def _start_session(self, relay):
        """A new registration at ``relay``: a socket and a driver of its own, then the core's."""
        from opmob.uasyncio_driver import Driver, open_udp

        if self.drv is not None:
            self.drv.stop()
            self.drv = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        family_host = "::" if ":" in relay["host"] else "0.0.0.0"
        self.sock = open_udp(family_host, 0)
        self.drv = Driver(_Drive(self), self.sock, log=self.log)
        self._voice_dest = None  # resolved at the first frame sent
        self._spawn("net", self.drv.run)
        vid, ctrl = self.state.windows()
        self._act(lambda now: self.core.connect(now, relay, vid, ctrl))

    # --- battery, watchdog --------------------------------------------------------------------------------

    async def _battery_task(self):
        bat = self.hw.battery
        spec = self.board.battery
        while True:
            self._fault("battery")
            mv = bat.read_mv()
            pct = hwmod.battery_percent(mv, spec["empty_mv"], spec["full_mv"])
            low = spec["low_percent"]
            was = self.battery_low
            if pct <= low:
                self.battery_low = True
            elif pct >= low + LOW_BATTERY_HYSTERESIS:
                self.battery_low = False
            if pct != self.battery_pct or was != self.battery_low:
                self.battery_pct = pct
                self.report("battery %d %d%s" % (mv, pct, " low" if self.battery_low else ""))
                if self.battery_low and not was:
                    self.log("opmob accessory: battery low (%d %%)" % pct)
                self._ui()
            await asyncio.sleep(getattr(bat, "poll_s", BATTERY_EVERY_S))

    async def _watchdog_task(self):
        wd = self.hw.watchdog
        wd_ms = self.board.watchdog_ms
        wd.start(wd_ms)
        period = wd_ms / 4000
        while True:
            beat = self._beat.get("playback")
            # Playback runs every 20 ms for as long as the device lives: if it has not run for
            # half the watchdog's time, the device is hung in a way the loop alone does not show.
            if self.hw.speaker is None or beat is None or tdiff(self.ticks_ms(), beat) < wd_ms // 2:
                wd.feed()
            await asyncio.sleep(period)

    # --- control channel (sim) ---------------------------------------------------------------------------

    def _hello(self):
        ident = self.cfg.identity if self.cfg is not None else "-"
        lines = ["hello %s %s %s" % (self.board.name, ident, self.mode)]
        if self.hw.leds is not None:
            lines.append("led %s" % self.hw.leds.pattern)
        if self.mode != RUNNING:
            lines.append("state %s" % self.mode)
        else:
            lines.append("group %s scan %s" % (self.groups.selected, "on" if self.groups.scan_on else "off"))
            core = self.core
            dev = core.dev
            if dev is not None:
                lines.append("state %s" % ("lost_link" if core.lost else dev.state))
                for g in dev.affiliated:
                    lines.append("affiliation %s ok" % g)
            tc = core.clients.get(self.groups.selected)
            if tc is not None:
                lines.append("ptt %s" % tc.state)
            if self.rx_group is not None:
                lines.append("rx %s %s" % (self.rx_group, core.rx_party))
            if self.transmitting:
                lines.append("transmit on")
        return lines

    def command(self, words):
        cmd = words[0]
        if cmd == "status":
            return ["status " + json.dumps(self.status())]
        if cmd == "voice" and len(words) == 3 and words[1] == "trace" and words[2] in ("on", "off"):
            self.voice_trace = words[2] == "on"
            self._trace_off = None
            return ["ok voice trace %s" % words[2]]
        if cmd == "quit":
            self.stop(0)
            return ["ok quit"]
        return None

    def heap(self):
        gc.collect()
        if IS_MP:
            alloc, free = gc.mem_alloc(), gc.mem_free()
        else:
            alloc, free = 0, 0
        d = {"alloc": alloc, "free": free}
        if self.heap_code is not None:
            d["code"] = self.heap_code
            d["app"] = alloc - self.heap_code
        return d

    def status(self):
        st = {
            "board": self.board.name,
            "mode": self.mode,
            "led": self.hw.leds.pattern if self.hw.leds is not None else None,
            "heap": self.heap(),
            "tasks": self.task_errors,
            "transmitting": self.transmitting,
            "battery": self.battery_pct,
            "wifi": self.wifi_ok,
            "persist_errors": self.persist_errors,
        }
        if self.mode == UNPROVISIONED:
            st["reason"] = self.reason
        if self.cfg is not None:
            st["identity"] = self.cfg.identity
        if self.groups is not None:
            st["group"] = self.groups.selected
            st["scan"] = self.groups.scan_on
            st["listening"] = self.groups.listening()
        core = self.core
        if core is not None and core.dev is not None:
            st["state"] = core.dev.state
            st["relay"] = core.relay["identity"]
            st["affiliated"] = core.dev.affiliated
            st["device"] = dict(core.dev.counters)
        if core is not None and core.clients:
            st["ptt"] = dict((g, core.clients[g].state) for g in core.clients)
        st["rx"] = self.rx_group
        if self.pb is not None:
            st["playback"] = dict(self.pb.counters)
            st["jitter"] = dict(self.pb.jitter.counters)
            st["jitter"]["target_ms"] = self.pb.jitter.target_ms
        spk = self.hw.speaker
        if spk is not None and hasattr(spk, "underruns"):
            # the DMA ran dry that often: the playback task woke too late (a busy host)
            st["speaker"] = {"underruns": spk.underruns, "dma_frames": spk.dma_frames}
        if self.cap is not None:
            st["capture_frames"] = self.cap.frames
        if self.drv is not None:
            st["driver"] = dict(self.drv.counters)
        return st
