"""Controlling floor-control server for one group (3GPP TS 24.380 clause 6.3), sans-I/O.

The relay keeps one ``FloorServer`` per group it controls. It feeds in events with the current time
(``now``, integer milliseconds modulo 2^30 from opmob/ticks.py, compared wrap-safely) and sends what comes back. Every entry point
returns a list of ``(pid, FloorMsg)``: one tuple per recipient, never a symbolic "all", because the
content can differ per recipient (Permission to Request the Floor is 0 for receive-only members)
and because only the server knows who is a member at that instant. Recipients of one broadcast
share one FloorMsg object, so a driver must not mutate what it gets.

Every entry point first fires the timers due at ``now``, so the answer to an event is the same
whether or not the driver called ``poll`` exactly on time. After any call, ``next_deadline()`` is
either None or later than ``now``.

States use the standard's names (``state`` for the general machine, ``participant_state(pid)``
for the machine towards each participant). docs/floor-control.md has the transition table and
lists what is simplified compared with TS 24.380.
"""

from opmob.mcpt import (
    DENY_ANOTHER_HAS_PERMISSION,
    DENY_ONLY_ONE_PARTICIPANT,
    DENY_QUEUE_FULL,
    DENY_RECEIVE_ONLY,
    FLOOR_ACK,
    FLOOR_DENY,
    FLOOR_GRANTED,
    FLOOR_IDLE,
    FLOOR_QUEUE_POSITION_INFO,
    FLOOR_QUEUE_POSITION_REQUEST,
    FLOOR_RELEASE,
    FLOOR_REQUEST,
    FLOOR_REVOKE,
    FLOOR_TAKEN,
    IND_EMERGENCY,
    IND_IMMINENT_PERIL,
    IND_NORMAL,
    IND_QUEUEING_SUPPORTED,
    REVOKE_BURST_TOO_LONG,
    REVOKE_NO_PERMISSION,
    REVOKE_PREEMPTED,
    SOURCE_CONTROLLING,
    FloorMsg,
)
from opmob.ticks import due, earliest, ms, tadd, tdiff

# General state machine (TS 24.380 clause 6.3.4)
G_START_STOP = "Start-stop"
G_INITIALISING = "G: Floor Initialising"
G_IDLE = "G: Floor Idle"
G_TAKEN = "G: Floor Taken"
G_PENDING_REVOKE = "G: pending Floor Revoke"
G_RELEASING = "Releasing"

# State machine towards each participant (clause 6.3.5)
U_IDLE = "U: not permitted and Floor Idle"
U_TAKEN = "U: not permitted and Floor Taken"
U_PERMITTED = "U: permitted"
U_PENDING_REVOKE = "U: pending Floor Revoke"
U_SENDS_MEDIA = "U: not permitted but sends media"
U_RELEASING = "Releasing"

# Request classes, compared before the priority number: emergency > imminent peril > normal.
CLASS_NORMAL = 0
CLASS_IMMINENT_PERIL = 1
CLASS_EMERGENCY = 2

# Queue Info position values reserved by TS 24.380 clause 8.2.3.7
QUEUE_POS_NOT_QUEUED = 254
QUEUE_POS_UNKNOWN = 255
MAX_QUEUE = 253  # the largest position that is not a reserved value

_COUNTERS = (
    "requests",
    "grants",
    "regrants",
    "denies",
    "revokes",
    "preemptions",
    "queued",
    "queue_bumped",
    "queue_cancelled",
    "queue_position_requests",
    "releases",
    "release_not_holder",
    "holder_left",
    "acks",
    "acks_sent",
    "media_dropped",
    "media_tail_dropped",
    "t1_expiries",
    "t2_expiries",
    "t3_forced_releases",
    "t7_idle_repeats",
    "t8_revoke_repeats",
    "t20_granted_repeats",
    "t20_gave_up",
    "emergencies",
    "emergency_cancels",
    "imminent_perils",
    "imminent_peril_cancels",
    "cancel_refused",
    "unknown_participant",
    "unexpected_message",
    "ignored_closed",
)
_DENY_CAUSES = (1, 2, 3, 4, 5, 6, 7, 255)
_REVOKE_CAUSES = (1, 2, 3, 4, 6, 255)


