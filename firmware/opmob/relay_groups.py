"""Every group a relay arbitrates or takes part in, in one place: its floor and where that floor
lives, its members' routes, sans-I/O (docs/relay.md "Floor control and voice", "Links").

    gs = Groups(floor_cfg, events, by_ssrc)
    gs.floor(g) -> _Floor | None        the group's floor server here, made on first use (None:
                                        its floor SSRC collides with one in use: counted)
    gs.get(g) / gs.of_floor_ssrc(ssrc)  gs.floors / gs.due (their deadlines, a heap)
    gs.where(g, links) -> LOCAL | Peer  where the group's floor is arbitrated right now
    gs.attached_up(g, links) -> LinkGroup | None
    gs.route_remote(pid, link, lg, ref) / gs.routed_remote(pid, g) / gs.route_local(pid, g)

A group's floor lives here (``LOCAL``: this relay's FloorServer arbitrates) unless the group is
attached over a link (``attach_of``) whose peer controls it and the link is up: then the peer's
FloorServer arbitrates and this relay's stays silent, taking over if the link goes down.
Members are floor participants under their **user identity**; a member over a link has its route
(the link, and its reference there) beside it in ``routes``, so its identity does not change
when it moves between relays.
"""

from opmob import mcpt
from opmob import relay_events as ev
from opmob.deadlines import Deadlines
from opmob.floor_server import G_IDLE, FloorServer
from opmob.floorid import floor_ssrc

LOCAL = "local"
ATTACHING = "attaching"  # a LinkGroup's states (relay_link.py)
ATTACHED = "attached"


class _Floor(FloorServer):
    """A group's FloorServer that, after every call, files its next deadline with the relay (so
    that ``Relay.next_deadline`` reads one heap instead of asking every group) and logs what the
    call changed as relay events (grant, deny, revoke, idle)."""

    def __init__(self, group, cfg, server_ssrc, deadlines, events):
        FloorServer.__init__(self, group, cfg, server_ssrc)
        self._deadlines = deadlines
        self._events = events

    def _mark(self):
        c = self.counters
        return (self.holder, c["denies"], c["revokes"])

    def _filed(self, before, out):
        self._deadlines.set(self.group, self.next_deadline())
        h0, denies, revokes = before
        c = self.counters
        log = self._events
        g = self.group
        if c["denies"] != denies or c["revokes"] != revokes:
            new_revokes = c["revokes"] - revokes
            for pid, m in out:
                if m.kind == mcpt.FLOOR_DENY:
                    log.add((ev.FLOOR_DENIED, g, pid, m.reject_cause))
                elif m.kind == mcpt.FLOOR_REVOKE and new_revokes > 0:
                    new_revokes -= 1
                    log.add((ev.FLOOR_REVOKED, g, pid, m.reject_cause))
        h = self.holder
        if h != h0:
            log.floor_moved(g, h)
            if h is not None:
                log.add((ev.FLOOR_GRANTED, g, h))
            elif self.state == G_IDLE:
                log.add((ev.FLOOR_IDLE, g))
        return out

    def join(self, now, pid, user_id, ssrc, ceiling=255, receive_only=False):
        b = self._mark()
        return self._filed(b, FloorServer.join(self, now, pid, user_id, ssrc, ceiling, receive_only))

    def leave(self, now, pid):
        b = self._mark()
        return self._filed(b, FloorServer.leave(self, now, pid))

    def on_message(self, now, pid, msg):
        b = self._mark()
        return self._filed(b, FloorServer.on_message(self, now, pid, msg))

    def on_media(self, now, pid):
        b = self._mark()
        return self._filed(b, FloorServer.on_media(self, now, pid))

    def cancel_emergency(self, now, pid=None):
        b = self._mark()
        return self._filed(b, FloorServer.cancel_emergency(self, now, pid))

    def cancel_imminent_peril(self, now, pid=None):
        b = self._mark()
        return self._filed(b, FloorServer.cancel_imminent_peril(self, now, pid))

    def poll(self, now):
        b = self._mark()
        return self._filed(b, FloorServer.poll(self, now))

    def close(self, now):
        b = self._mark()
        return self._filed(b, FloorServer.close(self, now))


class Groups:
    def __init__(self, floor_cfg, events, by_ssrc):
        self.cfg = floor_cfg
        self.events = events
        self._by_ssrc = by_ssrc  # media SSRCs of registrations: a floor SSRC must not be one
        self.floors = {}  # group -> _Floor
        self.by_floor_ssrc = {}  # floor server SSRC -> group
        self.due = Deadlines()  # group -> its floor server's next deadline
        self.alerts = {}  # group -> identities whose emergency alert is in force
        self.attach_of = {}  # group -> peer it is attached over (relay.toml [[link]] attach)
        self.routes = {}  # controlling: participant -> (link, reference or None) over a link

    def get(self, g):
        return self.floors.get(g)

    def of_floor_ssrc(self, ssrc):
        return self.by_floor_ssrc.get(ssrc)

    def floor(self, g):
        """The floor server for ``g``, made on first use; None when its SSRC is taken."""
        srv = self.floors.get(g)
        if srv is None:
            f = floor_ssrc(g)
            if f in self.by_floor_ssrc or f in self._by_ssrc:
                return None
            srv = _Floor(g, self.cfg, f, self.due, self.events)
            self.floors[g] = srv
            self.by_floor_ssrc[f] = g
        return srv

    # --- where the floor lives -------------------------------------------------------------------

    def attached_up(self, g, links):
        """The LinkGroup when ``g`` is attached over a link that is up, else None."""
        peer = self.attach_of.get(g)
        if peer is None:
            return None
        link = links[peer]
        lg = link.att.get(g)
        if lg is None or lg.state != ATTACHED or not link.up:
            return None
        return lg

    def where(self, g, links):
        """``LOCAL`` when this relay's floor server arbitrates ``g`` now, else the Peer whose
        relay does."""
        if self.attached_up(g, links) is None:
            return LOCAL
        return links[self.attach_of[g]]

    # --- members over a link -----------------------------------------------------------------------

    def route_remote(self, pid, link, lg, ref):
        """Participant ``pid`` of ``lg.group`` talks through ``link`` under reference ``ref``."""
        old = lg.remote.get(pid)
        if old is not None:
            lg.by_ref.pop(old, None)  # the same member under a new reference there
        lg.remote[pid] = ref
        lg.by_ref[ref] = pid
        self.routes[pid] = (link, ref)

    def routed_remote(self, pid, g):
        """The LinkGroup through which ``pid`` is a member of ``g`` over a link, else None."""
        r = self.routes.get(pid)
        if r is None:
            return None
        lg = r[0].served.get(g)
        return lg if lg is not None and pid in lg.remote else None

    def route_local(self, pid, g):
        """``pid`` is a member of ``g`` here now: its route over a link (if any) ends."""
        lg = self.routed_remote(pid, g)
        if lg is not None:
            ref = lg.remote.pop(pid)
            lg.by_ref.pop(ref, None)
            self.routes.pop(pid, None)
