"""The accessory's protocol core, sans-I/O: the DeviceSession, a PTT client per group listened to,
the talk group and scan list, relay choice and emergency, fed inputs with ``now`` (integer
milliseconds modulo 2^30, opmob/ticks.py) and answering datagrams to send, a deadline and events.

    core = AccessoryCore(identity, secret, rand, groups, floor_priority=None,
                         relays=(), home=None, partners=(), ptt=None)
    # the node interface (the same as the relay's: uasyncio_driver.Driver and opmob.sim drive it)
    core.on_datagram(now, addr, data) -> [(addr, bytes)]
    core.poll(now) -> [(addr, bytes)]          core.next_deadline() -> int | None
    # the driver's inputs, each returning [(addr, bytes)] to send
    core.connect(now, relay, vid_state=None, ctrl_state=None)   # WiFi is up at relay's access point
    core.link_down(now)                          # WiFi lost, or no relay in reach
    core.press_ptt(now, at=None) / core.release_ptt(now) / core.emergency(now)
    core.step_group(now, delta) / core.toggle_scan(now) / core.deregister(now)
    core.choose_relay(now, scan, roaming=False) -> relay | None   core.worth_a_scan(rssi) -> bool
    core.events          # typed events, drained by the driver (below)
    core.play = f(now, buf, n)   # the voice of the call being heard (the driver's playback path)
    core.led() / core.quiet() / core.busy_talking() / core.needs_session(relay) / core.off_air()

Events, tuples the driver drains after every call, **before** sending what the call returned
(a ("persist", ...) must be on flash first):

- ("persist", vid_state, ctrl_state): the session's replay windows, for flash;
- ("session", relay): a new registration begins at ``relay`` (a new SSRC and keys to come);
- ("registered", relay), ("deregistered",), ("reregister", cause), ("error", request, cause);
- ("session_lost", kind, cause): kind "relay_lost", "rejected" or "relay_refused";
- ("lost",): the link is lost (first time since the last registration);
- ("affiliation", group, ok, code);
- ("stunned",), ("revived",), ("killed",) (the driver erases the secret from flash now);
- ("alert", group, identity), ("alert_cancel", group, identity): someone's emergency;
- ("emergency", group, on): ours started or cancelled;
- ("ptt", state): the talk group's PTT client changed state;
- ("floor", kind, args): kind granted, denied, revoked, queued, floor_lost, no_answer (args: a tuple);
- ("access", kind, ms): KPI 1, PTT key edge to granted/denied/queued;
- ("transmit", on): the microphone may send (only in "U: has permission" of the talk group);
- ("tone", name): a tone of tones.py to play;
- ("rx", group, talker, ssrc) / ("rx", None, None, None): the call heard changed, or ended; the
  playback path then ends the previous talker's stream (no concealment past its last frame) and
  plays only ``ssrc``;
- ("group", why, selected, scan_on): why "step" or "scan";
- ("led", name): ``led()`` changed (the protocol's part of the pattern; the driver adds roaming,
  WiFi and battery);
- ("fault", what, exception): handling one of the session's events raised (counted in
  ``event_errors``; the others were handled, the datagrams still go).

Voice is not an event: a frame would be a tuple, a heap object 50 times a second. The session's
voice_sink is bound to the core once; it finds the PTT client of the talker (T103) and hands the
plain RTP packet on to ``core.play`` (the driver's playback path), allocating nothing. Half duplex:
nothing plays while we transmit. Capture goes from the driver straight to
``core.dev.send_voice_into`` for the same reason (docs/accessory-audio.md).
"""

from opmob import sig
from opmob.accessory.link import RelaySelector
from opmob.accessory.ptt import START_STOP, PttClient, PttConfig
from opmob.mcpt import IND_EMERGENCY
from opmob.ticks import due, earliest, tadd, tdiff

LOST_TONE_REPEAT_MS = 60000  # while the link stays lost, the lost-link tone again this often
ROAM_RSSI = -70  # dBm: below it (or away from home) a scan for a better relay may pay

_NOTHING = ()  # what a call with nothing to send answers: no list made
_U_HAS_PERMISSION = "U: has permission"
_U_PENDING_RELEASE = "U: pending Release"
_BUSY = ("U: pending Request", "U: queued", "U: pending Release")


