"""The PTT client: floor participant of 3GPP TS 24.380 clause 6.2 (on-network), sans-I/O.

    ptt = PttClient(PttConfig(), group="fire-1@no", identity="ann@no")
    ptt.start(now)                                 # the group call is up: Start-stop -> no permission
    ptt.press(now, priority=None, imminent_peril=False) -> [FloorMsg]     # PTT pressed
    ptt.release(now) -> [FloorMsg]                                        # PTT released
    ptt.emergency(now, latch=None) -> [FloorMsg]   # the long press: start an emergency call, or cancel it
    ptt.on_floor(now, msg) -> [FloorMsg]           # a DeviceSession ("floor", group, msg) for this group
    ptt.on_media(now)                              # voice heard in this group
    ptt.query_queue(now) -> [FloorMsg]             # ask for our place in the queue
    ptt.link_lost(now) / ptt.link_up(now) -> [FloorMsg]   # the session lost / regained its relay
    ptt.poll(now) -> [FloorMsg]    ptt.next_deadline() -> int | None
    ptt.stop(now)                                  # the group call is gone: back to Start-stop
    ptt.state, ptt.transmit, ptt.led, ptt.effects, ptt.emergency_on, ptt.queue_position, ptt.counters

Every entry point first fires the timers due at ``now`` (integer milliseconds modulo 2^30, from
opmob.ticks; deadlines are such ints, compared wrap-safely), then returns the floor
messages to send, which the app passes to ``DeviceSession.send_floor(now, msg, group=ptt.group)``;
the client never sends anything itself, and Floor Acks are the session's business. What the user
should see and hear is appended to ``ptt.effects`` (the app drains it):

- ("state", name): the new TS 24.380 state;
- ("transmit", bool): whether the microphone may send. True only in "U: has permission"; False
  at once on release, Floor Revoke, or any loss of the floor;
- ("tone", name): a tone of tones.py to start (talk_permit, deny, queued, emergency, lost_link,
  revoked, emergency_cancel);
- ("led", name): the LED pattern (hw.PATTERNS names): talking, denied (for ``denied_show``
  seconds), lost_link, emergency, queued, receiving, else registered, in that order of precedence;
- ("granted",), ("denied", cause), ("revoked", cause), ("queued", position), ("floor_lost",),
  ("no_answer", "request" | "release" | "queue"): for the console and the monitor;
- ("emergency", group) / ("cancel_emergency", group): the app sends DeviceSession.emergency /
  cancel_emergency (the alert, and the cancel that ends the group's emergency state at the relay).

``ptt.transmit`` and ``ptt.led`` hold the current values too.

States and timers (docs/accessory-audio.md has the transition table):

- "Start-stop" (no call), "U: has no permission", "U: pending Request", "U: has permission",
  "U: pending Release", "U: queued".
- T101 / C101, Floor Request repeat: a request unanswered after C101 transmissions (T101 apart)
  means the relay is not answering: back to "U: has no permission" with the lost-link tone and LED.
- T100 / C100, Floor Release repeat; after C100 the floor is taken as released, lost link shown.
- T104 / C104, Floor Queue Position Request repeat; after C104 the queue is taken as lost.
- T103, end of received media: no voice for T103 ends "receiving".
- C1xx count every transmission, the first one included (as the server's C7 and C20).

Emergency: ``emergency()`` sends a Floor Request with the emergency indicator and the priority
``emergency_priority`` (255: the relay caps it). Pressed while PTT is held, it raises that press
(the relay re-grants a talker with the higher rank). Pressed without PTT (the emergency button),
it latches: the floor is requested and kept, the microphone open, until a PTT press-and-release
or the cancel. Pressed again, it cancels: ("cancel_emergency", group), the cancel tone, and a
latched call is released. An emergency call whose request failed (lost relay) is asked for again
by ``link_up``, as is a call whose PTT is still held.
"""

from opmob import mcpt
from opmob.mcpt import FloorMsg
from opmob.ticks import due, earliest, ms, tadd, tdiff

START_STOP = "Start-stop"
U_NO_PERMISSION = "U: has no permission"
U_PENDING_REQUEST = "U: pending Request"
U_HAS_PERMISSION = "U: has permission"
U_PENDING_RELEASE = "U: pending Release"
U_QUEUED = "U: queued"

