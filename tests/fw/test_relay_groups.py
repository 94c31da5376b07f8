"""The relay's groups part (opmob.relay_groups.Groups) alone, on both runtimes: floors made on
first use and filed in the deadline heap, where each group's floor lives, members' routes."""

from opmob import mcpt
from opmob import relay_events as ev
from opmob.floor_server import FloorConfig
from opmob.floorid import floor_ssrc
from opmob.relay_groups import ATTACHED, LOCAL, Groups
from opmob.ticks import PERIOD, tadd

G = "fire-1@no"
T0 = PERIOD - 500


class FakeLinkGroup:
    def __init__(self, group, state=ATTACHED):
        self.group = group
        self.state = state
        self.remote = {}
        self.by_ref = {}


class FakeLink:
    def __init__(self, up=True):
        self.up = up
        self.att = {}
        self.served = {}


def groups(by_ssrc=None):
    return Groups(FloorConfig(), ev.EventLog(), by_ssrc if by_ssrc is not None else {})


def test_floor_made_once_and_its_deadline_filed():
    gs = groups()
    srv = gs.floor(G)
    assert gs.floor(G) is srv and gs.get(G) is srv and gs.of_floor_ssrc(floor_ssrc(G)) == G
    assert gs.due.earliest() is None
    srv.join(T0, "ann@no", "ann@no", 0x1111)
    assert gs.due.earliest() == srv.next_deadline() == tadd(T0, 1000)  # T7 across the wrap
    srv.on_message(T0, "ann@no", mcpt.FloorMsg(mcpt.FLOOR_REQUEST, 0x1111))
    assert gs.due.earliest() == srv.next_deadline()
    assert (ev.FLOOR_GRANTED, G, "ann@no") in gs.events.drain()


def test_floor_ssrc_taken_by_a_registration_refuses_the_group():
    gs = groups({floor_ssrc(G): "a device"})
    assert gs.floor(G) is None and gs.get(G) is None


def test_where_the_floor_lives():
    gs = groups()
    links = {"relay-a@no": FakeLink()}
    assert gs.where(G, links) == LOCAL  # not attached: controlled here
    gs.attach_of[G] = "relay-a@no"
    assert gs.where(G, links) == LOCAL  # attached, but not yet acknowledged
    links["relay-a@no"].att[G] = FakeLinkGroup(G)
    assert (
        gs.where(G, links) is links["relay-a@no"] and gs.attached_up(G, links) is links["relay-a@no"].att[G]
    )
    links["relay-a@no"].up = False
    assert gs.where(G, links) == LOCAL  # the link is down: this relay takes over


def test_a_member_keeps_its_identity_across_routes():
    gs = groups()
    link = FakeLink()
    lg = FakeLinkGroup(G)
    link.served[G] = lg
    gs.route_remote("cat@no", link, lg, 0xC0)
    assert gs.routed_remote("cat@no", G) is lg and gs.routes["cat@no"] == (link, 0xC0)
    gs.route_remote("cat@no", link, lg, 0xC1)  # re-registered over there: a new reference
    assert lg.by_ref == {0xC1: "cat@no"} and lg.remote == {"cat@no": 0xC1}
    assert gs.routed_remote("cat@no", "other@no") is None
    gs.route_local("cat@no", G)  # now registered here
    assert gs.routed_remote("cat@no", G) is None and lg.remote == {} and lg.by_ref == {} and gs.routes == {}