class AccessoryCore:
    def __init__(
        self,
        identity,
        secret,
        rand,
        groups,
        floor_priority=None,
        relays=(),
        home=None,
        partners=(),
        ptt=None,
    ):
        self.identity = identity
        self.secret = secret
        self.rand = rand
        self.groups = groups  # groups.Groups: the selection and the scan list
        self.floor_priority = floor_priority
        self.ptt_cfg = ptt if ptt is not None else PttConfig(priority=floor_priority)
        self.selector = RelaySelector(relays, home, partners)
        self.events = []
        self.play = None
        self.dev = None
        self.relay = None
        self.clients = {}  # group -> PttClient (the talk group's and the scan groups')
        self._early_floor = {}  # group being joined -> its floor message that came before the answer
        self.lost = False  # the link was lost since the last registration
        self.killed = False
        self.event_errors = 0
        self.transmitting = False
        self.rx_group = None
        self.rx_party = None
        self.rx_ssrc = None
        self._led = None
        self._now = 0  # the time of the call under way (the voice sink is given the session's)
        self._joined = []  # the groups the session was asked to join, as last told
        self._press_at = None  # when the PTT (or emergency) press that awaits an answer was made
        self._lost_tone_at = None
        self._voice_sink = self._on_voice_into  # bound once: the session calls it per packet
        self._rx_key = bytearray(4)  # the talker whose PTT client heard voice last ...
        self._rx_client = None  # ... and that client (see _media_client)
        self._rx_key_int = None

    # --- the node interface -----------------------------------------------------------------------

    def on_datagram(self, now, addr, data):
        self._now = now
        dev = self.dev
        if dev is None:
            return ()
        return self._after(now, dev.on_datagram(now, addr, data))

    def poll(self, now):
        self._now = now
        # Only the parts whose deadline is due are polled: the driver wakes the core for T103's
        # look every few seconds of a call, and a poll with nothing due would still make lists
        # (docs/accessory-audio.md, "Allocation per frame").
        out = _NOTHING
        dev = self.dev
        if dev is not None:
            d = dev.next_deadline()
            if d is not None and due(now, d):
                out = dev.poll(now)
        clients = self.clients
        for g in clients:  # polling a client changes no client set (its effects are handled below)
            c = clients[g]
            d = c.next_deadline()
            if d is not None and due(now, d):
                msgs = c.poll(now)
                if msgs:
                    if out is _NOTHING:
                        out = []
                    out.extend(self._floor_out(now, g, msgs))
        t = self._lost_tone_at
        if self.lost and t is not None and due(now, tadd(t, LOST_TONE_REPEAT_MS)):
            self._lost_tone_at = now
            self._tone("lost_link")
        return self._after(now, out)

    def next_deadline(self):
        d = None
        if self.dev is not None:
            d = self.dev.next_deadline()
        clients = self.clients
        for g in clients:  # the keys: .values() would be a heap object per call
            d = earliest(d, clients[g].next_deadline())
        if self.lost and self._lost_tone_at is not None:
            d = earliest(d, tadd(self._lost_tone_at, LOST_TONE_REPEAT_MS))
        return d

    # --- the link --------------------------------------------------------------------------------------

    def needs_session(self, relay):
        """Connecting to ``relay`` starts a new session (else: the same relay's network again)."""
        return self.dev is None or self.relay is None or relay["identity"] != self.relay["identity"]

    def connect(self, now, relay, vid_state=None, ctrl_state=None):
        """WiFi is up at ``relay``'s access point: register there. Back on the same relay's
        network, register again at once rather than wait for a keep-alive to find out whether the
        registration survived (and tell the relay our address, which may have changed). A new
        relay gets a new session (make-before-break handover comes with interconnect: the old
        session is simply left)."""
        self._now = now
        if not self.needs_session(relay):
            return self._after(now, self.dev.start(now))
        from opmob.device import DeviceSession

        for g in self.clients:
            self.clients[g].stop(now)
        self.clients = {}
        self._early_floor = {}
        # The old session's floors are gone with it: the microphone closes, nothing is heard.
        self._set_transmit(False)
        self._select_rx()
        self.relay = relay
        self._joined = [a[0] for a in self.groups.affiliations()]
        self.dev = DeviceSession(
            self.identity,
            self.secret,
            (relay["host"], relay["port"]),
            self.rand,
            groups=self.groups.affiliations(),
            vid_state=vid_state,
            ctrl_state=ctrl_state,
        )
        self.dev.voice_sink = self._voice_sink
        self._rx_client = None
        self.events.append(("session", relay))
        return self._after(now, self.dev.start(now))

    def link_down(self, now):
        """WiFi lost, or no relay's access point in reach: whatever the floor was, it is gone."""
        self._now = now
        self._link_lost(now)
        return self._after(now, [])

    def choose_relay(self, now, scan, roaming=False):
        """The relay to use from a WiFi scan [(ssid, rssi)]: with ``roaming``, relative to the
        current one (hysteresis, dwell); else any in reach. None: none is."""
        return self.selector.choose(now, scan, self.relay if roaming else None)

    def worth_a_scan(self, rssi):
        """While connected: a scan for a better relay may pay (a weak signal, or away from home)."""
        return self.relay is not None and (
            rssi is None or rssi < ROAM_RSSI or self.selector.tier(self.relay) != 0
        )

    def deregister(self, now):
        self._now = now
        if self.dev is None or not self.dev.registered:
            return []
        return self._after(now, self.dev.deregister(now))

    # --- the user's inputs ---------------------------------------------------------------------------

    def off_air(self):
        """Stunned or killed by the home system: PTT and emergency are refused."""
        dev = self.dev
        return self.killed or (dev is not None and dev.state in ("stunned", "killed"))

    def press_ptt(self, now, at=None):
        """PTT pressed; ``at``: the key's edge (the debounce is part of what the user waits for)."""
        self._now = now
        if self.off_air():
            self._tone("deny")
            return self._after(now, [])
        self._press_at = at if at is not None else now
        tc = self.clients.get(self.groups.selected)
        if tc is None:
            self._tone("lost_link" if self.lost or self.dev is None else "deny")
            return self._after(now, [])
        return self._after(now, self._floor_out(now, tc.group, tc.press(now)))

    def release_ptt(self, now):
        self._now = now
        tc = self.clients.get(self.groups.selected)
        if tc is None or self.off_air():
            return self._after(now, [])
        return self._after(now, self._floor_out(now, tc.group, tc.release(now)))

    def emergency(self, now):
        """The emergency long press: start an emergency call in the talk group, or cancel it."""
        self._now = now
        if self.off_air():
            self._tone("deny")
            return self._after(now, [])
        tc = self.clients.get(self.groups.selected)
        if tc is None:
            self._tone("lost_link")
            return self._after(now, [])
        self._press_at = None if tc.emergency_on else now  # the long press is the request
        return self._after(now, self._floor_out(now, tc.group, tc.emergency(now)))

    def busy_talking(self):
        tc = self.clients.get(self.groups.selected)
        return tc is not None and (tc.transmit or tc.state in _BUSY)

    def quiet(self):
        """Nothing is being said or asked for: a good moment for a WiFi scan."""
        return self.rx_group is None and not self.transmitting and not self.busy_talking()

    def step_group(self, now, delta):
        """The next (+1) or previous (-1) talk group; refused (deny tone) while talking."""
        self._now = now
        if self.busy_talking():
            self._tone("deny")
            return self._after(now, [])
        old = self.groups.selected
        new = self.groups.step(delta)
        out = self._reaffiliate(now, old)
        self.events.append(("group", "step", new, self.groups.scan_on))
        return self._after(now, out)

    def toggle_scan(self, now):
        self._now = now
        on = self.groups.set_scan(not self.groups.scan_on)
        out = self._reaffiliate(now, None)
        self.events.append(("group", "scan", self.groups.selected, on))
        return self._after(now, out)

    def _reaffiliate(self, now, old):
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
        for g in list(self.clients):
            if g not in names:
                self.clients.pop(g).stop(now)
        for g in list(self._early_floor):
            if g not in names:
                del self._early_floor[g]
        out = []
        dev = self.dev
        if dev is not None:
            if gone:
                out.extend(dev.deaffiliate(now, gone))
            out.extend(dev.affiliate(now, wanted))
        self._select_rx()
        return out

    # --- what the session and the clients said -------------------------------------------------------

    def _floor_out(self, now, group, msgs):
        out = []
        dev = self.dev
        for m in msgs:
            if dev is not None:
                out.extend(dev.send_floor(now, m, group=group))
        return out

    def _after(self, now, out):
        """Handle the session's events and the clients' effects; returns ``out`` plus what that
        adds. With nothing to handle (a voice packet) ``out`` comes back as it was, and nothing is
        allocated."""
        if out is None:
            out = ()
        dev = self.dev
        if dev is not None and dev.events:
            out = list(out)
            evs = dev.events
            dev.events = []
            for ev in evs:
                if ev[0] == "persist":
                    self.events.append(ev)
            for ev in evs:
                if ev[0] != "persist":
                    try:
                        out.extend(self._on_session_event(now, ev))
                    except Exception as e:
                        # One bad event must not lose the others nor the datagrams: counted, and
                        # the driver logs the exception's type and place (never its message).
                        self.event_errors += 1
                        self.events.append(("fault", "event " + ev[0], e))
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
        if pending or self.events:
            led = self.led()
            if led != self._led:
                self._led = led
                self.events.append(("led", led))
        return out

    def _on_session_event(self, now, ev):
        kind = ev[0]
        out = []
        ev_out = self.events
        if kind == "voice":
            self._on_voice_into(now, ev[1], len(ev[1]))
        elif kind == "floor":
            g = ev[1]
            c = self.clients.get(g)
            if c is not None:
                out.extend(self._floor_out(now, g, c.on_floor(now, ev[2])))
                self._select_rx()
            elif self.groups.rank(g) is not None:
                # A group we are joining: the relay's Floor Taken for a late entrant may overtake
                # the affiliation's answer on the way. Kept (the latest only) for the client
                # the answer makes, so the running call is heard at once.
                self._early_floor[g] = ev[2]
        elif kind == "registered":
            was_lost = self.lost
            self.lost = False
            self._lost_tone_at = None
            ev_out.append(("registered", self.relay))
            if was_lost:
                for g in self.clients:
                    out.extend(self._floor_out(now, g, self.clients[g].link_up(now)))
        elif kind == "affiliation":
            g, code = ev[1], ev[2]
            ok = code in (sig.AFF_OK, sig.AFF_LOCAL_ONLY)
            ev_out.append(("affiliation", g, ok, code))
            if ok and self.groups.rank(g) is not None:
                c = self.clients.get(g)
                if c is None:
                    c = self._client(g)
                out.extend(self._floor_out(now, g, c.start(now)))
                early = self._early_floor.pop(g, None)
                if early is not None:
                    out.extend(self._floor_out(now, g, c.on_floor(now, early)))
                    self._select_rx()
        elif kind in ("relay_lost", "rejected", "relay_refused"):
            ev_out.append(("session_lost", kind, ev[1] if len(ev) > 1 else None))
            self._link_lost(now)
        elif kind == "reregister":
            ev_out.append(("reregister", ev[1]))
        elif kind == "stunned":
            ev_out.append(("stunned",))
            for g in self.clients:
                self.clients[g].stop(now)
        elif kind == "revived":
            ev_out.append(("revived",))
            for g in self.clients:
                out.extend(self._floor_out(now, g, self.clients[g].start(now)))
        elif kind == "killed":
            for g in self.clients:
                self.clients[g].stop(now)
            self.killed = True
            self.secret = None
            ev_out.append(("killed",))
        elif kind == "emergency_alert":
            ev_out.append(("alert", ev[1], ev[2]))
            self._tone("emergency")
        elif kind == "emergency_cancel":
            ev_out.append(("alert_cancel", ev[1], ev[2]))
        elif kind == "error":
            ev_out.append(("error", ev[1], ev[2]))
        elif kind == "deregistered":
            ev_out.append(("deregistered",))
        return out

    def _client(self, group):
        c = PttClient(self.ptt_cfg, group=group, identity=self.identity)
        self.clients[group] = c
        return c

    def _on_effects(self, now, group, c):
        effects = c.effects
        c.effects = []
        talk = group == self.groups.selected
        out = []
        ev_out = self.events
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
                    ev_out.append(("ptt", e[1]))
            elif k == "emergency":
                ev_out.append(("emergency", e[1], True))
                if self.dev is not None:
                    out.extend(self.dev.emergency(now, group=e[1]))
            elif k == "cancel_emergency":
                ev_out.append(("emergency", e[1], False))
                if self.dev is not None:
                    out.extend(self.dev.cancel_emergency(now, group=e[1]))
            elif k in ("granted", "denied", "revoked", "queued", "floor_lost", "no_answer"):
                if talk:
                    ev_out.append(("floor", k, e[1:]))
                    if self._press_at is not None and k in ("granted", "denied", "queued"):
                        # KPI 1, access time: PTT pressed -> the user is told they may talk (or
                        # that they may not); being queued is an answer on the way.
                        ev_out.append(("access", k, tdiff(now, self._press_at)))
                        if k != "queued":
                            self._press_at = None
            # ("led", name): the pattern is computed from the talk group client's ``led`` in led()
        self._select_rx()
        return out

    def _tone(self, name):
        self.events.append(("tone", name))

    def _set_transmit(self, on):
        if on != self.transmitting:
            self.transmitting = on
            self.events.append(("transmit", on))

    # --- reception -----------------------------------------------------------------------------------

    def _on_voice_into(self, now, buf, n):
        """The session's voice_sink: the plain RTP packet ``buf[:n]``, valid during the call."""
        if self.transmitting or n < 12:
            return  # half duplex: nothing plays while we talk
        now = self._now  # the core's int clock (the session may be given another)
        c = self._media_client(buf)
        if c is not None:
            c.on_media(now)
        p = self.play
        if p is not None:
            p(now, buf, n)

    def _media_client(self, buf):
        """The PTT client whose floor names the talker of the RTP packet in ``buf``, or None.
        The last answer is kept with the SSRC's bytes, so a burst's packets after the first make
        no int of the SSRC (a heap object on the ESP32 for half of all SSRCs) nor dict view."""
        c = self._rx_client
        k = self._rx_key
        if (
            c is not None
            and buf[8] == k[0]
            and buf[9] == k[1]
            and buf[10] == k[2]
            and buf[11] == k[3]
            and c.talker_ssrc == self._rx_key_int
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
                self._rx_key_int = ssrc
                return c
        return None

    def _select_rx(self):
        """Play the best call among the groups we listen to: emergency first, then the talk group,
        then the scan list by priority."""
        best = None
        best_key = None
        for g in self.clients:
            c = self.clients[g]
            if c.talker_ssrc is None or c.transmit or c.state in (_U_HAS_PERMISSION, _U_PENDING_RELEASE):
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
                self.rx_group = self.rx_party = self.rx_ssrc = None
                self.events.append(("rx", None, None, None))
            return
        c = self.clients[best]
        if best != self.rx_group or c.talker != self.rx_party:
            self.rx_group = best
            self.rx_party = c.talker
            self.rx_ssrc = c.talker_ssrc
            self.events.append(("rx", best, c.talker, c.talker_ssrc))

    # --- link loss -----------------------------------------------------------------------------------

    def _link_lost(self, now):
        first = not self.lost
        self.lost = True
        for g in self.clients:
            self.clients[g].link_lost(now)
        if first:
            self.events.append(("lost",))
            if self._lost_tone_at is None:
                self._lost_tone_at = now
                tc = self.clients.get(self.groups.selected)
                if tc is None or tc.state == START_STOP:
                    self._tone("lost_link")  # else the talk group's client has said it

    # --- the LEDs ------------------------------------------------------------------------------------

    def led(self):
        """The protocol's part of the LED pattern (hw.PATTERNS names), in order of precedence:
        disabled, denied, emergency (in force, talking or not: the user must see it is still on),
        talking, queued, lost_link, idle (not registered), receiving, registered. The driver puts
        roaming, no WiFi and low battery in their places (app.App.pattern)."""
        if self.off_air():
            return "disabled"
        tc = self.clients.get(self.groups.selected)
        led = tc.led if tc is not None else None
        if led == "denied":
            return led
        if tc is not None and tc.emergency_on:
            return "emergency"
        if led in ("talking", "queued"):
            return led
        if self.lost or led == "lost_link":
            return "lost_link"
        dev = self.dev
        if dev is None or not dev.registered:
            return "idle"
        if self.rx_group is not None:
            return "receiving"
        return "registered"