LED_REST = "registered"
LED_TALKING = "talking"
LED_RECEIVING = "receiving"
LED_DENIED = "denied"
LED_QUEUED = "queued"
LED_EMERGENCY = "emergency"
LED_LOST = "lost_link"

TONE_TALK_PERMIT = "talk_permit"
TONE_DENY = "deny"
TONE_QUEUED = "queued"
TONE_EMERGENCY = "emergency"
TONE_LOST = "lost_link"
TONE_REVOKED = "revoked"
TONE_EMERGENCY_CANCEL = "emergency_cancel"

QUEUE_NOT_QUEUED = 254  # Queue Info position: the server does not have us queued

# The values of NIST's MCPTT model (REFERENCE.md), for a nearby server on LTE.
NIST = {"t100": 0.04, "c100": 3, "t101": 0.04, "c101": 3, "t103": 4.0, "t104": 0.08, "c104": 3}

COUNTERS = (
    "presses",
    "presses_refused",
    "requests_sent",
    "request_repeats",
    "releases_sent",
    "release_repeats",
    "queue_requests_sent",
    "queue_request_repeats",
    "grants",
    "denies",
    "revokes",
    "queued",
    "floor_lost",
    "no_answer",
    "emergencies",
    "emergency_cancels",
    "ignored",
)


class PttConfig:
    """Timers (seconds) and counters of the floor participant, and request policy.

    The defaults are OpMob's, not NIST's (``NIST`` holds those): over WiFi and a cross-border
    backhaul a floor exchange can take longer than 40 ms, and T101 x C101 is the time after which
    the client tells the user the relay is lost, so it matches DeviceSession's 1 s probe.
    ``priority``: the Floor Priority of a normal request (None: not sent; the relay uses its
    default). ``queueing``: requests say the client supports queueing (Floor Indicator 0x0400).
    ``denied_show``: seconds the "denied" LED pattern stays before the state's own pattern returns.
    """

    def __init__(
        self,
        t100=0.25,
        c100=4,
        t101=0.25,
        c101=4,
        t103=4.0,
        t104=0.5,
        c104=3,
        priority=None,
        emergency_priority=255,
        queueing=True,
        denied_show=1.5,
    ):
        for name, v in (("t100", t100), ("t101", t101), ("t103", t103), ("t104", t104)):
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError("%s must be a positive number of seconds" % name)
        for name, v in (("c100", c100), ("c101", c101), ("c104", c104)):
            if not isinstance(v, int) or not 1 <= v <= 100:
                raise ValueError("%s must be an integer 1..100" % name)
        for name, v in (("priority", priority), ("emergency_priority", emergency_priority)):
            if v is not None and (not isinstance(v, int) or not 0 <= v <= 255):
                raise ValueError("%s must be 0..255" % name)
        if emergency_priority is None:
            raise ValueError("emergency_priority must be 0..255")
        if not isinstance(denied_show, (int, float)) or denied_show < 0:
            raise ValueError("denied_show must be >= 0")
        self.t100 = t100
        self.c100 = c100
        self.t101 = t101
        self.c101 = c101
        self.t103 = t103
        self.t104 = t104
        self.c104 = c104
        self.priority = priority
        self.emergency_priority = emergency_priority
        self.queueing = bool(queueing)
        self.denied_show = denied_show
        # The client's timers run on integer milliseconds (opmob.ticks): converted once, here.
        self.t100_ms = ms(t100)
        self.t101_ms = ms(t101)
        self.t103_ms = ms(t103)
        self.t104_ms = ms(t104)
        self.denied_show_ms = ms(denied_show)

    @classmethod
    def from_dict(cls, d):
        """From a configuration table (unknown keys are refused, so a typo is not ignored)."""
        kw = {}
        for k in d:
            if k not in (
                "t100",
                "c100",
                "t101",
                "c101",
                "t103",
                "t104",
                "c104",
                "priority",
                "emergency_priority",
                "queueing",
                "denied_show",
            ):
                raise ValueError("unknown PTT setting %r" % (k,))
            kw[k] = d[k]
        return cls(**kw)