def _ceil_s(ms_left):
    """Whole seconds, rounded up, of a duration in milliseconds (Floor Granted's Duration)."""
    return (ms_left + 999) // 1000


class FloorConfig:
    """Timer values and policy for one group; the relay fills it from relay.toml.

    Timers in seconds (as relay.toml gives them), converted once to int milliseconds that the
    server uses (``t1_ms`` ... ``t20_ms``, ``tail_grace_ms``); counters as the total number of
    transmissions (first one included):
    t1 end of RTP media, t2 stop talking (longest burst), t3 stop-talking grace after a Floor
    Revoke, t7/c7 Floor Idle repeat, t8 Floor Revoke repeat, t20/c20 Floor Granted repeat.
    ``tail_grace``: media from a participant that has just sent Floor Release is dropped silently
    for this long, because UDP may deliver the last voice packets after the release.
    """

    def __init__(
        self,
        t1=4.0,
        t2=30.0,
        t3=3.0,
        t7=1.0,
        c7=10,
        t8=1.0,
        t20=1.0,
        c20=3,
        queueing=True,
        queue_max=8,
        default_priority=0,
        emergency_priority=255,
        imminent_peril_priority=254,
        deny_only_one=False,
        tail_grace=0.5,
    ):
        for name, v in (("t1", t1), ("t2", t2), ("t3", t3), ("t7", t7), ("t8", t8), ("t20", t20)):
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError("%s must be a positive number of seconds" % name)
        # T2 travels in the 16-bit Duration field of Floor Granted.
        if t2 > 65535:
            raise ValueError("t2 must fit the 16-bit Duration field")
        for name, v in (("c7", c7), ("c20", c20)):
            if not isinstance(v, int) or v < 1:
                raise ValueError("%s must be an integer >= 1" % name)
        if not isinstance(queue_max, int) or not 1 <= queue_max <= MAX_QUEUE:
            # A pre-empting request waits in the queue until the holder lets go, so even a group
            # without queueing needs one slot.
            raise ValueError("queue_max must be 1..%d" % MAX_QUEUE)
        for name, v in (
            ("default_priority", default_priority),
            ("emergency_priority", emergency_priority),
            ("imminent_peril_priority", imminent_peril_priority),
        ):
            if not isinstance(v, int) or not 0 <= v <= 255:
                raise ValueError("%s must be 0..255" % name)
        if not isinstance(tail_grace, (int, float)) or tail_grace < 0:
            raise ValueError("tail_grace must be >= 0")
        self.t1 = t1
        self.t2 = t2
        self.t3 = t3
        self.t7 = t7
        self.c7 = c7
        self.t8 = t8
        self.t20 = t20
        self.c20 = c20
        self.queueing = bool(queueing)
        self.queue_max = queue_max
        self.default_priority = default_priority
        self.emergency_priority = emergency_priority
        self.imminent_peril_priority = imminent_peril_priority
        self.deny_only_one = bool(deny_only_one)
        self.tail_grace = tail_grace
        self.t1_ms = ms(t1)
        self.t2_ms = ms(t2)
        self.t3_ms = ms(t3)
        self.t7_ms = ms(t7)
        self.t8_ms = ms(t8)
        self.t20_ms = ms(t20)
        self.tail_grace_ms = ms(tail_grace)


class _Member:
    __slots__ = (
        "pid",
        "user_id",
        "ssrc",
        "ceiling",
        "receive_only",
        "rogue",
        "rogue_t8",
        "rogue_media",
        "released_at",
    )

    def __init__(self, pid, user_id, ssrc, ceiling, receive_only):
        self.pid = pid
        self.user_id = user_id
        self.ssrc = ssrc
        self.ceiling = ceiling
        self.receive_only = receive_only
        # "U: not permitted but sends media": T8 deadline, and whether media came since the last revoke
        self.rogue = False
        self.rogue_t8 = None
        self.rogue_media = False
        self.released_at = None


