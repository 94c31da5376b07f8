"""The accessory application: the board's peripherals, the provisioned configuration, the
registration with a relay, the PTT clients and the voice paths, as asyncio tasks.

    app = App(board, hw, config_path, state_dir)
    asyncio.run(app.run())          # returns only on ``stop()`` (the sim's ``quit``)

Tasks (each runs under ``_guard``: an exception is logged with its type and place, never its
message, and the task is started again after a short, growing pause):

| task | does |
| --- | --- |
| control | the unix-sim board's control channel (sim only) |
| leds | shows the pattern of the current state (``pattern()``) |
| buttons | debounce and long press; PTT, emergency, group up/down, scan |
| link | WiFi: scan, choose the relay (link.RelaySelector), connect, watch; back-off and the lost-link tone |
| net | UDP to the relay: relay_uasyncio.Driver around the DeviceSession, the PTT clients' timers |
| capture | while the floor is ours: microphone -> DVI4 -> RTP -> SRTP -> relay, 20 ms frames |
| playback | always: jitter buffer + tones -> speaker, 20 ms frames |
| battery | reads the cell every 30 s; low battery pattern |
| watchdog | feeds the hardware watchdog while the event loop and playback make progress |

The voice goes around the driver's list of (addr, bytes) in both directions, so that a frame makes
no objects of its own (docs/accessory-audio.md, "Allocation per frame"): the capture task protects
the packet where CapturePath built it and hands a kept memoryview of it to the socket
(``_send_frame``); received voice is decrypted by the session into its own buffer and given to
``_voice_sink``, which gives it to the playback path, instead of a ("voice", bytes) event.

A device that is not provisioned (no configuration, or one that does not validate) or that was
killed runs leds, buttons, playback, watchdog and the control channel only: its LED pattern says
so, the console says why, PTT gives the deny tone, and it never reboots in a loop.

The DeviceSession's ("persist", vid_state, ctrl_state) is written to flash before anything the
same call returned is sent (``_after``).
"""

import asyncio
import gc
import json
import os
import sys

from opmob import compat, sig
from opmob.accessory import hw as hwmod
from opmob.accessory.audio import PACKET_LEN
from opmob.accessory.jitter import tdiff
from opmob.accessory.link import Backoff, RelaySelector
from opmob.txn import earlier

IS_MP = compat.IS_MICROPYTHON
UNPROVISIONED = "unprovisioned"
KILLED = "killed"
RUNNING = "running"

BUTTON_SAMPLE_MS = 5
BUTTON_IDLE_S = 1.0  # with no edge, look at the buttons this often anyway
LINK_CHECK_S = 1.0
ROAM_SCAN_S = 30.0  # while connected, look for a better relay at most this often ...
ROAM_RSSI = -70  # ... and only below this signal (dBm), or while away from home
WIFI_CONNECT_S = 10.0
LOST_TONE_REPEAT_S = 60.0
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


class _Core:
    """What relay_uasyncio.Driver drives: the DeviceSession plus the PTT clients' timers, with
    the app's event handling after every call."""

    def __init__(self, app):
        self.app = app

    def on_datagram(self, now, addr, data):
        app = self.app
        return app._after(now, app.dev.on_datagram(now, addr, data))

    def poll(self, now):
        app = self.app
        out = app.dev.poll(now)
        for g in list(app.clients):
            c = app.clients.get(g)
            if c is not None:
                out.extend(app._floor_out(now, g, c.poll(now)))
        return app._after(now, out)

    def next_deadline(self):
        app = self.app
        d = app.dev.next_deadline()
        clients = app.clients
        for g in clients:  # the keys: .values() would be a heap object per call
            d = earlier(d, clients[g].next_deadline())
        return d