class PttClient:
    """One talk group's floor participant (see the module docstring)."""

    def __init__(self, cfg=None, group=None, identity=None):
        self.cfg = cfg if cfg is not None else PttConfig()
        self.group = group
        self.identity = identity
        self.state = START_STOP
        self.transmit = False
        self.led = LED_REST
        self.effects = []
        self.emergency_on = False
        self.queue_position = None
        self.queue_priority = None
        self.talker = None  # Granted Party's Identity of the last Floor Taken
        self.talker_ssrc = None
        self.group_indicator = None  # Floor Indicator of the last Granted/Taken/Idle
        self.granted_duration = None  # Duration of the last Floor Granted (seconds)
        c = {}
        for k in COUNTERS:
            c[k] = 0
        self.counters = c
        self._held = False  # PTT is down
        self._latched = False  # an emergency call keeps the floor without PTT
        self._repress = False  # PTT pressed while a release was pending
        self._imminent = False
        self._priority = None
        self._request = None  # the Floor Request being repeated
        self._t100 = self._t101 = self._t104 = None
        self._c100 = self._c101 = self._c104 = 0
        self._media_at = None  # last voice heard (T103 runs from it) ...
        self._t103_at = None  # ... and when T103 is next looked at (see _fire_due)
        self._taken = False  # the server says someone else holds the floor
        self._lost = False
        self._flash_until = None

    def __repr__(self):
        return "PttClient(%s, %s)" % (self.group, self.state)

    @property
    def may_transmit(self):
        return self.transmit

    # --- the app's inputs -----------------------------------------------------------------------------

    def start(self, now):
        """The group call is up (registered and affiliated): ready for PTT."""
        out = self._fire_due(now)
        if self.state == START_STOP:
            self._enter(U_NO_PERMISSION)
            self._show()
        return out

    def stop(self, now):
        """The group call is gone (de-affiliated, de-registered): nothing to send, all stopped."""
        self._stop_timers()
        self._set_transmit(False)
        self._held = self._latched = self._repress = False
        self._taken = False
        self._media_at = self._t103_at = None
        self.queue_position = None
        self._enter(START_STOP)
        self._show()
        return []

    def press(self, now, priority=None, imminent_peril=False):
        """PTT pressed. ``priority`` (0..255) overrides the configured one for this request;
        ``imminent_peril`` sets that indicator."""
        out = self._fire_due(now)
        self.counters["presses"] += 1
        self._held = True
        self._priority = priority
        self._imminent = bool(imminent_peril)
        st = self.state
        if st == START_STOP:
            self.counters["presses_refused"] += 1
            self._held = False
            self._tone(TONE_LOST if self._lost else TONE_DENY)
            self._flash(now)
        elif st == U_NO_PERMISSION:
            self._lost = False
            out.extend(self._send_request(now))
        elif st == U_PENDING_RELEASE:
            self._repress = True  # asked for again once the release is settled
        self._show()
        return out

    def release(self, now):
        """PTT released: the talk (or the request, or the place in the queue) ends."""
        out = self._fire_due(now)
        self._held = False
        self._latched = False
        self._repress = False
        if self.state in (U_PENDING_REQUEST, U_QUEUED, U_HAS_PERMISSION):
            out.extend(self._send_release(now))
        self._show()
        return out

    def emergency(self, now, latch=None):
        """The emergency long press: start an emergency call, or cancel the one in force.
        ``latch``: keep the floor without PTT (default: when PTT is not held)."""
        out = self._fire_due(now)
        if self.state == START_STOP:
            self.counters["presses_refused"] += 1
            self._tone(TONE_LOST if self._lost else TONE_DENY)
            self._flash(now)
            self._show()
            return out
        if self.emergency_on:
            self.emergency_on = False
            self.counters["emergency_cancels"] += 1
            self.effects.append(("cancel_emergency", self.group))
            self._tone(TONE_EMERGENCY_CANCEL)
            if self._latched:
                self._latched = False
                if not self._held and self.state in (U_PENDING_REQUEST, U_QUEUED, U_HAS_PERMISSION):
                    out.extend(self._send_release(now))
            self._show()
            return out
        self.emergency_on = True
        self.counters["emergencies"] += 1
        if latch is None:
            latch = not self._held
        if latch:
            self._latched = True
        self.effects.append(("emergency", self.group))
        self._tone(TONE_EMERGENCY)
        st = self.state
        if st in (U_NO_PERMISSION, U_PENDING_REQUEST, U_QUEUED):
            self._lost = False
            out.extend(self._send_request(now))
        elif st == U_HAS_PERMISSION:
            # Raise the floor we hold: the relay re-grants it with the emergency rank.
            out.append(self._request_msg())
            self.counters["requests_sent"] += 1
        elif st == U_PENDING_RELEASE:
            self._repress = True
        self._show()
        return out

    def query_queue(self, now):
        """Ask the relay for our place in the queue (Floor Queue Position Request, T104)."""
        out = self._fire_due(now)
        if self.state != U_QUEUED:
            return out
        self._c104 = 1
        self._t104 = tadd(now, self.cfg.t104_ms)
        self.counters["queue_requests_sent"] += 1
        out.append(FloorMsg(mcpt.FLOOR_QUEUE_POSITION_REQUEST))
        return out

    def link_lost(self, now):
        """The session lost its relay (or WiFi): whatever the floor was, it is gone."""
        out = self._fire_due(now)
        self._lost = True
        self._drop_floor()
        if self.state != START_STOP:
            self._tone(TONE_LOST)
        self._show()
        return out

    def link_up(self, now):
        """The session is registered again: an emergency call or a held PTT asks again."""
        out = self._fire_due(now)
        self._lost = False
        if self.state == U_NO_PERMISSION and (self._held or self._latched):
            out.extend(self._send_request(now))
        self._show()
        return out

    def on_media(self, now):
        """Voice heard in this group (any talker). Restarts T103. Allocates nothing (but at the
        first packet of a burst, which arms T103)."""
        self._media_at = now
        if self._t103_at is None:
            self._t103_at = tadd(now, self.cfg.t103_ms)
        if self._lost or self.led != LED_RECEIVING:
            self._lost = False
            self._show()

    # --- floor messages -----------------------------------------------------------------------------

    def on_floor(self, now, msg):
        """A floor-control message from the relay for this group."""
        out = self._fire_due(now)
        if self.state == START_STOP:
            self.counters["ignored"] += 1
            return out
        self._lost = False  # the relay answers
        kind = msg.kind
        if kind == mcpt.FLOOR_GRANTED:
            out.extend(self._on_granted(now, msg))
        elif kind == mcpt.FLOOR_DENY:
            out.extend(self._on_deny(now, msg))
        elif kind == mcpt.FLOOR_REVOKE:
            out.extend(self._on_revoke(now, msg))
        elif kind == mcpt.FLOOR_TAKEN:
            out.extend(self._on_taken(now, msg))
        elif kind == mcpt.FLOOR_IDLE:
            out.extend(self._on_idle(now, msg))
        elif kind == mcpt.FLOOR_QUEUE_POSITION_INFO:
            out.extend(self._on_queue_info(now, msg))
        else:
            self.counters["ignored"] += 1  # Floor Ack and the rest: nothing to do
        self._show()
        return out

    def _on_granted(self, now, msg):
        st = self.state
        if msg.indicator is not None:
            self.group_indicator = msg.indicator
        self.granted_duration = msg.duration
        if st == U_HAS_PERMISSION:
            return []  # a repeat (T20) or the re-grant of a raised request
        if st in (U_PENDING_REQUEST, U_QUEUED) or (st == U_NO_PERMISSION and self._wants()):
            # (from "no permission": our request had been given up, but PTT is still down)
            self._stop_timers()
            self.queue_position = None
            self.counters["grants"] += 1
            self._taken = False
            self._enter(U_HAS_PERMISSION)
            self._set_transmit(True)
            self._tone(TONE_TALK_PERMIT)
            self.effects.append(("granted",))
            return []
        if st == U_NO_PERMISSION:
            # A grant nobody here wants (a request given up, PTT released): hand it back at
            # once, so the floor does not stay with us until the relay's T1.
            self.counters["ignored"] += 1
            return self._send_release(now)
        self.counters["ignored"] += 1  # pending Release: ours is on its way
        return []

    def _on_deny(self, now, msg):
        if self.state not in (U_PENDING_REQUEST, U_QUEUED):
            self.counters["ignored"] += 1
            return []
        self._stop_timers()
        self.queue_position = None
        self.counters["denies"] += 1
        self._latched = False
        self._enter(U_NO_PERMISSION)
        self._tone(TONE_DENY)
        self._flash(now)
        self.effects.append(("denied", msg.reject_cause))
        return []

    def _on_revoke(self, now, msg):
        if self.state != U_HAS_PERMISSION:
            self.counters["ignored"] += 1
            return []
        # Stop sending at once, then say so (TS 24.380: Floor Release, "U: pending Release").
        self._set_transmit(False)
        self.counters["revokes"] += 1
        self._latched = False
        self._tone(TONE_REVOKED)
        self._flash(now)
        self.effects.append(("revoked", msg.reject_cause))
        return self._send_release(now)

    def _on_taken(self, now, msg):
        if msg.indicator is not None:
            self.group_indicator = msg.indicator
        if self.identity is not None and msg.granted_party == self.identity:
            # Our own burst, as told to a late entrant (a re-join): Floor Granted settles it.
            self.counters["ignored"] += 1
            return []
        self._taken = True
        self.talker = msg.granted_party
        self.talker_ssrc = msg.ssrc_field
        st = self.state
        if st == U_PENDING_RELEASE:
            return self._released(now)
        if st == U_HAS_PERMISSION:
            self._floor_lost(now)
        return []

    def _on_idle(self, now, msg):
        if msg.indicator is not None:
            self.group_indicator = msg.indicator
        self._taken = False
        self.talker = None
        self.talker_ssrc = None
        st = self.state
        if st == U_PENDING_RELEASE:
            return self._released(now)
        if st == U_HAS_PERMISSION:
            self._floor_lost(now)
            return []
        if st == U_QUEUED:
            return self._queue_lost(now)
        return []

    def _on_queue_info(self, now, msg):
        st = self.state
        info = msg.queue_info
        if st not in (U_PENDING_REQUEST, U_QUEUED) or info is None:
            self.counters["ignored"] += 1
            return []
        pos, prio = info
        if pos == QUEUE_NOT_QUEUED:
            if st == U_QUEUED:
                return self._queue_lost(now)
            self.counters["ignored"] += 1  # an answer to an older question: the request still runs
            return []
        self._t104 = None
        self.queue_position = pos
        self.queue_priority = prio
        if st == U_PENDING_REQUEST:
            self._t101 = None
            self._request = None
            self.counters["queued"] += 1
            self._enter(U_QUEUED)
            self._tone(TONE_QUEUED)
            self.effects.append(("queued", pos))
        return []

    # --- transitions --------------------------------------------------------------------------------

    def _wants(self):
        return self._held or self._latched

    def _enter(self, state):
        if state != self.state:
            self.state = state
            self.effects.append(("state", state))

    def _request_msg(self):
        cfg = self.cfg
        if self.emergency_on:
            ind = mcpt.IND_EMERGENCY
            prio = cfg.emergency_priority
        else:
            ind = mcpt.IND_IMMINENT_PERIL if self._imminent else mcpt.IND_NORMAL
            prio = self._priority if self._priority is not None else cfg.priority
        if cfg.queueing:
            ind |= mcpt.IND_QUEUEING_SUPPORTED
        return FloorMsg(mcpt.FLOOR_REQUEST, priority=prio, indicator=ind)

    def _send_request(self, now):
        self._stop_timers()
        self._repress = False
        self.queue_position = None
        self._request = self._request_msg()
        self._c101 = 1
        self._t101 = tadd(now, self.cfg.t101_ms)
        self.counters["requests_sent"] += 1
        self._enter(U_PENDING_REQUEST)
        return [self._request]

    def _send_release(self, now):
        self._set_transmit(False)
        self._stop_timers()
        self.queue_position = None
        self._c100 = 1
        self._t100 = tadd(now, self.cfg.t100_ms)
        self.counters["releases_sent"] += 1
        self._enter(U_PENDING_RELEASE)
        return [FloorMsg(mcpt.FLOOR_RELEASE)]

    def _released(self, now):
        """The relay has settled our release (Floor Idle or Taken, or T100 gave up)."""
        self._t100 = None
        self._enter(U_NO_PERMISSION)
        if self._repress and self._wants():
            return self._send_request(now)
        self._repress = False
        return []

    def _floor_lost(self, now):
        # Floor Idle or Taken while we hold the floor: the relay ended our burst (its T1 found
        # no media of ours, a forced release). Stop and say so.
        self._set_transmit(False)
        self._stop_timers()
        self._latched = False
        self.counters["floor_lost"] += 1
        self._enter(U_NO_PERMISSION)
        self._tone(TONE_REVOKED)
        self._flash(now)
        self.effects.append(("floor_lost",))

    def _queue_lost(self, now):
        # The relay no longer has us queued (it restarted, or the floor went idle past us).
        self._stop_timers()
        self.queue_position = None
        if self._wants():
            return self._send_request(now)
        self._enter(U_NO_PERMISSION)
        return []

    def _drop_floor(self):
        self._stop_timers()
        self._set_transmit(False)
        self._taken = False
        self._media_at = self._t103_at = None
        self.queue_position = None
        self._repress = False
        if self.state != START_STOP:
            self._enter(U_NO_PERMISSION)

    def _no_answer(self, what):
        self.counters["no_answer"] += 1
        self._lost = True
        self._tone(TONE_LOST)
        self.effects.append(("no_answer", what))

    def _stop_timers(self):
        self._t100 = self._t101 = self._t104 = None
        self._request = None

    def _set_transmit(self, on):
        if on != self.transmit:
            self.transmit = on
            self.effects.append(("transmit", on))

    def _tone(self, name):
        self.effects.append(("tone", name))

    def _flash(self, now):
        if self.cfg.denied_show_ms > 0:
            self._flash_until = tadd(now, self.cfg.denied_show_ms)

    def _receiving(self):
        return self._taken or self._media_at is not None

    def _show(self):
        if self.transmit:
            led = LED_TALKING
        elif self._flash_until is not None:
            led = LED_DENIED
        elif self._lost:
            led = LED_LOST
        elif self.emergency_on:
            led = LED_EMERGENCY
        elif self.state == U_QUEUED:
            led = LED_QUEUED
        elif self._receiving():
            led = LED_RECEIVING
        else:
            led = LED_REST
        if led != self.led:
            self.led = led
            self.effects.append(("led", led))

    # --- timers -------------------------------------------------------------------------------------

    def next_deadline(self):
        d = earliest(self._t100, self._t101)
        d = earliest(d, self._t104)
        d = earliest(d, self._flash_until)
        return earliest(d, self._t103_at)

    def poll(self, now):
        return self._fire_due(now)

    def _fire_due(self, now):
        out = []
        while True:
            d = self.next_deadline()
            if d is None or not due(now, d):
                return out
            if self._t101 is not None and tdiff(self._t101, d) <= 0:
                out.extend(self._on_t101(d))
            elif self._t100 is not None and tdiff(self._t100, d) <= 0:
                out.extend(self._on_t100(d))
            elif self._t104 is not None and tdiff(self._t104, d) <= 0:
                self._on_t104(d, out)
            elif self._flash_until is not None and tdiff(self._flash_until, d) <= 0:
                self._flash_until = None
            else:
                # T103 is moved on here rather than at every packet: one deadline per burst
                # rather than 50 a second.
                t = tadd(self._media_at, self.cfg.t103_ms)
                if tdiff(t, d) > 0:
                    self._t103_at = t
                    continue
                # No voice for t103 seconds: the talker has gone, whatever was last said.
                self._media_at = self._t103_at = None
                self._taken = False
                self.talker = None
                self.talker_ssrc = None
            self._show()

    def _on_t101(self, t):
        if self._c101 < self.cfg.c101:
            self._c101 += 1
            self._t101 = tadd(t, self.cfg.t101_ms)
            self.counters["request_repeats"] += 1
            return [self._request]
        # Nobody answers: the request has failed and the relay is probably gone.
        self._stop_timers()
        self._enter(U_NO_PERMISSION)
        self._no_answer("request")
        return []

    def _on_t100(self, t):
        if self._c100 < self.cfg.c100:
            self._c100 += 1
            self._t100 = tadd(t, self.cfg.t100_ms)
            self.counters["release_repeats"] += 1
            return [FloorMsg(mcpt.FLOOR_RELEASE)]
        self._no_answer("release")
        return self._released(t)

    def _on_t104(self, t, out):
        if self._c104 < self.cfg.c104:
            self._c104 += 1
            self._t104 = tadd(t, self.cfg.t104_ms)
            self.counters["queue_request_repeats"] += 1
            out.append(FloorMsg(mcpt.FLOOR_QUEUE_POSITION_REQUEST))
            return
        # No answer to C104 questions: our place in the queue is not known to exist any more.
        self._stop_timers()
        self.queue_position = None
        self._enter(U_NO_PERMISSION)
        self._no_answer("queue")
