"""What happened in a relay, as typed events the driver drains (``relay.events()``), sans-I/O.

Drivers, ``opmob monitor``, tests and the simulator read these instead of the relay's internals.
An event is a tuple whose first item names its type (the constants below) and whose other items
are fixed per type:

    (REGISTERED, identity, ssrc)                 a registration took effect (active or stunned)
    (DEREGISTERED, identity, cause)              it ended: "deregistered", "expired", "killed"
    (AFFILIATED, identity, group, result)        one affiliation asked for, and the result code
    (DEAFFILIATED, identity, group)
    (FLOOR_GRANTED, group, pid)                  the group's floor went to ``pid``
    (FLOOR_DENIED, group, pid, cause)
    (FLOOR_REVOKED, group, pid, cause)           a new revoke (its repeats are not events)
    (FLOOR_IDLE, group)                          the floor has no holder any more
    (VOICE_STARTED, group, talker)               the first voice of a burst was forwarded
    (VOICE_STOPPED, group, talker)               the burst ended (floor idle or moved on)
    (EMERGENCY, group, identity)                 an emergency alert; (EMERGENCY_CANCELLED, group, identity or None)
    (DEVICE_CONTROL, identity, action)           stun, revive or kill ordered
    (LINK_UP, peer)  (LINK_DOWN, peer)

``pid`` is the floor participant: a device's user identity. The log is bounded (MAX_EVENTS): a
relay whose driver never drains it keeps the newest and counts what it dropped (``dropped``).
Events carry no key, secret or location.
"""

REGISTERED = "registered"
DEREGISTERED = "deregistered"
AFFILIATED = "affiliated"
DEAFFILIATED = "deaffiliated"
FLOOR_GRANTED = "floor_granted"
FLOOR_DENIED = "floor_denied"
FLOOR_REVOKED = "floor_revoked"
FLOOR_IDLE = "floor_idle"
VOICE_STARTED = "voice_started"
VOICE_STOPPED = "voice_stopped"
EMERGENCY = "emergency"
EMERGENCY_CANCELLED = "emergency_cancelled"
DEVICE_CONTROL = "device_control"
LINK_UP = "link_up"
LINK_DOWN = "link_down"

MAX_EVENTS = 1024


class EventLog:
    def __init__(self, max_events=MAX_EVENTS):
        self._ev = []
        self.max_events = max_events
        self.dropped = 0
        self._talking = {}  # group -> the talker whose voice is being forwarded

    def __len__(self):
        return len(self._ev)

    def add(self, ev):
        e = self._ev
        if len(e) >= self.max_events:
            # Oldest first out, in one slice: a log nobody drains must not cost a move per event.
            k = len(e) - self.max_events // 2
            self.dropped += k
            del e[:k]
        e.append(ev)

    def drain(self):
        """Every event since the last drain, oldest first."""
        e = self._ev
        if not e:
            return ()  # the common case, after every datagram: no list made
        self._ev = []
        return e

    def voice(self, group, talker):
        """Voice from ``talker`` was forwarded in ``group``: VOICE_STARTED on its first packet."""
        t = self._talking.get(group)
        if t == talker:
            return
        if t is not None:
            self.add((VOICE_STOPPED, group, t))
        self._talking[group] = talker
        self.add((VOICE_STARTED, group, talker))

    def floor_moved(self, group, holder):
        """``group``'s floor is now ``holder``'s (None: idle): a burst by someone else is over."""
        t = self._talking.get(group)
        if t is not None and t != holder:
            del self._talking[group]
            self.add((VOICE_STOPPED, group, t))