class App:
    def __init__(self, board, hw, config_path, state_dir, log=None, rand=None, heap_code=None):
        self.board = board
        self.hw = hw
        self.config_path = config_path
        self.state_dir = state_dir
        self._print = log or print
        self.rand = rand or os.urandom
        self.clock = compat.monotonic
        self.ticks_ms = ticks_ms  # the audio paths' integer-millisecond clock
        self.heap_code = heap_code
        self.mode = UNPROVISIONED
        self.reason = None
        self.cfg = None
        self.state = None
        self.groups = None
        self.dev = None
        self.drv = None
        self.sock = None
        self.relay = None
        self.clients = {}  # group -> PttClient (the talk group's and the scan groups')
        self.pb = None
        self.cap = None
        self.transmitting = False
        self._tx_event = asyncio.Event()
        self._ui_event = asyncio.Event()
        self._stop = asyncio.Event()
        self.wifi_ok = False
        self.lost = False  # WiFi or relay lost since the last registration
        self._lost_tone_at = None
        self.roaming = False
        self.battery_pct = None
        self.battery_low = False
        self.rx_group = None
        self._rx_party = None
        self.task_errors = {}
        self._err_window = None
        self._err_logged = 0
        self._beat = {}
        self.persist_errors = 0
        self._tasks = []
        self._buttons = {}
        self._press_at = None  # when the PTT (or emergency) press that awaits an answer was made
        self._joined = []  # the groups the session was asked to join, as last told
        self._voice_dest = None  # the relay's address as the socket takes it, made once a session
        self._voice_view = None  # memoryview of the capture buffer, as long as the SRTP packet
        self._voice_len = 0
        self._voice_sink = self._on_voice_into  # bound once: the session calls it per packet
        self._rx_ssrc = bytearray(4)  # the talker whose PTT client heard voice last ...
        self._rx_client = None  # ... and that client (see _media_client)
        self._rx_ssrc_int = None
        self.exit_code = 0

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
        for name in self.board.buttons:
            lp = self.board.long_press_ms if name in ("emergency", "group_up", "group_down") else None
            self._buttons[name] = hwmod.Button(name, self.board.debounce_ms, lp)
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
        if self.dev is not None and self.drv is not None and self.dev.registered:
            self._act(self.dev.deregister)
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
            t0 = self.clock()
            try:
                await fn()
                return
            except Exception as e:
                if self.clock() - t0 > 30:
                    delay = 0.1  # it ran well for a while: this is a new problem
                self.task_errors[name] += 1
                self._task_error("task " + name, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, TASK_RESTART_MAX_S)

    def _task_error(self, name, e, delay):
        now = self.clock()
        if self._err_window is None or now - self._err_window > 60:
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

    # --- talking to the DeviceSession ----------------------------------------------------------------

    def _act(self, fn):
        """Run ``fn(now)`` on the DeviceSession (or a PTT client), handle its events and send what
        it returns (through the driver when there is one; without a link it goes nowhere)."""
        if self.drv is not None:
            self.drv.act(lambda now: self._after(now, fn(now)))
        else:
            now = self.clock()
            self._after(now, fn(now))

    def _floor_out(self, now, group, msgs):
        out = []
        dev = self.dev
        for m in msgs:
            if dev is not None:
                out.extend(dev.send_floor(now, m, group=group))
        return out

    def _after(self, now, out):
        """Handle what the session and the clients said; returns ``out`` plus what that adds.
        A ("persist", ...) is written here, before the driver sends anything. With nothing to
        handle (a voice packet) ``out`` comes back as it was, and nothing is allocated."""
        if out is None:
            out = ()
        dev = self.dev
        if dev is not None and dev.events:
            out = list(out)
            evs = dev.events
            dev.events = []
            for ev in evs:
                if ev[0] == "persist":
                    if not self.state.save_windows(ev[1], ev[2]):
                        self.persist_errors += 1
            for ev in evs:
                if ev[0] != "persist":
                    try:
                        out.extend(self._on_event(now, ev))
                    except Exception as e:
                        self._task_error("event " + ev[0], e, None)
        clients = self.clients
        pending = False
        for g in clients:  # a dict's keys are walked without a heap iterator; .values() makes one
            if clients[g].effects:
                pending = True
                break
        if pending:
            out = list(out)
            for g in list(clients):
                c = clients.get(g)
                if c is not None and c.effects:
                    out.extend(self._on_effects(now, g, c))
        return out

    def _on_event(self, now, ev):
        kind = ev[0]
        out = []
        if kind == "voice":
            self._on_voice_into(now, ev[1], len(ev[1]))
        elif kind == "floor":
            g = ev[1]
            c = self.clients.get(g)
            if c is not None:
                out.extend(self._floor_out(now, g, c.on_floor(now, ev[2])))
                self._select_rx()
        elif kind == "registered":
            # New SSRC and SRTP keys: a new RTP stream.
            self.cap.new_stream(self._first_seq())
            was_lost = self.lost
            self.lost = False
            self.roaming = False
            self._lost_tone_at = None
            self.report("state registered")
            self.log(
                "opmob accessory: registered at %s (%s:%d)"
                % (self.relay["identity"], self.relay["host"], self.relay["port"])
            )
            if was_lost:
                for g in self.clients:
                    out.extend(self._floor_out(now, g, self.clients[g].link_up(now)))
        elif kind == "affiliation":
            g, code = ev[1], ev[2]
            ok = code in (sig.AFF_OK, sig.AFF_LOCAL_ONLY)
            self.report("affiliation %s %s" % (g, "ok" if ok else "refused %d" % code))
            if ok and self.groups.rank(g) is not None:
                c = self.clients.get(g)
                if c is None:
                    c = self._client(g)
                out.extend(self._floor_out(now, g, c.start(now)))
            elif not ok:
                self.log("opmob accessory: group %s refused by the relay (code %d)" % (g, code))
        elif kind == "deaffiliated":
            pass
        elif kind in ("relay_lost", "rejected", "relay_refused"):
            if kind == "relay_lost":
                self.log("opmob accessory: the relay does not answer; registering again")
            elif kind == "rejected":
                self.log("opmob accessory: registration refused (cause %d); trying again later" % ev[1])
            else:
                self.log("opmob accessory: a relay that is not our home's challenged us; not trusted")
            self._link_lost(now)
        elif kind == "reregister":
            self.report("state reregister %d" % ev[1])
        elif kind == "stunned":
            self.log("opmob accessory: STUNNED by the home system: off the air until revived")
            self.report("state stunned")
            for g in self.clients:
                self.clients[g].stop(now)
        elif kind == "revived":
            self.log("opmob accessory: revived by the home system")
            self.report("state registered")
            for g in self.clients:
                out.extend(self._floor_out(now, g, self.clients[g].start(now)))
        elif kind == "killed":
            self._killed(now)
        elif kind == "emergency_alert":
            self.report("alert %s %s" % (ev[1], ev[2]))
            self.log("opmob accessory: EMERGENCY raised by %s in %s" % (ev[2], ev[1]))
            self._tone("emergency")
        elif kind == "emergency_cancel":
            self.report("alert_cancel %s %s" % (ev[1], ev[2]))
        elif kind == "error":
            self.report("error_event %d %d" % (ev[1], ev[2]))
        elif kind == "deregistered":
            self.report("state deregistered")
        self._ui()
        return out

    def _client(self, group):
        from opmob.accessory.ptt import PttClient, PttConfig

        prio = self.cfg.floor_priority
        c = PttClient(PttConfig(priority=prio), group=group, identity=self.cfg.identity)
        self.clients[group] = c
        return c

    def _on_effects(self, now, group, c):
        effects = c.effects
        c.effects = []
        talk = self.groups is not None and group == self.groups.selected
        out = []
        for e in effects:
            k = e[0]
            if k == "transmit":
                if talk:
                    self._set_transmit(e[1])
            elif k == "tone":
                if talk:
                    self._tone(e[1])
            elif k == "state":
                if talk:
                    self.report("ptt %s" % e[1])
            elif k == "emergency":
                self.report("emergency on %s" % e[1])
                self.log("opmob accessory: EMERGENCY call in %s" % e[1])
                if self.dev is not None:
                    out.extend(self.dev.emergency(now, group=e[1]))
            elif k == "cancel_emergency":
                self.report("emergency off %s" % e[1])
                if self.dev is not None:
                    out.extend(self.dev.cancel_emergency(now, group=e[1]))
            elif k in ("granted", "denied", "revoked", "queued", "floor_lost", "no_answer"):
                if talk:
                    self.report("floor %s%s" % (k, "".join(" %s" % (x,) for x in e[1:])))
                    if self._press_at is not None and k in ("granted", "denied", "queued"):
                        # KPI 1, access time: PTT pressed -> the user is told they may talk (or
                        # that they may not); being queued is an answer on the way.
                        self.report("access %s %.1f" % (k, (now - self._press_at) * 1000))
                        if k != "queued":
                            self._press_at = None
            # ("led", name): the pattern is computed from every client's ``led`` in pattern()
        self._select_rx()
        self._ui()
        return out

    def _tone(self, name):
        if self.pb is not None:
            self.pb.tones.start(name)
        self.report("tone %s" % name)

    def _set_transmit(self, on):
        if on == self.transmitting:
            return
        self.transmitting = on
        if on:
            self._tx_event.set()
        else:
            self._tx_event.clear()
        self.report("transmit %s" % ("on" if on else "off"))

    # --- reception ------------------------------------------------------------------------------------

    def _on_voice_into(self, now, buf, n):
        """The session's voice_sink: the plain RTP packet ``buf[:n]``, valid during the call."""
        if self.transmitting or n < 12:
            return  # half duplex: nothing plays while we talk
        c = self._media_client(buf)
        if c is not None:
            c.on_media(now)
        self.pb.on_voice(self.ticks_ms(), buf, n)

    def _media_client(self, buf):
        """The PTT client whose floor names the talker of the RTP packet in ``buf``, or None.
        The last answer is kept with the SSRC's bytes, so a burst's packets after the first make
        no int of the SSRC (a heap object on the ESP32 for half of all SSRCs) nor dict view."""
        c = self._rx_client
        k = self._rx_ssrc
        if (
            c is not None
            and buf[8] == k[0]
            and buf[9] == k[1]
            and buf[10] == k[2]
            and buf[11] == k[3]
            and c.talker_ssrc == self._rx_ssrc_int
            and self.clients.get(c.group) is c
        ):
            return c
        ssrc = (buf[8] << 24) | (buf[9] << 16) | (buf[10] << 8) | buf[11]
        self._rx_client = None
        for g in self.clients:
            c = self.clients[g]
            if c.talker_ssrc == ssrc:
                k[0] = buf[8]
                k[1] = buf[9]
                k[2] = buf[10]
                k[3] = buf[11]
                self._rx_client = c
                self._rx_ssrc_int = ssrc
                return c
        return None

    def _select_rx(self):
        """Play the best call among the groups we listen to: emergency first, then the talk group,
        then the scan list by priority."""
        best = None
        best_key = None
        from opmob.mcpt import IND_EMERGENCY

        for g in self.clients:
            c = self.clients[g]
            if c.talker_ssrc is None or c.transmit or c.state in ("U: has permission", "U: pending Release"):
                continue  # our own burst (a talker from before it is stale until the floor says)
            rank = self.groups.rank(g)
            if rank is None:
                continue
            emerg = c.group_indicator is not None and c.group_indicator & IND_EMERGENCY
            key = (0 if emerg else 1, rank)
            if best_key is None or key < best_key:
                best, best_key = g, key
        if best is None:
            if self.rx_group is not None:
                self.rx_group = None
                self._rx_party = None
                # The talker stopped: no concealment past the last frame (jitter.py, "End").
                self.pb.end()
                self.pb.select(None)
                self.report("rx none")
            return
        c = self.clients[best]
        if best != self.rx_group or c.talker != self._rx_party:
            if self.rx_group is not None:
                self.pb.end()  # the talker heard so far has stopped, or another call wins
            self.rx_group = best
            self._rx_party = c.talker
            self.pb.select(c.talker_ssrc)
            self.report("rx %s %s" % (best, c.talker))

    # --- link loss, kill --------------------------------------------------------------------------------

    def _link_lost(self, now):
        first = not self.lost
        self.lost = True
        for g in self.clients:
            c = self.clients[g]
            c.link_lost(now)
            if g != self.groups.selected:
                c.effects = [e for e in c.effects if e[0] != "tone"]
        if first:
            self.report("state lost_link")
            if self._lost_tone_at is None:
                self._lost_tone_at = now
                self._tone("lost_link")
        self._ui()

    def _killed(self, now):
        from opmob.accessory import config as cfgmod

        self.log("opmob accessory: KILLED by the home system: erasing the secret; it never registers again")
        for g in self.clients:
            self.clients[g].stop(now)
        try:
            cfgmod.erase_secret(self.config_path, self.cfg)
        except Exception as e:
            self.log("opmob accessory: could not rewrite the configuration (%s)" % type(e).__name__)
        self.cfg.secret = None
        self.mode = KILLED
        self.report("state killed")
        self._ui()

    # --- LEDs ------------------------------------------------------------------------------------------

    def pattern(self, now):
        if self.mode == UNPROVISIONED:
            return "unprovisioned"
        if self.mode == KILLED:
            return "disabled"
        dev = self.dev
        if dev is not None and dev.state in ("stunned", "killed"):
            return "disabled"
        tc = self.clients.get(self.groups.selected)
        led = tc.led if tc is not None else None
        if led == "denied":
            return led
        # An emergency in force shows as such for as long as it lasts, talking or not: the user
        # must see at a glance that it is still on (and cancel it when it is over).
        if tc is not None and tc.emergency_on:
            return "emergency"
        if led in ("talking", "queued"):
            return led
        if self.roaming:
            return "roaming"
        if not self.wifi_ok or self.lost or led == "lost_link":
            return "lost_link"
        if dev is None or not dev.registered:
            return "idle"
        # Receiving follows the floor (Floor Taken to Floor Idle) of the groups we listen to.
        if self.rx_group is not None:
            return "receiving"
        if self.battery_low:
            return "low_battery"
        return "registered"

    def _ui(self):
        self._ui_event.set()

    async def _leds_task(self):
        leds = self.hw.leds
        while True:
            self._fault("leds")
            now = self.clock()
            nxt = None
            if leds is not None:
                leds.set_pattern(self.pattern(now), now)
                nxt = leds.update(now)
            wait = 1.0 if nxt is None else max(0.005, min(1.0, nxt - now))
            self._ui_event.clear()
            try:
                await asyncio.wait_for(self._ui_event.wait(), wait)
            except asyncio.TimeoutError:
                pass

    # --- buttons ----------------------------------------------------------------------------------------

    async def _buttons_task(self):
        pins = self.hw.buttons
        btns = self._buttons
        for b in btns.values():
            b.reset()
        while True:
            self._fault("buttons")
            now = self.clock()
            busy = False
            for name in btns:
                b = btns[name]
                ev = b.sample(now, pins[name].pressed())
                if ev is not None:
                    self._on_button(now, name, ev)
                if b.busy:
                    busy = True
            if busy:
                await compat.sleep_ms(BUTTON_SAMPLE_MS)
            else:
                await self.hw.wait_button_edge(BUTTON_IDLE_S)

    def _on_button(self, now, name, ev):
        self.report("button %s %s" % (name, ev))
        if self.mode != RUNNING or (self.dev is not None and self.dev.state in ("stunned", "killed")):
            if ev == hwmod.PRESS and name in ("ptt", "emergency"):
                self._tone("deny")
                if self.mode == UNPROVISIONED:
                    self.log("opmob accessory: not provisioned: %s" % self.reason)
            return
        tc = self.clients.get(self.groups.selected)
        if name == "ptt":
            if ev == hwmod.PRESS:
                # From the key's edge: the debounce is part of what the user waits for.
                self._press_at = self._buttons[name].edge_at
                if tc is None:
                    self._tone("lost_link" if self.lost or not self.wifi_ok else "deny")
                    return
                self._act(lambda now: self._floor_out(now, tc.group, tc.press(now)))
            elif ev in (hwmod.SHORT, hwmod.RELEASE) and tc is not None:
                self._act(lambda now: self._floor_out(now, tc.group, tc.release(now)))
        elif name == "emergency":
            if ev == hwmod.LONG:
                if tc is None:
                    self._tone("lost_link")
                    return
                self._press_at = None if tc.emergency_on else now  # the long press is the request
                self._act(lambda now: self._floor_out(now, tc.group, tc.emergency(now)))
        elif name in ("group_up", "group_down"):
            if ev == hwmod.SHORT:
                self._change_group(now, 1 if name == "group_up" else -1)
            elif ev == hwmod.LONG:
                self._toggle_scan(now)
        self._ui()

    def _busy_talking(self):
        tc = self.clients.get(self.groups.selected)
        return tc is not None and (
            tc.transmit or tc.state in ("U: pending Request", "U: queued", "U: pending Release")
        )

    def _change_group(self, now, delta):
        if self._busy_talking():
            self._tone("deny")
            return
        old = self.groups.selected
        new = self.groups.step(delta)
        self._reaffiliate(old)
        self.report("group %s scan %s" % (new, "on" if self.groups.scan_on else "off"))
        self.log("opmob accessory: talk group %s (%s)" % (self.groups.label, new))

    def _toggle_scan(self, now):
        on = self.groups.set_scan(not self.groups.scan_on)
        self._reaffiliate(None)
        self.report("group %s scan %s" % (self.groups.selected, "on" if on else "off"))
        self.log("opmob accessory: scan %s" % ("on" if on else "off"))

    def _reaffiliate(self, old):
        """Bring the session's affiliations and the PTT clients in line with the selection:
        leave what is no longer listened to (refused groups too: the session would otherwise ask
        for them at every registration), join or re-flag the rest."""
        wanted = self.groups.affiliations()
        names = [a[0] for a in wanted]
        prev = list(self._joined)
        if old is not None and old not in prev:
            prev.append(old)
        gone = [g for g in prev if g not in names]
        self._joined = names
        now = self.clock()
        for g in list(self.clients):
            if g not in names:
                self.clients.pop(g).stop(now)
        if self.dev is None:
            return
        dev = self.dev

        def apply(now):
            out = []
            if gone:
                out.extend(dev.deaffiliate(now, gone))
            out.extend(dev.affiliate(now, wanted))
            return out

        self._act(apply)
        self._select_rx()

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
        dev = self.dev
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
        while True:
            self._fault("playback")
            pb.next_frame(self.ticks_ms(), out)
            # As capture: the speaker's wait() awaitable, not a coroutine per frame.
            await spk.wait()
            while not spk.put(out):
                await spk.wait()
            beat["playback"] = self.ticks_ms()  # an int: a float time is a heap object per frame

    # --- link -------------------------------------------------------------------------------------------

    async def _link_task(self):
        wifi = self.hw.wifi
        cfg = self.cfg
        sel = RelaySelector(cfg.relays, cfg.home, cfg.partners)
        if hasattr(wifi, "default_networks"):
            wifi.default_networks([r["ssid"] for r in cfg.relays])
        wifi.active(True)
        backoff = Backoff(1.0, 30.0)
        next_scan = self.clock() + ROAM_SCAN_S
        while True:
            self._fault("link")
            now = self.clock()
            if (
                self.lost
                and self._lost_tone_at is not None
                and now - self._lost_tone_at >= LOST_TONE_REPEAT_S
            ):
                self._lost_tone_at = now
                self._tone("lost_link")
            if wifi.isconnected():
                if not self.wifi_ok:
                    self.wifi_ok = True
                    backoff.reset()
                    self.report("wifi up")
                    self._ui()
                if self.dev is None and self.relay is not None:
                    self._start_session(self.relay)
                elif self.relay is not None and now >= next_scan and self._quiet():
                    # Look for a better relay now and then: a WiFi scan blocks the radio (and on
                    # an ESP32 the whole loop) for a second or two, so only when nothing is
                    # being said, and only when it may pay: a weak signal, or away from home.
                    next_scan = now + ROAM_SCAN_S
                    rssi = wifi.rssi()
                    if rssi is None or rssi < ROAM_RSSI or sel.tier(self.relay) != 0:
                        choice = sel.choose(now, wifi.scan(), self.relay)
                        if choice is not None and choice["identity"] != self.relay["identity"]:
                            await self._connect(wifi, choice, roaming=True)
                await asyncio.sleep(LINK_CHECK_S)
                continue
            # No WiFi: say so, look for a relay's access point, connect, or wait and try again.
            if self.wifi_ok:
                self.wifi_ok = False
                self.report("wifi down")
                self.log("opmob accessory: WiFi lost; looking for a relay")
                self._act(lambda now: self._link_lost_out(now))
            choice = sel.choose(now, wifi.scan(), None)
            if choice is not None and await self._connect(wifi, choice, roaming=False):
                continue
            if self._lost_tone_at is None:
                self._act(lambda now: self._link_lost_out(now))
            delay = backoff.next()
            self.report("wifi retry %g" % delay)
            await asyncio.sleep(delay)

    def _quiet(self):
        """Nothing is being said or asked for: a good moment for a WiFi scan."""
        return self.rx_group is None and not self.transmitting and not self._busy_talking()

    def _link_lost_out(self, now):
        self._link_lost(now)
        return []

    async def _connect(self, wifi, relay, roaming):
        if roaming:
            self.roaming = True
            self._ui()
            self.report("roaming %s" % relay["identity"])
        ok = wifi.connect(relay["ssid"], relay.get("psk"))
        end = self.clock() + WIFI_CONNECT_S
        while ok and not wifi.isconnected():
            if self.clock() > end:
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
        if self.relay is None or relay["identity"] != self.relay["identity"] or self.dev is None:
            self._start_session(relay)
        else:
            # Back on the same relay's network: register again at once rather than wait for a
            # keep-alive to find out whether the registration survived (and tell the relay our
            # address, which may have changed).
            self._act(self.dev.start)
        self._ui()
        return True

    def _start_session(self, relay):
        """A new registration at ``relay`` (make-before-break handover comes with interconnect:
        here the old session is simply left)."""
        from opmob.device import DeviceSession
        from opmob.relay_uasyncio import Driver, open_udp

        now = self.clock()
        if self.drv is not None:
            self.drv.stop()
            self.drv = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for g in list(self.clients):
            self.clients[g].stop(now)
        self.clients = {}
        self.relay = relay
        self._joined = [a[0] for a in self.groups.affiliations()]
        vid, ctrl = self.state.windows()
        cfg = self.cfg
        self.dev = DeviceSession(
            cfg.identity,
            cfg.secret,
            (relay["host"], relay["port"]),
            self.rand,
            groups=self.groups.affiliations(),
            vid_state=vid,
            ctrl_state=ctrl,
        )
        family_host = "::" if ":" in relay["host"] else "0.0.0.0"
        self.sock = open_udp(family_host, 0)
        self.drv = Driver(_Core(self), self.sock, log=self.log)
        self._wire_voice()
        self._spawn("net", self.drv.run)
        self.report("state registering %s" % relay["identity"])
        self._act(self.dev.start)

    def _wire_voice(self):
        """Voice in and out of the session without per-frame objects (see the module docstring)."""
        self.dev.voice_sink = self._voice_sink
        self._voice_dest = None  # resolved at the first frame sent
        self._rx_client = None

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
        ms = self.board.watchdog_ms
        wd.start(ms)
        period = ms / 4000
        while True:
            beat = self._beat.get("playback")
            # Playback runs every 20 ms for as long as the device lives: if it has not run for
            # half the watchdog's time, the device is hung in a way the loop alone does not show.
            if self.hw.speaker is None or beat is None or tdiff(self.ticks_ms(), beat) < ms // 2:
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
            if self.dev is not None:
                lines.append("state %s" % ("lost_link" if self.lost else self.dev.state))
                for g in self.dev.affiliated:
                    lines.append("affiliation %s ok" % g)
            tc = self.clients.get(self.groups.selected)
            if tc is not None:
                lines.append("ptt %s" % tc.state)
            if self.rx_group is not None:
                lines.append("rx %s %s" % (self.rx_group, self._rx_party))
            if self.transmitting:
                lines.append("transmit on")
        return lines

    def command(self, words):
        cmd = words[0]
        if cmd == "status":
            return ["status " + json.dumps(self.status())]
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
        if self.dev is not None:
            st["state"] = self.dev.state
            st["relay"] = self.relay["identity"]
            st["affiliated"] = self.dev.affiliated
            st["device"] = dict(self.dev.counters)
        if self.clients:
            st["ptt"] = dict((g, self.clients[g].state) for g in self.clients)
        st["rx"] = self.rx_group
        if self.pb is not None:
            st["playback"] = dict(self.pb.counters)
            st["jitter"] = dict(self.pb.jitter.counters)
            st["jitter"]["target_ms"] = self.pb.jitter.target_ms
        if self.cap is not None:
            st["capture_frames"] = self.cap.frames
        if self.drv is not None:
            st["driver"] = dict(self.drv.counters)
        return st