class _Claim:
    """A request for the floor: the holder's, or one waiting in the queue."""

    __slots__ = ("pid", "cls", "prio", "base", "arrival")

    def __init__(self, pid, cls, prio, base, arrival):
        self.pid = pid
        self.cls = cls
        self.prio = prio  # effective priority, what Floor Granted and Queue Info carry
        self.base = base  # the participant's own priority, restored when an emergency is cancelled
        self.arrival = arrival

    def outranks(self, other):
        """Strictly higher class-then-priority: the pre-emption test."""
        if self.cls != other.cls:
            return self.cls > other.cls
        return self.prio > other.prio

    def before(self, other):
        """Queue order: higher rank first, then first come first served."""
        if self.cls != other.cls or self.prio != other.prio:
            return self.outranks(other)
        return self.arrival < other.arrival


class FloorServer:
    """Floor arbitration for one group; see the module docstring for the calling convention."""

    def __init__(self, group, cfg=None, server_ssrc=0):
        self.group = group
        self.cfg = cfg if cfg is not None else FloorConfig()
        if not isinstance(server_ssrc, int) or not 0 <= server_ssrc <= 0xFFFFFFFF:
            raise ValueError("server_ssrc must be a 32-bit integer")
        self.server_ssrc = server_ssrc
        self.state = G_START_STOP
        self.emergency = False
        self.imminent_peril = False
        self._alert_by = [None, None, None]  # per class: the pid that raised the group state
        self._members = {}
        self._order = []  # pids in join order: fan-out order must not depend on dict iteration
        self._holder = None
        self._queue = []
        self._arrivals = 0
        self._seq = 0
        self._revoke_cause = None
        self._t1 = None
        self._t2 = None
        self._t3 = None
        self._t8 = None
        self._t20 = None
        self._c20 = 0
        self._t7 = None
        self._idle_pending = {}  # pid -> Floor Idle transmissions so far, until that pid acks
        self._rogues = 0  # members with a rogue_t8 (sending media without permission)
        c = {}
        for k in _COUNTERS:
            c[k] = 0
        for cause in _DENY_CAUSES:
            c["deny_cause_%d" % cause] = 0
        for cause in _REVOKE_CAUSES:
            c["revoke_cause_%d" % cause] = 0
        self.counters = c

    # ---- read-only views -------------------------------------------------------------------

    @property
    def holder(self):
        return self._holder.pid if self._holder is not None else None

    @property
    def queue(self):
        return [(q.pid, q.prio) for q in self._queue]

    @property
    def members(self):
        return list(self._order)

    @property
    def seq(self):
        return self._seq

    def participant_state(self, pid):
        """The state towards ``pid`` (a U_* name), or None when ``pid`` is not a member."""
        m = self._members.get(pid)
        if m is None:
            return None
        if self.state == G_RELEASING:
            return U_RELEASING
        h = self._holder
        if h is not None and h.pid == pid:
            return U_PENDING_REVOKE if self.state == G_PENDING_REVOKE else U_PERMITTED
        if m.rogue:
            return U_SENDS_MEDIA
        return U_IDLE if self.state == G_IDLE else U_TAKEN

    def queue_position(self, pid):
        """1-based position of ``pid`` in the queue, or None."""
        for i, q in enumerate(self._queue):
            if q.pid == pid:
                return i + 1
        return None

    def may_send_media(self, pid):
        """The relay's media gate: forward RTP from ``pid`` only when this is True.

        Call it after ``on_media`` for the same packet, which first fires due timers.
        """
        h = self._holder
        return h is not None and h.pid == pid and self.state in (G_TAKEN, G_PENDING_REVOKE)

    def next_deadline(self):
        d = earliest(self._t1, self._t2)
        d = earliest(d, self._t3)
        d = earliest(d, self._t8)
        d = earliest(d, self._t20)
        d = earliest(d, self._t7)
        if self._rogues:
            # Only while someone sends media without permission: this runs after every voice
            # packet (the relay files each group's deadline), so no walk of the members otherwise.
            for pid in self._order:
                d = earliest(d, self._members[pid].rogue_t8)
        return d

    # ---- events ------------------------------------------------------------------------------

    def join(self, now, pid, user_id, ssrc, ceiling=255, receive_only=False):
        """``pid`` enters the group call, or updates its details (same pid again, e.g. after a
        handover). A late entrant is told the floor state at once."""
        if not isinstance(ceiling, int) or not 0 <= ceiling <= 255:
            raise ValueError("ceiling must be 0..255")
        if not isinstance(ssrc, int) or not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc must be a 32-bit integer")
        out = self._fire_due(now)
        if self.state == G_RELEASING:
            self.counters["ignored_closed"] += 1
            return out
        m = self._members.get(pid)
        if m is None:
            m = _Member(pid, user_id, ssrc, ceiling, bool(receive_only))
            self._members[pid] = m
            self._order.append(pid)
        else:
            m.user_id = user_id
            m.ssrc = ssrc
            m.ceiling = ceiling
            m.receive_only = bool(receive_only)
        if self.state == G_START_STOP:
            # Nothing to wait for in Floor Initialising (no temporary group, no confirmed
            # indication): the first member's arrival takes the group straight to Floor Idle.
            self.state = G_INITIALISING
            out.extend(self._enter_idle(now))
            return out
        h = self._holder
        if h is not None and h.pid == pid:
            if m.receive_only:
                out.extend(self._end_burst(now))
            elif self.state == G_TAKEN:
                out.append((pid, self._granted_msg(now, False)))
            else:
                out.append((pid, self._revoke_msg()))
            return out
        if self.state == G_IDLE:
            out.append((pid, self._idle_msg(True)))
            if pid not in self._idle_pending:
                self._idle_pending[pid] = 1
            if self._t7 is None:
                self._t7 = tadd(now, self.cfg.t7_ms)
        else:
            out.append((pid, self._taken_msg(m.receive_only)))
        return out

    def leave(self, now, pid):
        """``pid`` left the call (or its relay lost it). A holder leaving releases the floor."""
        out = self._fire_due(now)
        m = self._members.pop(pid, None)
        if m is None:
            return out
        self._unrogue(m)
        self._order.remove(pid)
        self._unqueue(pid)
        if self._idle_pending.pop(pid, None) is not None and not self._idle_pending:
            self._t7 = None
        for cls in (CLASS_IMMINENT_PERIL, CLASS_EMERGENCY):
            # The group stays in its alert state; from now on only the system can cancel it.
            if self._alert_by[cls] == pid:
                self._alert_by[cls] = None
        h = self._holder
        if h is not None and h.pid == pid and self.state != G_RELEASING:
            self.counters["holder_left"] += 1
            out.extend(self._end_burst(now))
        return out

    def on_message(self, now, pid, msg):
        """A floor-control message from participant ``pid``."""
        out = self._fire_due(now)
        if self.state == G_RELEASING:
            self.counters["ignored_closed"] += 1
            return out
        m = self._members.get(pid)
        if m is None:
            self.counters["unknown_participant"] += 1
            return out
        kind = msg.kind
        if kind == FLOOR_REQUEST:
            out.extend(self._on_request(now, m, msg))
        elif kind == FLOOR_RELEASE:
            if msg.ack_req:
                out.append((pid, self._ack_msg(FLOOR_RELEASE)))
            out.extend(self._on_release(now, m))
        elif kind == FLOOR_QUEUE_POSITION_REQUEST:
            self.counters["queue_position_requests"] += 1
            out.append((pid, self._qpi_for(pid)))
        elif kind == FLOOR_ACK:
            self._on_ack(m, msg)
        else:
            self.counters["unexpected_message"] += 1
        return out

    def on_media(self, now, pid):
        """One RTP packet from ``pid``. Then ask ``may_send_media(pid)`` whether to forward it."""
        out = self._fire_due(now)
        h = self._holder
        if h is not None and h.pid == pid and self.state in (G_TAKEN, G_PENDING_REVOKE):
            self._t1 = tadd(now, self.cfg.t1_ms)
            # Voice from the holder proves Floor Granted arrived, as a Floor Ack would.
            self._t20 = None
            return out
        self.counters["media_dropped"] += 1
        m = self._members.get(pid)
        if m is None or self.state == G_RELEASING:
            return out
        if m.released_at is not None and tdiff(now, m.released_at) < self.cfg.tail_grace_ms:
            self.counters["media_tail_dropped"] += 1
            return out
        if m.rogue:
            m.rogue_media = True
            return out
        m.rogue = True
        m.rogue_media = False
        m.rogue_t8 = tadd(now, self.cfg.t8_ms)
        self._rogues += 1
        self._count_revoke(REVOKE_NO_PERMISSION)
        out.append((pid, self._revoke_msg(REVOKE_NO_PERMISSION)))
        return out

    def cancel_emergency(self, now, pid=None):
        """End the group's emergency state. ``pid``: the member cancelling, who must be the one
        that raised it; None: the system or a dispatcher (the relay checks their authority)."""
        return self._cancel_alert(now, pid, CLASS_EMERGENCY)

    def cancel_imminent_peril(self, now, pid=None):
        """End the group's imminent peril state; same rules as ``cancel_emergency``."""
        return self._cancel_alert(now, pid, CLASS_IMMINENT_PERIL)

    def poll(self, now):
        """Fire the timers due at ``now``."""
        return self._fire_due(now)

    def close(self, now):
        """The group call is being released: stop arbitrating, drop the queue and all timers."""
        out = self._fire_due(now)
        self.state = G_RELEASING
        self._holder = None
        self._queue = []
        self._idle_pending = {}
        self._t1 = self._t2 = self._t3 = self._t8 = self._t20 = self._t7 = None
        for pid in self._order:
            m = self._members[pid]
            m.rogue = False
            m.rogue_t8 = None
        self._rogues = 0
        return out

    # ---- request handling --------------------------------------------------------------------

    def _rank(self, m, msg):
        ind = msg.indicator or 0
        want = msg.priority if msg.priority is not None else self.cfg.default_priority
        base = min(max(want, 0), m.ceiling)
        if ind & IND_EMERGENCY:
            return CLASS_EMERGENCY, self.cfg.emergency_priority, base
        if ind & IND_IMMINENT_PERIL:
            return CLASS_IMMINENT_PERIL, self.cfg.imminent_peril_priority, base
        return CLASS_NORMAL, base, base

    def _on_request(self, now, m, msg):
        self.counters["requests"] += 1
        pid = m.pid
        if m.receive_only:
            return self._deny(pid, DENY_RECEIVE_ONLY)
        cls, prio, base = self._rank(m, msg)
        h = self._holder
        if self.state == G_IDLE:
            if self.cfg.deny_only_one and len(self._order) == 1:
                return self._deny(pid, DENY_ONLY_ONE_PARTICIPANT)
            self._arrivals += 1
            self._raise_alert(cls, pid)
            return self._grant(now, _Claim(pid, cls, prio, base, self._arrivals))
        if h.pid == pid:
            self.counters["regrants"] += 1
            if self.state != G_TAKEN:
                return [(pid, self._revoke_msg())]
            if cls > h.cls or (cls == h.cls and prio > h.prio):
                # The talker pressed the emergency button, or asks more: it keeps the floor with
                # the higher rank, and the group hears about an alert state at once.
                before = self._indicator()
                h.cls = cls
                h.prio = prio
                h.base = max(h.base, base)
                self._raise_alert(cls, pid)
                if self._indicator() != before:
                    return self._announce(now)
            # Otherwise a repeated request (the client's T101): nothing changes.
            return [(pid, self._granted_msg(now, self._t20 is not None))]
        old = self._unqueue(pid)
        if old is not None:
            arrival = old.arrival  # a repeated request keeps its place among equals
        else:
            self._arrivals += 1
            arrival = self._arrivals
        claim = _Claim(pid, cls, prio, base, arrival)
        preempt = claim.outranks(h)
        wants_queue = self.cfg.queueing and (msg.indicator or 0) & IND_QUEUEING_SUPPORTED
        # An emergency request that cannot pre-empt (another emergency talks) still waits, at the
        # head: denying it would make a responder in danger retry by hand.
        if not (preempt or wants_queue or cls == CLASS_EMERGENCY):
            if old is not None:
                self.counters["queue_cancelled"] += 1
            return self._deny(pid, DENY_ANOTHER_HAS_PERMISSION)
        out = []
        if len(self._queue) >= self.cfg.queue_max:
            last = self._queue[-1]
            if not claim.before(last):
                if old is not None:
                    self.counters["queue_cancelled"] += 1
                return self._deny(pid, DENY_QUEUE_FULL)
            self._queue.pop()
            self.counters["queue_bumped"] += 1
            out.extend(self._deny(last.pid, DENY_QUEUE_FULL))
        self._enqueue(claim)
        if old is None:
            self.counters["queued"] += 1
        self._raise_alert(cls, pid)
        if preempt and self.state == G_TAKEN:
            self.counters["preemptions"] += 1
            out.extend(self._revoke(now, REVOKE_PREEMPTED))
        out.append((pid, self._qpi_for(pid)))
        return out

    def _on_release(self, now, m):
        pid = m.pid
        self._unrogue(m)
        h = self._holder
        if h is not None and h.pid == pid:
            self.counters["releases"] += 1
            m.released_at = now
            return self._end_burst(now)
        # Not the holder: a queued participant giving up, or a client whose release crossed our
        # forced release. Either way it waits in "U: pending Release" for the floor state.
        self.counters["release_not_holder"] += 1
        if self._unqueue(pid) is not None:
            self.counters["queue_cancelled"] += 1
        if self.state == G_IDLE:
            return [(pid, self._idle_msg(False))]
        return [(pid, self._taken_msg(m.receive_only))]

    def _on_ack(self, m, msg):
        self.counters["acks"] += 1
        if msg.msg_type is None:
            return
        # Some clients echo the subtype with its ack bit; the message is the low 4 bits.
        acked = msg.msg_type & 0x0F
        if acked == FLOOR_GRANTED:
            h = self._holder
            if h is not None and h.pid == m.pid:
                self._t20 = None
        elif acked == FLOOR_IDLE:
            if self._idle_pending.pop(m.pid, None) is not None and not self._idle_pending:
                self._t7 = None

    def _raise_alert(self, cls, pid):
        if cls == CLASS_EMERGENCY and not self.emergency:
            self.emergency = True
            self._alert_by[CLASS_EMERGENCY] = pid
            self.counters["emergencies"] += 1
            # An emergency supersedes an imminent peril state of the same group.
            self.imminent_peril = False
            self._alert_by[CLASS_IMMINENT_PERIL] = None
        elif cls == CLASS_IMMINENT_PERIL and not self.emergency and not self.imminent_peril:
            self.imminent_peril = True
            self._alert_by[CLASS_IMMINENT_PERIL] = pid
            self.counters["imminent_perils"] += 1

    def _cancel_alert(self, now, pid, cls):
        out = self._fire_due(now)
        active = self.emergency if cls == CLASS_EMERGENCY else self.imminent_peril
        if not active or self.state == G_RELEASING:
            return out
        if pid is not None and pid != self._alert_by[cls]:
            self.counters["cancel_refused"] += 1
            return out
        if cls == CLASS_EMERGENCY:
            self.emergency = False
            self.counters["emergency_cancels"] += 1
        else:
            self.imminent_peril = False
            self.counters["imminent_peril_cancels"] += 1
        self._alert_by[cls] = None
        # Requests made under the alert fall back to their own priority; no one is pre-empted
        # by the change, the queue is just re-ordered.
        claims = self._queue + ([self._holder] if self._holder is not None else [])
        for c in claims:
            if c.cls == cls:
                c.cls = CLASS_NORMAL
                c.prio = c.base
        old = self._queue
        self._queue = []
        for c in old:
            self._enqueue(c)
        out.extend(self._announce(now))
        return out

    def _announce(self, now):
        """Tell every member the floor state again, in a new burst (the indicator changed)."""
        if self.state == G_IDLE:
            return self._enter_idle(now)
        self._seq = (self._seq + 1) & 0xFFFF
        out = []
        if self.state == G_TAKEN:
            out.append((self._holder.pid, self._granted_msg(now, self._t20 is not None)))
        out.extend(self._taken_to_others())
        return out

    # ---- transitions -------------------------------------------------------------------------

    def _grant(self, now, claim):
        cfg = self.cfg
        self._holder = claim
        self.state = G_TAKEN
        self._revoke_cause = None
        self._t1 = tadd(now, cfg.t1_ms)
        self._t2 = tadd(now, cfg.t2_ms)
        self._t3 = None
        self._t8 = None
        self._t20 = tadd(now, cfg.t20_ms)
        self._c20 = 1
        self._t7 = None
        self._idle_pending = {}
        m = self._members[claim.pid]
        self._unrogue(m)
        m.released_at = None
        self._seq = (self._seq + 1) & 0xFFFF
        self.counters["grants"] += 1
        out = [(claim.pid, self._granted_msg(now, True))]
        out.extend(self._taken_to_others())
        return out

    def _revoke(self, now, cause):
        self.state = G_PENDING_REVOKE
        self._revoke_cause = cause
        self._t2 = None
        self._t20 = None
        self._t3 = tadd(now, self.cfg.t3_ms)
        self._t8 = tadd(now, self.cfg.t8_ms)
        self._count_revoke(cause)
        return [(self._holder.pid, self._revoke_msg())]

    def _end_burst(self, now):
        """The holder is gone (release, leave, T1, T3): next in the queue, or Floor Idle."""
        self._holder = None
        self._revoke_cause = None
        self._t1 = self._t2 = self._t3 = self._t8 = self._t20 = None
        if self._queue:
            return self._grant(now, self._queue.pop(0))
        return self._enter_idle(now)

    def _enter_idle(self, now):
        self.state = G_IDLE
        self._holder = None
        self._seq = (self._seq + 1) & 0xFFFF
        msg = self._idle_msg(True)
        self._idle_pending = {}
        out = []
        for pid in self._order:
            self._idle_pending[pid] = 1
            out.append((pid, msg))
        self._t7 = tadd(now, self.cfg.t7_ms) if self._idle_pending else None
        return out

    # ---- timers ------------------------------------------------------------------------------

    def _fire_due(self, now):
        out = []
        while True:
            # Equal deadlines fire in this order: end of burst before its repeats, so a Floor
            # Granted is never repeated to a holder that T1 has just removed.
            best = None
            which = None
            for name, t in (
                ("t1", self._t1),
                ("t3", self._t3),
                ("t2", self._t2),
                ("t20", self._t20),
                ("t8", self._t8),
                ("t7", self._t7),
            ):
                if t is not None and due(now, t) and (best is None or tdiff(t, best) < 0):
                    best = t
                    which = name
            for pid in self._order if self._rogues else ():
                t = self._members[pid].rogue_t8
                if t is not None and due(now, t) and (best is None or tdiff(t, best) < 0):
                    best = t
                    which = pid
            if which is None:
                return out
            if which == "t1":
                self.counters["t1_expiries"] += 1
                out.extend(self._end_burst(now))
            elif which == "t3":
                self.counters["t3_forced_releases"] += 1
                out.extend(self._end_burst(now))
            elif which == "t2":
                self.counters["t2_expiries"] += 1
                out.extend(self._revoke(now, REVOKE_BURST_TOO_LONG))
            elif which == "t20":
                out.extend(self._on_t20(now))
            elif which == "t8":
                self.counters["t8_revoke_repeats"] += 1
                self._t8 = tadd(now, self.cfg.t8_ms)
                out.append((self._holder.pid, self._revoke_msg()))
            elif which == "t7":
                out.extend(self._on_t7(now))
            else:
                out.extend(self._on_rogue_t8(now, self._members[which]))

    def _on_t20(self, now):
        if self._c20 >= self.cfg.c20:
            self._t20 = None
            self.counters["t20_gave_up"] += 1
            return []
        self._c20 += 1
        self._t20 = tadd(now, self.cfg.t20_ms)
        self.counters["t20_granted_repeats"] += 1
        return [(self._holder.pid, self._granted_msg(now, True))]

    def _on_t7(self, now):
        msg = self._idle_msg(True)
        out = []
        pending = self._idle_pending
        for pid in self._order:
            n = pending.get(pid)
            if n is None:
                continue
            if n >= self.cfg.c7:
                del pending[pid]
                continue
            pending[pid] = n + 1
            out.append((pid, msg))
        self.counters["t7_idle_repeats"] += len(out)
        self._t7 = tadd(now, self.cfg.t7_ms) if pending else None
        return out

    def _on_rogue_t8(self, now, m):
        if m.rogue_media:
            m.rogue_media = False
            m.rogue_t8 = tadd(now, self.cfg.t8_ms)
            self.counters["t8_revoke_repeats"] += 1
            return [(m.pid, self._revoke_msg(REVOKE_NO_PERMISSION))]
        # A whole T8 without media: the participant has stopped; it is simply not permitted again.
        self._unrogue(m)
        return []

    def _unrogue(self, m):
        if m.rogue_t8 is not None:
            self._rogues -= 1
        m.rogue = False
        m.rogue_t8 = None

    # ---- queue -------------------------------------------------------------------------------

    def _enqueue(self, claim):
        q = self._queue
        i = 0
        while i < len(q) and not claim.before(q[i]):
            i += 1
        q.insert(i, claim)

    def _unqueue(self, pid):
        q = self._queue
        for i in range(len(q)):
            if q[i].pid == pid:
                return q.pop(i)
        return None

    # ---- messages ----------------------------------------------------------------------------

    def _indicator(self):
        if self.emergency:
            return IND_EMERGENCY
        if self.imminent_peril:
            return IND_IMMINENT_PERIL
        return IND_NORMAL

    def _granted_msg(self, now, ack):
        h = self._holder
        m = self._members[h.pid]
        left = _ceil_s(tdiff(self._t2, now)) if self._t2 is not None else 0
        return FloorMsg(
            FLOOR_GRANTED,
            self.server_ssrc,
            ack,
            duration=max(0, min(left, 65535)),
            priority=h.prio,
            user_id=m.user_id,
            ssrc_field=m.ssrc,
            queue_size=len(self._queue),
            indicator=self._indicator(),
        )

    def _taken_msg(self, receive_only):
        m = self._members[self._holder.pid]
        return FloorMsg(
            FLOOR_TAKEN,
            self.server_ssrc,
            granted_party=m.user_id,
            permission=0 if receive_only else 1,
            seq=self._seq,
            indicator=self._indicator(),
            ssrc_field=m.ssrc,
        )

    def _taken_to_others(self):
        holder = self._holder.pid
        msgs = [None, None]  # built once per permission value, shared by the recipients
        out = []
        for pid in self._order:
            if pid == holder:
                continue
            ro = 1 if self._members[pid].receive_only else 0
            if msgs[ro] is None:
                msgs[ro] = self._taken_msg(ro)
            out.append((pid, msgs[ro]))
        return out

    def _idle_msg(self, ack):
        return FloorMsg(FLOOR_IDLE, self.server_ssrc, ack, seq=self._seq, indicator=self._indicator())

    def _revoke_msg(self, cause=None):
        return FloorMsg(
            FLOOR_REVOKE,
            self.server_ssrc,
            reject_cause=cause if cause is not None else self._revoke_cause,
            indicator=self._indicator(),
        )

    def _qpi_for(self, pid):
        pos = self.queue_position(pid)
        if pos is None:
            info = (QUEUE_POS_NOT_QUEUED, 0)
        else:
            info = (pos, self._queue[pos - 1].prio)
        return FloorMsg(FLOOR_QUEUE_POSITION_INFO, self.server_ssrc, queue_info=info)

    def _ack_msg(self, kind):
        self.counters["acks_sent"] += 1
        return FloorMsg(FLOOR_ACK, self.server_ssrc, source=SOURCE_CONTROLLING, msg_type=kind)

    def _deny(self, pid, cause):
        self.counters["denies"] += 1
        self.counters["deny_cause_%d" % cause] += 1
        return [
            (
                pid,
                FloorMsg(FLOOR_DENY, self.server_ssrc, reject_cause=cause, indicator=self._indicator()),
            )
        ]

    def _count_revoke(self, cause):
        self.counters["revokes"] += 1
        self.counters["revoke_cause_%d" % cause] += 1
