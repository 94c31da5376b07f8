"""A device's request kept open by its relay until a peer relay answers, on both runtimes: an
AFFILIATE to a group whose floor the peer controls is answered when the peer's GROUP_ATTACH
answer comes (the floor then lives there), retransmissions meanwhile answered PENDING; without
an answer (the link goes down) it is answered LOCAL_ONLY and this relay arbitrates.

Two relay cores and their devices on the in-memory network of test_relay_link_core."""

import test_relay_link_core as lc
from opmob import mcpt, sig
from relaynet import G1


def affiliations(d):
    return [e for e in d.events if e[0] == "affiliation"]


def cat_at_b(net):
    d = net.device("cat", lc.RB, [])
    net.step(100)
    assert d.state == "registered" and net.link(net.b)["attached"] == []
    d.events = []
    return d


def test_affiliate_answered_when_the_controlling_relay_attaches_the_group():
    n = lc.up_net()
    cat = cat_at_b(n)
    n.act("cat", cat.affiliate(n.now, [G1]))
    # One exchange: AFFILIATE held, GROUP_ATTACH out, its ACK back, the AFFILIATE answered.
    assert n.b.counters["requests_held"] == 1 and n.b.counters["sig_pending"] == 0
    assert affiliations(cat) == [("affiliation", G1, sig.AFF_OK)]
    assert n.link(n.b)["attached"] == [G1] and n.link(n.a)["served"] == [G1]
    n.check_counters()


def test_retransmissions_answered_pending_until_the_peer_answers():
    n = lc.up_net(start=lc.PERIOD - 1500)  # the clock wraps while the request is open
    cat = cat_at_b(n)
    n.device("ann", lc.RA, [G1])
    n.cut = True  # the GROUP_ATTACH is lost, and its first retransmissions
    n.act("cat", cat.affiliate(n.now, [G1]))
    n.step(1000)
    assert affiliations(cat) == [] and cat.counters["pending_rx"] == 1
    assert n.b.counters["sig_pending"] == 1 and "drop_sig_in_progress" not in n.b.counters
    n.cut = False
    n.step(3000)  # B's next GROUP_ATTACH retransmission gets through
    assert affiliations(cat) == [("affiliation", G1, sig.AFF_OK)]
    assert n.link(n.b)["attached"] == [G1]
    # The floor lives at A now: cat's request is granted by A's floor server.
    n.act("cat", cat.send_floor(n.now, mcpt.FloorMsg(mcpt.FLOOR_REQUEST), G1))
    n.step(50)
    assert n.a.status()["groups"][0]["holder"] == "cat@no"
    n.check_counters()


def test_affiliate_answered_local_only_when_the_link_goes_down():
    n = lc.up_net()
    cat = cat_at_b(n)
    n.cut = True
    n.act("cat", cat.affiliate(n.now, [G1]))
    n.step(9000)  # B hears nothing from A: the link goes down, and the wait ends with it
    assert n.link(n.b)["state"] != "up"
    assert affiliations(cat) == [("affiliation", G1, sig.AFF_LOCAL_ONLY)]
    assert n.b.counters["sig_pending"] >= 1 and cat.counters["pending_rx"] >= 1
    # B arbitrates its group meanwhile.
    n.act("cat", cat.send_floor(n.now, mcpt.FloorMsg(mcpt.FLOOR_REQUEST), G1))
    n.step(50)
    assert n.b.status()["groups"][0]["holder"] == "cat@no"
    n.check_counters()
