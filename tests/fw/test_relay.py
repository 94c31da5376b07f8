"""The relay core (opmob.relay) with real DeviceSessions, in memory, under a virtual clock.

Unless a test says otherwise: keep-alive 15 s, expiry 3600 s, floor timers at their defaults
(T1 4 s, T2 30 s, T3 3 s). Devices come from relaynet.PEOPLE; ceilings ann/bob 100, cat 200,
dan 50; kim is receive-only in fire-1.
"""

from fwtest import Rng, raises
from opmob import authvec, mcpt, sig, srtp
from opmob import relay_events as ev
from opmob.floorid import floor_ssrc
from opmob.relay_session import STALE
from opmob.ticks import DAY_MS, MASK, PERIOD, tdiff
from relaynet import G1, G2, GP, GSE, RELAY, World, floor_view, ident, secret_of, sig_type, ssrc_of

SRC = ("192.0.2.66", 4444)  # a host that is not a registered device


def trio(**cfg):
    w = World(**cfg)
    for n in ("ann", "bob", "cat"):
        w.device(n, [G1])
    w.clear()
    return w


def raw_register(w, name, nonce=b"\x11" * 16, txid=7, src=SRC):
    """REGISTER by hand: (the relay's answer, decoded)."""
    m = sig.SigMsg(sig.REGISTER, txid=txid, identity=ident(name), nonce=nonce)
    out = w.inject(src, sig.encode(m))
    assert len(out) == 1 and out[0][0] == src
    return sig.decode(out[0][1])


def answer_challenge(ch, name, nonce=b"\x11" * 16):
    res, ks = authvec.device_respond(secret_of(name), ch.rand, ch.autn, ch.vid)
    return res, sig.keys(authvec.derive(ks, ch.rand, nonce), False)


# --- registration -------------------------------------------------------------------------------


def test_registration_happy_path():
    w = World()
    a = w.device("ann", [G1, G2])
    b = w.device("bob", [G1])
    assert a.state == "registered" and b.state == "registered"
    assert a.ssrc != b.ssrc and a.keepalive == 15 and a.expiry == 3600 and a.relay == "relay-1@no"
    ev = w.events("ann")
    assert ("registered", a.ssrc) in ev
    assert ("affiliation", G1, sig.AFF_OK) in ev and ("affiliation", G2, sig.AFF_OK) in ev
    st = w.relay.status()
    assert [d["identity"] for d in st["devices"]] == ["ann@no", "bob@no"]
    assert st["devices"][0]["groups"] == [G1, G2] and st["devices"][0]["state"] == "registered"
    assert [g["identity"] for g in st["groups"]] == [G1, G2]
    idle = "U: not permitted and Floor Idle"
    assert st["groups"][0]["members"] == [["ann@no", idle], ["bob@no", idle]]
    assert st["groups"][0]["floor_state"] == "G: Floor Idle"
    c = w.relay.counters
    assert c["challenges"] == 2 and c["registrations"] == 2 and c["accepted"] == c["rx_datagrams"]
    # The registry issued one vector per registration and persisted its counter.
    assert w.registry.device("ann@no").vid == 1
    w.check_counters()


def test_unknown_and_foreign_identities_are_rejected():
    w = World()
    r = raw_register(w, "zed")
    assert r.type == sig.REGISTER_REJECT and r.cause == sig.CAUSE_UNKNOWN_IDENTITY
    m = sig.SigMsg(sig.REGISTER, txid=9, identity="olle@se", nonce=bytes(16))
    r = sig.decode(w.inject(SRC, sig.encode(m))[0][1])
    assert r.type == sig.REGISTER_REJECT and r.cause == sig.CAUSE_ROAMING_NOT_ALLOWED
    assert w.relay.counters["register_rejects"] == 2 and w.relay.counters["challenges"] == 0
    w.check_counters()


def test_killed_device_is_rejected():
    w = World()
    w.registry.set_status("dan@no", "killed")
    r = raw_register(w, "dan")
    assert r.type == sig.REGISTER_REJECT and r.cause == sig.CAUSE_KILLED
    d = w.device("dan", [G1])
    assert d.state == "waiting" and ("rejected", sig.CAUSE_KILLED) in w.events("dan")
    assert w.relay.status()["killed"] == ["dan@no"]


def test_wrong_res_is_rejected_and_counted():
    w = World()
    ch = raw_register(w, "ann")
    assert ch.type == sig.CHALLENGE and ch.session != 0
    _res, (tx, rx) = answer_challenge(ch, "ann")
    bad = sig.encode(sig.SigMsg(sig.AUTH_RESPONSE, txid=8, session=ch.session, res=bytes(16)), tx)
    out = w.inject(SRC, bad)
    r = sig.decode(out[0][1], rx)
    assert r.type == sig.REGISTER_REJECT and r.cause == sig.CAUSE_AUTH_FAILED and r.protected
    assert w.relay.counters["auth_rejected"] == 1
    assert w.relay.status()["devices"] == []
    # The vector was single-use: the right RES now finds no challenge to answer.
    good = sig.encode(sig.SigMsg(sig.AUTH_RESPONSE, txid=9, session=ch.session, res=_res), tx)
    w.inject(SRC, good)
    assert w.relay.status()["devices"] == []
    w.check_counters()


def test_auth_response_with_wrong_keys_is_dropped():
    w = World()
    ch = raw_register(w, "ann")
    res, _ = answer_challenge(ch, "ann")
    k = authvec.derive(bytes(16), ch.rand, b"\x11" * 16)  # not the session key
    tx, _ = sig.keys(k, False)
    out = w.inject(SRC, sig.encode(sig.SigMsg(sig.AUTH_RESPONSE, txid=8, session=ch.session, res=res), tx))
    assert out == []
    assert w.relay.counters["drop_sig_auth_failed"] == 1
    assert w.relay.status()["devices"] == []
    w.check_counters()


def test_device_with_wrong_secret_refuses_and_is_refused():
    w = World()
    d = w.device("ann", [G1], secret=bytes(16))
    assert d.state == "waiting"
    assert ("relay_refused", sig.CAUSE_AUTN_INVALID) in w.events("ann")
    assert w.relay.counters["auth_autn_refused"] == 1
    assert w.relay.status()["devices"] == []
    w.check_counters()


def test_retransmitted_register_gets_the_same_challenge():
    w = World()
    seen = []
    lost = [0]

    def lose(src, dst, data):
        if src == RELAY and sig_type(data) == sig.CHALLENGE:
            seen.append(data)
            if lost[0] == 0:
                lost[0] = 1
                return True
        return False

    w.lose = lose
    d = w.device("ann", [G1])
    assert d.state == "registering"
    w.step(1000)  # REGISTER sent again at 0.5 s
    assert d.state == "registered"
    assert len(seen) == 2 and seen[0] == seen[1]
    assert w.relay.counters["challenges"] == 1 and w.relay.counters["sig_retransmits"] == 1
    w.check_counters()


def test_replayed_registration_cannot_make_a_session():
    w = World()
    caught = {}

    def tap(src, dst, data):
        t = sig_type(data)
        if dst == RELAY and t in (sig.REGISTER, sig.AUTH_RESPONSE) and t not in caught:
            caught[t] = data

    w.tap = tap
    a = w.device("ann", [G1])
    first_ssrc = a.ssrc
    # Within the cache lifetime a replay gets the very same answer and changes nothing.
    out = w.inject(SRC, caught[sig.AUTH_RESPONSE])
    assert len(out) == 1 and sig.peek(out[0][1]).type == sig.REGISTER_ACK
    assert w.relay.counters["registrations"] == 1
    w.run(40000)  # cache entries gone; keep-alives kept ann registered
    out = w.inject(SRC, caught[sig.AUTH_RESPONSE])
    assert out == [] and w.relay.counters["drop_sig_replayed"] == 1
    # A replayed REGISTER gets a fresh challenge that only the secret's holder can answer.
    out = w.inject(SRC, caught[sig.REGISTER])
    ch = sig.decode(out[0][1])
    assert ch.type == sig.CHALLENGE
    assert w.relay.counters["registrations"] == 1
    st = w.relay.status()["devices"]
    assert len(st) == 1 and st[0]["ssrc"] == first_ssrc and st[0]["addr"] == "10.0.1.2:5000"
    # After ann registers again (new session), the old AUTH_RESPONSE names a dead session.
    w.act("ann", a._register(w.now))
    assert a.ssrc != first_ssrc and a.state == "registered"
    out = w.inject(SRC, caught[sig.AUTH_RESPONSE])
    e = sig.decode(out[0][1])
    assert e.type == sig.ERROR and e.cause == sig.CAUSE_UNKNOWN_SESSION and not e.protected
    assert len(w.relay.status()["devices"]) == 1
    w.check_counters()


def test_device_limit():
    w = World(max_devices=2)
    w.device("ann", [G1])
    w.device("bob", [G1])
    r = raw_register(w, "cat")
    assert r.type == sig.REGISTER_REJECT and r.cause == sig.CAUSE_NO_RESOURCES and r.retry_after > 0
    # A registered device may always register again (a new transaction, not a retransmission).
    r = raw_register(w, "ann", txid=8)
    assert r.type == sig.CHALLENGE
    w.check_counters()


def test_half_open_registrations_are_bounded():
    from opmob import relay_sig

    w = World(max_devices=2)
    kinds = [raw_register(w, "ann", txid=100 + i).type for i in range(5)]
    assert kinds == [sig.CHALLENGE, sig.CHALLENGE] + [sig.REGISTER_REJECT] * 3
    assert w.registry.device("ann@no").vid == 2  # a refused REGISTER used no vector
    w.step(5000)
    assert raw_register(w, "ann", txid=200).type == sig.CHALLENGE  # replaces the oldest
    assert w.relay.sessions.challenges == 2 and w.registry.device("ann@no").vid == 3
    saved = relay_sig.MIN_CHALLENGES
    relay_sig.MIN_CHALLENGES = 4
    try:
        kinds = [raw_register(w, n, txid=300 + i).type for i, n in enumerate(("bob", "cat", "dan"))]
    finally:
        relay_sig.MIN_CHALLENGES = saved
    assert kinds == [sig.CHALLENGE, sig.CHALLENGE, sig.REGISTER_REJECT]
    assert w.relay.counters["challenges_refused"] == 4
    w.run(w.now + 31000)  # unanswered challenges expire
    assert w.relay.sessions.challenges == 0 and len(w.relay._sessions) == 0
    w.check_counters()


# --- no registration, no service ----------------------------------------------------------------


def test_unregistered_device_can_neither_affiliate_nor_talk():
    w = trio()
    floor_in = w.relay.counters["floor_in"]
    keys = authvec.derive(bytes(16), bytes(16), bytes(16))
    tx, _ = sig.keys(keys, False)
    aff = sig.SigMsg(sig.AFFILIATE, txid=1, session=12345, affiliations=[(G1, 0, 0)])
    out = w.inject(SRC, sig.encode(aff, tx))
    e = sig.decode(out[0][1])
    assert e.type == sig.ERROR and e.cause == sig.CAUSE_UNKNOWN_SESSION
    # Guessing a live session id does not help without its key.
    sid = w.devs["bob"].session
    out = w.inject(
        SRC, sig.encode(sig.SigMsg(sig.AFFILIATE, txid=1, session=sid, affiliations=[(GP, 0, 0)]), tx)
    )
    assert out == [] and w.relay.counters["drop_sig_auth_failed"] == 1
    # Floor control and voice under a stranger's key, with an unknown SSRC and with bob's.
    from opmob import srtp

    rogue = srtp.SrtpSession(bytes(16), bytes(14))
    req = mcpt.encode(mcpt.FloorMsg(mcpt.FLOOR_REQUEST, 0x1234, priority=255))
    assert w.inject(SRC, rogue.protect_rtcp(req)) == []
    pkt = bytearray(w.rtp_packet("ann"))
    pkt[8:12] = b"\x00\x00\x12\x34"
    assert w.inject(SRC, rogue.protect(bytes(pkt))) == []
    bob = w.devs["bob"].ssrc
    req = mcpt.encode(mcpt.FloorMsg(mcpt.FLOOR_REQUEST, bob, priority=255))
    assert w.inject(SRC, rogue.protect_rtcp(req)) == []
    pkt[8:12] = bytes(((bob >> 24) & 255, (bob >> 16) & 255, (bob >> 8) & 255, bob & 255))
    assert w.inject(SRC, rogue.protect(bytes(pkt))) == []
    c = w.relay.counters
    assert c["drop_rtcp_unknown_ssrc"] == 1 and c["drop_rtp_unknown_ssrc"] == 1
    # Refused by the replay window or by the tag, before anything is read.
    assert c.get("drop_rtcp_auth_failed", 0) + c.get("drop_rtcp_replayed", 0) == 1
    assert c.get("drop_rtp_auth_failed", 0) + c.get("drop_rtp_replayed", 0) == 1
    assert c["voice_in"] == 0 and c["floor_in"] == floor_in
    st = w.relay.status()
    assert st["groups"][0]["holder"] is None and [g["identity"] for g in st["groups"]] == [G1]
    for n in ("ann", "bob", "cat"):
        assert w.floors(n) == [] and w.heard(n) == []
    w.check_counters()


# --- stun, revive, kill -------------------------------------------------------------------------


def test_stun_reaches_the_device_at_once_and_revive_restores_it():
    w = trio()
    w.request("ann")
    w.clear()
    w.relay_out(w.relay.device_control(w.now, "ann@no", "stun"))
    a = w.devs["ann"]
    assert a.state == "stunned" and ("stunned",) in w.events("ann")
    # It held the floor: the others are told it is free.
    assert w.floors("bob") == [("Idle", "fire-1")] and w.floors("cat") == [("Idle", "fire-1")]
    assert w.relay.status()["stunned"] == ["ann@no"]
    assert w.relay.status()["devices"][0]["state"] == "stunned"
    assert a.send_voice(w.now, w.rtp_packet("ann")) == [] and a.counters["voice_refused"] == 1
    # Revive carries the home's proof; the device accepts it and is a member again.
    w.relay_out(w.relay.device_control(w.now, "ann@no", "revive"))
    assert a.state == "registered" and w.events("ann", "revived") == [("revived",)]
    assert w.floors("ann") == [("Idle", "fire-1")]
    assert w.relay.status()["stunned"] == [] and w.relay.counters["device_control_acks"] == 2
    w.request("ann")
    assert w.floors("ann") == [("Granted", "fire-1", "ann")]
    w.check_counters()


def test_stunned_device_is_refused_within_one_keepalive_even_if_it_missed_the_order():
    w = trio()
    w.lose = lambda src, dst, data: sig_type(data) == sig.DEVICE_CONTROL
    t0 = w.now
    w.relay.device_control(w.now, "ann@no", "stun")  # the order never arrives
    a = w.devs["ann"]
    assert a.state == "registered"
    # The relay refuses it at once, whatever the device believes.
    w.request("ann")
    assert w.floors("ann") == [] and w.relay.counters["drop_rtcp_stunned"] == 1
    w.act("ann", a.send_voice(w.now, w.rtp_packet("ann")))
    assert w.relay.counters["drop_rtp_stunned"] == 1 and w.heard("bob") == []
    while a.state != "stunned":
        w.step(500)
    assert w.since(t0) <= 15000 + 500
    assert ("stunned",) in w.events("ann")
    w.check_counters()


def test_stunned_device_that_registers_is_told_so():
    w = World()
    w.registry.set_status("bob@no", "stunned")
    b = w.device("bob", [G1])
    assert b.state == "stunned"
    ev = w.events("bob")
    assert ("stunned",) in ev and ("affiliation", G1, sig.AFF_NOT_AUTHORIZED) in ev
    w.act("bob", b.affiliate(w.now, [G2]))
    assert w.relay.status()["devices"][0]["groups"] == []
    # Revive reaches it even though it registered while stunned; then it joins by itself.
    w.relay_out(w.relay.device_control(w.now, "bob@no", "revive"))
    assert b.state == "registered" and sorted(b.affiliated) == [G1, G2]
    assert w.relay.status()["devices"][0]["groups"] == [G1, G2]
    w.check_counters()


def test_revive_of_an_unregistered_device_is_delivered_when_it_registers():
    w = trio()
    w.relay_out(w.relay.device_control(w.now, "ann@no", "stun"))
    a = w.devs["ann"]
    w.act("ann", a.deregister(w.now))
    assert a.state == "idle"
    assert w.relay.device_control(w.now, "ann@no", "revive") == []
    w.act("ann", a.start(w.now))
    assert a.state == "registered" and ("revived",) in w.events("ann")
    assert not w.relay._revive_pending("ann@no")


def test_kill_ends_the_session_for_good():
    w = trio()
    w.request("ann")
    w.clear()
    w.relay_out(w.relay.device_control(w.now, "ann@no", "kill"))
    a = w.devs["ann"]
    assert a.state == "killed" and ("killed",) in w.events("ann") and a._k is None
    assert a.start(w.now) == [] and a.next_deadline() is None
    assert w.floors("bob") == [("Idle", "fire-1")]
    st = w.relay.status()
    assert st["killed"] == ["ann@no"] and [d["identity"] for d in st["devices"]] == ["bob@no", "cat@no"]
    assert w.store.get("registration", "ann@no") is None
    raises(ValueError, w.relay.device_control, w.now, "ann@no", "revive")
    # Even with the secret (a stolen copy), it cannot register again.
    r = raw_register(w, "ann")
    assert r.type == sig.REGISTER_REJECT and r.cause == sig.CAUSE_KILLED
    w.run(w.now + 40000)
    assert len(w.relay._sessions) == 2
    w.check_counters()


def test_device_control_checks_its_arguments():
    w = trio()
    raises(ValueError, w.relay.device_control, w.now, "ann@no", "explode")
    raises(ValueError, w.relay.device_control, w.now, "zed@no", "stun")
    raises(ValueError, w.relay.cancel_emergency, w.now, "nothing@no")


# --- affiliation --------------------------------------------------------------------------------


def test_affiliation_results_limits_and_query():
    w = World(max_affiliations=2)
    a = w.device("ann", [])
    w.act("ann", a.affiliate(w.now, [G1, GP, "nope@no", GSE, G2]))
    res = dict((e[1], e[2]) for e in w.events("ann", "affiliation"))
    assert res == {
        G1: sig.AFF_OK,
        GP: sig.AFF_NOT_AUTHORIZED,
        "nope@no": sig.AFF_UNKNOWN_GROUP,
        GSE: sig.AFF_LOCAL_ONLY,  # homed in Sweden, no interconnect: arbitrated here
        G2: sig.AFF_LIMIT_REACHED,
    }
    assert sorted(a.affiliated) == [G1, GSE]
    # Affiliating again to a group it has is fine and does not count against the limit.
    w.act("ann", a.affiliate(w.now, [(G1, 5, sig.AFF_SELECTED)]))
    assert w.events("ann", "affiliation") == [("affiliation", G1, sig.AFF_OK)]
    # Query its own affiliations, then another device's (refused).
    s = w.relay._by_identity["ann@no"]
    q = sig.SigMsg(sig.AFFILIATION_QUERY, txid=a._txns.new_txid(), session=a.session)
    out = w.inject(w.addr["ann"], sig.encode(q, a._tx))
    rep = sig.decode(out[0][1], a._rx)
    assert rep.type == sig.AFFILIATION_REPORT and rep.affiliations == [(G1, 5, sig.AFF_SELECTED), (GSE, 0, 0)]
    q = sig.SigMsg(sig.AFFILIATION_QUERY, txid=a._txns.new_txid(), session=a.session, identity="bob@no")
    e = sig.decode(w.inject(w.addr["ann"], sig.encode(q, a._tx))[0][1], a._rx)
    assert e.type == sig.ERROR and e.cause == sig.CAUSE_NOT_AUTHORIZED
    assert s.talk_group() == G1
    # Leave one; leaving a group it is not in says so.
    w.act("ann", a.deaffiliate(w.now, [GSE]))
    assert w.events("ann", "deaffiliated") == [("deaffiliated", GSE, sig.AFF_OK)]
    assert w.relay.status()["devices"][0]["groups"] == [G1]
    d = sig.SigMsg(sig.DEAFFILIATE, txid=a._txns.new_txid(), session=a.session, groups=[GP])
    r = sig.decode(w.inject(w.addr["ann"], sig.encode(d, a._tx))[0][1], a._rx)
    assert r.results == [(GP, sig.AFF_NOT_AFFILIATED)]
    assert w.store.get("affiliation", "ann@no") == {"groups": [[G1, 5, sig.AFF_SELECTED]]}
    w.check_counters()


def test_floor_message_for_a_group_not_affiliated_is_dropped():
    w = trio()
    e = w.device("eve", [G2])
    w.clear()
    w.request("eve", G1)
    assert w.relay.counters["drop_rtcp_not_affiliated"] == 1
    for n in ("ann", "bob", "cat", "eve"):
        assert w.floors(n) == []
    # Named by an SSRC no group has.
    m = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, ssrc_field=0x0BADF00D)
    w.act("eve", e.send_floor(w.now, m))
    assert w.relay.counters["drop_rtcp_not_affiliated"] == 2 and w.floors("eve") == []
    w.check_counters()


# --- floor control through the relay ------------------------------------------------------------


def test_grant_when_idle():
    w = trio()
    w.request("ann")
    assert w.floors("ann") == [("Granted", "fire-1", "ann")]
    assert w.floors("bob") == [("Taken", "fire-1", "ann")]
    assert w.floors("cat") == [("Taken", "fire-1", "ann")]
    # The device acknowledged Floor Granted, so it is not repeated (T20).
    w.step(3500)
    assert w.floors("ann") == []
    st = w.relay.status()["groups"][0]
    assert st["floor_state"] == "G: Floor Taken" and st["holder"] == "ann@no"
    w.check_counters()


def test_deny_when_busy_without_queueing():
    w = trio()
    w.request("ann")
    w.clear()
    w.request("bob", queue=False)
    assert w.floors("bob") == [("Deny", "fire-1", mcpt.DENY_ANOTHER_HAS_PERMISSION)]
    assert w.floors("ann") == [] and w.floors("cat") == []
    w.check_counters()


def test_queue_then_grant():
    w = trio()
    w.request("ann")
    w.clear()
    w.request("bob")
    assert w.floors("bob") == [("Queue", "fire-1", 1)]
    w.release("ann")
    assert w.floors("bob") == [("Granted", "fire-1", "bob")]
    assert w.floors("ann") == [("Taken", "fire-1", "bob")]
    assert w.floors("cat") == [("Taken", "fire-1", "bob")]
    w.check_counters()


def test_preemption_by_higher_priority():
    w = trio()
    w.request("ann", prio=100)
    w.clear()
    w.request("cat", prio=150)  # cat's ceiling is 200, ann's 100
    assert w.floors("ann") == [("Revoke", "fire-1", mcpt.REVOKE_PREEMPTED)]
    assert w.floors("cat") == [("Queue", "fire-1", 1)]
    assert w.floors("bob") == []
    w.release("ann")
    assert w.floors("cat") == [("Granted", "fire-1", "cat")]
    assert w.floors("ann") == [("Taken", "fire-1", "cat")]
    assert w.floors("bob") == [("Taken", "fire-1", "cat")]
    # dan asks for more than its ceiling (50): capped, so it cannot pre-empt.
    w.device("dan", [G1])
    w.clear()
    w.request("dan", prio=255)
    assert w.floors("dan") == [("Queue", "fire-1", 1)] and w.floors("cat") == []
    w.check_counters()


def test_emergency_preempts_and_the_device_cancels_it():
    w = trio()
    w.request("cat", prio=200)
    w.clear()
    w.request("bob", ind=mcpt.IND_EMERGENCY)
    ev = w.events("cat", "floor")
    assert [floor_view(e[1], e[2]) for e in ev] == [("Revoke", "fire-1", mcpt.REVOKE_PREEMPTED)]
    assert ev[0][2].indicator == mcpt.IND_EMERGENCY
    assert w.floors("bob") == [("Queue", "fire-1", 1)]
    w.release("cat")
    ev = w.events("ann", "floor")
    assert [floor_view(e[1], e[2]) for e in ev] == [("Taken", "fire-1", "bob")]
    assert ev[0][2].indicator == mcpt.IND_EMERGENCY
    assert w.floors("bob") == [("Granted", "fire-1", "bob")]
    assert w.relay.status()["groups"][0]["emergency"] is True
    w.clear()
    # Someone else cannot lift it; bob can.
    w.act("ann", w.devs["ann"].cancel_emergency(w.now, G1))
    assert w.relay.status()["groups"][0]["emergency"] is True
    w.act("bob", w.devs["bob"].cancel_emergency(w.now, G1))
    assert w.relay.status()["groups"][0]["emergency"] is False
    ev = w.events("ann", "floor")
    assert [floor_view(e[1], e[2]) for e in ev] == [("Taken", "fire-1", "bob")]
    assert ev[0][2].indicator == mcpt.IND_NORMAL
    assert w.floors("bob") == [("Granted", "fire-1", "bob")]
    w.check_counters()


def test_emergency_call_cancelled_by_a_dispatcher():
    w = trio()
    w.request("ann", ind=mcpt.IND_EMERGENCY)
    assert w.relay.status()["groups"][0]["emergency"] is True
    w.clear()
    w.relay_out(w.relay.cancel_emergency(w.now, G1))
    assert w.relay.status()["groups"][0]["emergency"] is False
    assert w.floors("ann") == [("Granted", "fire-1", "ann")]
    assert w.floors("bob") == [("Taken", "fire-1", "ann")]
    w.check_counters()


def test_imminent_peril_preempts_and_is_cancelled():
    w = trio()
    w.request("cat", prio=200)
    w.clear()
    w.request("ann", ind=mcpt.IND_IMMINENT_PERIL)
    ev = w.events("cat", "floor")
    assert [floor_view(e[1], e[2]) for e in ev] == [("Revoke", "fire-1", mcpt.REVOKE_PREEMPTED)]
    assert ev[0][2].indicator == mcpt.IND_IMMINENT_PERIL
    assert w.relay.status()["groups"][0]["imminent_peril"] is True
    w.release("cat")
    assert w.floors("ann") == [("Queue", "fire-1", 1), ("Granted", "fire-1", "ann")]
    w.clear()
    w.act("ann", w.devs["ann"].cancel_emergency(w.now))
    assert w.relay.status()["groups"][0]["imminent_peril"] is False
    ev = w.events("bob", "floor")
    assert [floor_view(e[1], e[2]) for e in ev] == [("Taken", "fire-1", "ann")]
    assert ev[0][2].indicator == mcpt.IND_NORMAL
    # Raised again; this time a dispatcher lifts it.
    w.request("ann", ind=mcpt.IND_IMMINENT_PERIL)
    w.relay_out(w.relay.cancel_emergency(w.now, G1))
    assert w.relay.status()["groups"][0]["imminent_peril"] is False
    w.check_counters()


def test_emergency_alert_reaches_members_until_cancelled():
    w = trio()
    e = w.device("eve", [G2])
    w.clear()
    a = w.devs["ann"]
    w.act("ann", a.emergency(w.now, location=(599000000, 107000000, 10, 2)))
    assert w.events("bob", "emergency_alert") == [
        ("emergency_alert", G1, "ann@no", (599000000, 107000000, 10, 2))
    ]
    assert len(w.events("cat", "emergency_alert")) == 1
    assert w.events("ann", "emergency_alert") == [] and w.events("eve", "emergency_alert") == []
    assert w.relay.status()["groups"][0]["alerts"] == ["ann@no"]
    # eve is not in fire-1: she cannot raise an alert there.
    w.act("eve", e.emergency(w.now, group=G1))
    assert w.events("eve", "error") == [("error", sig.EMERGENCY_ALERT, sig.CAUSE_NOT_AUTHORIZED)]
    w.relay_out(w.relay.cancel_emergency(w.now, G1))
    assert w.events("bob", "emergency_cancel") == [("emergency_cancel", G1, None)]
    assert w.relay.status()["groups"][0]["alerts"] == []
    w.clear()
    # A device cancels its own alert.
    w.act("ann", a.emergency(w.now))
    w.act("ann", a.cancel_emergency(w.now))
    assert w.events("cat", "emergency_cancel") == [("emergency_cancel", G1, "ann@no")]
    w.check_counters()


def test_t2_expiry_revokes_then_forces_release():
    w = trio(t1=1.0, t2=2.0, t3=1.0)
    w.request("ann")
    w.clear()
    w.talk("ann", 21, every=100)  # 2.1 s of voice
    assert w.floors("ann") == [("Revoke", "fire-1", mcpt.REVOKE_BURST_TOO_LONG)]
    w.talk("ann", 12, every=100)  # keeps talking through T3 (1 s)
    ann = w.floors("ann")
    assert ann[0] == ("Idle", "fire-1") and ann[1] == ("Revoke", "fire-1", mcpt.REVOKE_NO_PERMISSION)
    assert w.floors("bob") == [("Idle", "fire-1")]
    heard = len(w.heard("bob"))
    assert 29 <= heard <= 31 and w.relay.counters["drop_rtp_not_permitted"] >= 1
    w.check_counters()


def test_t1_idle_after_media_stops():
    w = trio(t1=1.0)
    w.request("ann")
    w.clear()
    w.talk("ann", 10, every=50)
    assert w.floors("bob") == [] and len(w.heard("bob")) == 10
    w.step(900)
    assert w.floors("bob") == []
    w.step(200)
    for n in ("ann", "bob", "cat"):
        assert w.floors(n) == [("Idle", "fire-1")]
    w.check_counters()


def test_holder_deregisters():
    w = trio()
    w.request("ann")
    w.clear()
    w.act("ann", w.devs["ann"].deregister(w.now))
    assert w.devs["ann"].state == "idle" and ("deregistered",) in w.events("ann")
    assert w.floors("bob") == [("Idle", "fire-1")] and w.floors("cat") == [("Idle", "fire-1")]
    assert [d["identity"] for d in w.relay.status()["devices"]] == ["bob@no", "cat@no"]
    assert w.store.get("registration", "ann@no") is None
    w.check_counters()


def test_holder_goes_silent_and_expires():
    w = trio(keepalive=5, t1=60.0, t2=120.0)
    w.request("ann")
    w.clear()
    t0 = w.now
    w.lose = lambda src, dst, data: src == w.addr["ann"] or dst == w.addr["ann"]
    w.run(t0 + 17000)
    assert w.floors("bob") == []
    w.run(t0 + 18000)  # 3.5 keep-alive intervals of silence
    assert w.floors("bob") == [("Idle", "fire-1")] and w.floors("cat") == [("Idle", "fire-1")]
    assert w.relay.counters["sessions_expired"] == 1
    assert "ann@no" not in [d["identity"] for d in w.relay.status()["devices"]]
    w.check_counters()


def _long_uptime(start):
    """Registration, affiliation, floor grant and release, T1, keep-alives and a keep-alive
    expiry with every core's clock starting at ``start``; each timer is checked to the ms."""
    w = World(start=start, keepalive=5, t1=2.0)
    sent = []  # (ms since start, source, signalling type or None) of each datagram to the relay
    w.tap = lambda src, dst, data: dst == RELAY and sent.append((w.since(start), src, sig_type(data)))
    for n in ("ann", "bob", "cat"):
        w.device(n, [G1])
    assert [w.devs[n].affiliated for n in ("ann", "bob", "cat")] == [[G1]] * 3
    w.clear()
    w.run(w.at(12000))
    ka = [t for t, src, k in sent if src == w.addr["ann"] and k == sig.KEEPALIVE]
    assert ka == [5000, 10000], ka  # every 5 s to the ms, across the wrap when there is one
    w.request("ann")
    assert w.floors("ann") == [("Granted", "fire-1", "ann")]
    assert w.floors("bob") == [("Taken", "fire-1", "ann")]
    w.talk("ann", 3)  # the last packet at 12.04 s
    last = w.at(12040)
    w.run(last + 1999)
    assert w.floors("bob") == []
    w.step(1)  # T1 (2 s) after the last voice, to the ms
    assert w.floors("bob") == [("Idle", "fire-1")] and w.relay.status()["groups"][0]["holder"] is None
    w.request("bob")
    assert w.floors("bob") == [("Granted", "fire-1", "bob")]
    w.release("bob")
    assert w.floors("cat")[-1] == ("Idle", "fire-1")
    # cat goes silent: the relay drops it 3.5 keep-alive intervals after it last heard it (a
    # keep-alive or a Floor Ack).
    seen = [t for t, src, k in sent if src == w.addr["cat"]][-1]
    w.lose = lambda src, dst, data: src == w.addr["cat"] or dst == w.addr["cat"]
    w.run(w.at(seen + 17499))
    assert w.relay.counters["sessions_expired"] == 0
    w.step(1)
    assert w.relay.counters["sessions_expired"] == 1
    assert [d["identity"] for d in w.relay.status()["devices"]] == ["ann@no", "bob@no"]
    assert isinstance(w.relay.next_deadline(), int) and 0 <= w.relay.next_deadline() <= MASK
    w.check_counters()
    return w


def test_cores_run_after_60_days_of_uptime():
    _long_uptime(DAY_MS * 60 & MASK)


def test_cores_run_across_the_clock_wrap():
    w = _long_uptime(PERIOD - 7000)  # the clock wraps 7 s in: between keep-alives, before the floor
    assert w.now < 60000 and tdiff(w.now, PERIOD - 7000) > 20000


def _scanned_deadline(relay):
    """What next_deadline used to compute by asking every floor server."""
    from opmob.ticks import earliest

    d = earliest(relay._sweep_at, relay.links._link_at)
    d = earliest(d, relay._txn_at)
    for g in relay._floors:
        d = earliest(d, relay._floors[g].next_deadline())
    return d


def test_next_deadline_from_the_heap_equals_a_scan_of_every_floor():
    w = World(start=PERIOD - 3000)
    for n in ("ann", "bob", "cat", "dan"):
        w.device(n, [G1, G2])
    seen = 0
    for step in range(40):
        who = ("ann", "bob", "cat", "dan")[step % 4]
        g = (G1, G2)[step % 2]
        if step % 5 == 0:
            w.request(who, g)
        elif step % 5 == 1:
            w.talk(who, 2)
        elif step % 5 == 3:
            w.release(who, g)
        w.step(150 * (step % 7))
        assert w.relay.next_deadline() == _scanned_deadline(w.relay), step
        seen += w.relay._floor_due.earliest() is not None
    assert seen > 10  # floors had timers running most of the time
    w.check_counters()


def test_relay_reports_typed_events_for_the_driver_to_drain():
    w = World(keepalive=5)
    for n in ("ann", "bob", "cat"):
        w.device(n, [G1])
    got = w.relay.events()
    regs = [e for e in got if e[0] == ev.REGISTERED]
    assert [e[1] for e in regs] == ["ann@no", "bob@no", "cat@no"]
    assert regs[0][2] == w.devs["ann"].ssrc
    assert (ev.AFFILIATED, "bob@no", G1, sig.AFF_OK) in got
    assert w.relay.events() == ()  # drained
    w.request("ann")
    w.request("bob", queue=False)
    assert w.relay.events() == [(ev.FLOOR_GRANTED, G1, "ann@no"), (ev.FLOOR_DENIED, G1, "bob@no", 1)]
    w.talk("ann", 3)
    assert w.relay.events() == [(ev.VOICE_STARTED, G1, "ann@no")]
    w.release("ann")
    assert w.relay.events() == [(ev.VOICE_STOPPED, G1, "ann@no"), (ev.FLOOR_IDLE, G1)]
    # A talker without the floor is revoked once (its revoke's repeats are no new event).
    w.act("cat", w.devs["cat"].send_voice(w.now, w.rtp_packet("cat")))
    w.step(500)
    w.act("cat", w.devs["cat"].send_voice(w.now, w.rtp_packet("cat")))
    w.step(600)  # T8: the revoke is repeated, cat still sent media
    assert w.relay._floors[G1].counters["t8_revoke_repeats"] == 1
    assert [e for e in w.relay.events() if e[0] == ev.FLOOR_REVOKED] == [(ev.FLOOR_REVOKED, G1, "cat@no", 3)]
    w.relay_out(w.relay.device_control(w.now, "bob@no", "stun"))
    w.act("ann", w.devs["ann"].deregister(w.now))
    got = w.relay.events()
    assert (ev.DEVICE_CONTROL, "bob@no", "stun") in got and (ev.DEREGISTERED, "ann@no", "deregistered") in got
    w.lose = lambda src, dst, data: src == w.addr["cat"] or dst == w.addr["cat"]
    w.step(30000)
    assert (ev.DEREGISTERED, "cat@no", "expired") in w.relay.events()
    w.check_counters()


def test_key_log_gets_each_hops_keys_only_when_asked():
    from opmob.relay import Relay

    logged = []
    w = World()
    w.relay = Relay(w.cfg, w.registry, w.store, Rng(3).bytes, w.now, key_log=lambda *a: logged.append(a))
    uplink = []
    w.tap = lambda src, dst, data: dst == RELAY and not sig.is_sig(data) and uplink.append(bytes(data))
    a = w.device("ann", [G1])
    w.device("bob", [G1])
    assert [(x[0], x[1], x[2]) for x in logged[:2]] == [
        ("device_up", "ann@no", a.ssrc),
        ("device_down", "ann@no", a.ssrc),
    ]
    assert all(len(x[3]) == 16 and len(x[4]) == 14 for x in logged)
    w.request("ann")
    uplink.clear()
    sent = w.talk("ann", 1)
    # What a capture tool does with the logged key: read ann's voice off the wire.
    rx = srtp.SrtpSession(logged[0][3], logged[0][4])
    want = bytes(sent[0][:8]) + a.ssrc.to_bytes(4, "big") + bytes(sent[0][12:])  # the device sets its SSRC
    assert [bytes(rx.unprotect(p)) for p in uplink if ssrc_of(p) == a.ssrc] == [want]
    # Without key_log (the default) no key leaves the relay, and status never shows one.
    assert "key" not in repr(World().relay.status()).lower().replace("key_id", "")


def test_late_entry_gets_floor_taken_and_voice_at_once():
    w = trio()
    d = w.device("dan", [])
    w.request("ann")
    w.talk("ann", 3)
    w.clear()
    w.act("dan", d.affiliate(w.now, [G1]))
    assert w.floors("dan") == [("Taken", "fire-1", "ann")]
    w.talk("ann", 4)
    assert len(w.heard("dan")) == 4
    w.check_counters()


def test_receive_only_member():
    w = trio()
    k = w.device("kim", [G1])
    ev = w.events("kim", "floor")
    assert [floor_view(e[1], e[2]) for e in ev] == [("Idle", "fire-1")]
    w.request("kim")
    assert w.floors("kim") == [("Deny", "fire-1", mcpt.DENY_RECEIVE_ONLY)]
    w.request("ann")
    ev = w.events("kim", "floor")
    assert ev[0][2].kind == mcpt.FLOOR_TAKEN and ev[0][2].permission == 0
    w.talk("ann", 2)
    assert len(w.heard("kim")) == 2 and k.state == "registered"


def test_one_floor_at_a_time():
    w = World()
    for n in ("ann", "bob"):
        w.device(n, [G1, G2])
    w.clear()
    w.request("ann", G1)
    assert w.floors("ann") == [("Granted", "fire-1", "ann")]
    w.request("ann", G2)
    assert w.floors("ann") == [("Deny", "fire-2", mcpt.DENY_OTHER)]
    assert w.relay.status()["groups"][1]["holder"] is None
    # Voice goes to the group it holds, fire-1.
    w.clear()
    w.talk("ann", 2)
    assert len(w.heard("bob")) == 2
    w.release("ann", G1)
    w.request("ann", G2)
    assert w.floors("ann")[-1] == ("Granted", "fire-2", "ann")
    w.check_counters()


# --- voice --------------------------------------------------------------------------------------


def test_voice_fans_out_to_affiliated_members_only():
    w = trio()
    w.device("eve", [G2])
    w.device("dan", [G1, G2])
    w.request("ann")
    w.clear()
    sent = w.talk("ann", 5)
    ssrc = w.devs["ann"].ssrc
    for n in ("bob", "cat", "dan"):
        got = w.heard(n)
        assert len(got) == 5
        for p, q in zip(sent, got):
            assert ssrc_of(q) == ssrc and q[:8] == p[:8] and q[12:] == p[12:]
    assert w.heard("ann") == [] and w.heard("eve") == []
    c = w.relay.counters
    assert c["voice_in"] == 5 and c["voice_out"] == 15
    w.check_counters()


def test_voice_without_permission_is_dropped_and_revoked():
    w = trio()
    w.request("ann")
    w.clear()
    w.talk("bob", 3)
    assert w.floors("bob") == [("Revoke", "fire-1", mcpt.REVOKE_NO_PERMISSION)]
    assert w.heard("ann") == [] and w.heard("cat") == []
    assert w.relay.counters["drop_rtp_not_permitted"] == 3
    # Idle group: voice without a grant is dropped too.
    w.release("ann")
    w.clear()
    w.talk("cat", 1)
    assert w.heard("ann") == [] and w.floors("cat") == [("Revoke", "fire-1", mcpt.REVOKE_NO_PERMISSION)]
    w.check_counters()


def test_listener_keeps_hearing_a_talker_who_spoke_at_length_elsewhere():
    w = World()
    w.device("ann", [G1, G2])
    w.device("bob", [G1])
    w.device("cat", [G2])
    w.request("ann", G1)
    w.rtp_seq["ann"] = 40000
    w.talk("ann", 2)
    w.release("ann", G1)
    w.request("ann", G2)
    # Ten minutes of talk in fire-2 bob did not hear, in three steps: 40001 -> 60000 -> (wrap)
    # 14000 -> 30000. Every step is one SRTP can follow, but bob's context last saw 40001.
    for seq in (60000, 14000, 30000):
        w.rtp_seq["ann"] = seq
        w.talk("ann", 1)
    w.release("ann", G2)
    w.request("ann", G1)
    w.clear()
    sent = w.talk("ann", 2)
    got = w.heard("bob")
    assert len(got) == 2 and w.relay.counters["voice_protect_failed"] == 0
    # Re-based to carry on from the last one bob got (bob's stream began at 40000 with its top
    # bit cleared, 7232); everything else as sent.
    assert [(p[2] << 8) | p[3] for p in got] == [7234, 7235]
    for p, q in zip(sent, got):
        assert p[4:8] == q[4:8] and p[12:] == q[12:]
    w.check_counters()


def test_a_listener_that_missed_the_start_of_a_stream_at_the_wrap_still_hears_it():
    # A talker whose sequence numbers are near the wrap (a partner's device may start anywhere),
    # and bob loses every packet until after it: bob's SRTP context takes ROC 0 at the first
    # packet it gets, so the relay starts each stream towards a listener below 2^15.
    w = trio()
    w.request("ann")
    w.clear()
    w.rtp_seq["ann"] = 0xFFF0
    baddr = w.addr["bob"]
    w.lose = lambda src, dst, data: dst == baddr and data[1] < 128
    w.talk("ann", 40)  # ann's numbers wrap after 16
    w.lose = None
    assert len(w.heard("cat")) == 40 and w.heard("bob") == []
    sent = w.talk("ann", 5)
    got = w.heard("bob")
    assert len(got) == 5, w.devs["bob"].counters
    assert [(p[2] << 8) | p[3] for p in got] == [0x7FF0 + 40 + k for k in range(5)]
    for p, q in zip(sent, got):
        assert p[4:8] == q[4:8] and p[12:] == q[12:]
    w.check_counters()


def test_replayed_srtp_is_rejected():
    w = trio()
    w.request("ann")
    caught = []
    w.tap = lambda src, dst, data: caught.append(data) if src == w.addr["ann"] and data[1] < 128 else None
    w.clear()
    w.talk("ann", 3)
    assert len(w.heard("bob")) == 3
    w.clear()
    for p in caught:
        assert w.inject(w.addr["ann"], p) == []
    assert w.relay.counters["drop_rtp_replayed"] == 3
    assert w.heard("bob") == [] and w.heard("cat") == []
    # A replayed floor message is refused the same way.
    w.tap = None
    w.check_counters()


def test_replayed_srtcp_is_rejected():
    w = trio()
    caught = []
    w.tap = lambda src, dst, data: (
        caught.append(data) if src == w.addr["bob"] and 192 <= data[1] <= 223 else None
    )
    w.request("bob")
    w.clear()
    w.tap = None
    for p in caught:
        w.inject(w.addr["bob"], p)
    assert w.relay.counters["drop_rtcp_replayed"] == len(caught) >= 1
    assert w.floors("ann") == [] and w.floors("bob") == []
    w.check_counters()


# --- restart ------------------------------------------------------------------------------------


def test_restart_during_a_call_devices_come_back_by_themselves():
    w = World()
    for n in ("ann", "bob", "cat"):
        w.device(n, [G1, G2] if n == "ann" else [G1])
    w.request("ann")
    w.talk("ann", 5)
    w.clear()
    before = dict((d["identity"], d["groups"]) for d in w.relay.status()["devices"])
    w.restart()
    st = w.relay.status()
    assert [d["state"] for d in st["devices"]] == [STALE] * 3
    assert dict((d["identity"], d["groups"]) for d in st["devices"]) == before
    assert w.relay.counters["restored"] == 3
    # Nobody touches the devices: within one keep-alive interval they all re-register.
    w.talk("ann", 3)  # voice into a relay without keys is dropped, nothing else happens
    assert w.relay.counters["drop_rtp_no_keys"] == 3
    w.run(w.now + 16000)
    st = w.relay.status()
    assert [d["state"] for d in st["devices"]] == ["registered"] * 3
    assert dict((d["identity"], d["groups"]) for d in st["devices"]) == before
    for n in ("ann", "bob", "cat"):
        assert ("reregister", sig.CAUSE_UNKNOWN_SESSION) in w.events(n)
        assert w.devs[n].state == "registered"
    # The group carries on.
    w.request("bob")
    assert w.floors("bob") == [("Granted", "fire-1", "bob")]
    w.talk("bob", 4)
    assert len(w.heard("ann")) == 4 and len(w.heard("cat")) == 4
    w.check_counters()


def test_restart_keeps_no_keys_and_drops_what_no_longer_holds():
    w = trio()
    for kind in ("registration", "affiliation"):
        for key, rec in w.store.items(kind):
            assert sorted(rec) == (
                ["addr", "key_id", "session", "ssrc"] if kind == "registration" else ["groups"]
            )
    w.registry.set_status("bob@no", "killed")
    w.store.put("registration", "zed@no", {"session": 5, "ssrc": 6, "key_id": 1, "addr": ["1.2.3.4", 5]})
    w.store.put("registration", "cat@no", {"session": "x"})
    w.restart()
    st = w.relay.status()
    assert [d["identity"] for d in st["devices"]] == ["ann@no"]
    assert w.relay.counters["restored"] == 1 and w.relay.counters["restore_dropped"] == 3
    assert w.store.get("registration", "zed@no") is None
    # A stale registration that never comes back is forgotten after 3.5 keep-alive intervals.
    w.lose = lambda src, dst, data: True
    w.run(w.now + 53000)
    assert w.relay.status()["devices"] == [] and w.store.items("registration") == []


def test_keepalive_answers():
    w = World(keepalive=10, expiry=100)
    a = w.device("ann", [G1])
    w.run(70000)
    assert w.relay.counters["keepalives"] == 7 and a.key_id == 1
    w.run(81000)  # re-registration at 80 % of the expiry
    assert a.key_id == 2 and a.state == "registered"
    assert w.relay.status()["devices"][0]["groups"] == [G1]
    w.check_counters()


# --- robustness ---------------------------------------------------------------------------------


def _mutations(rng, valid):
    """Garbage of every shape the demultiplexer must survive."""
    k = rng.below(9)
    if k == 0:
        return rng.bytes(rng.below(60))
    if k == 1:
        return b"OM\x01" + rng.bytes(rng.below(80))
    if k == 2:
        return bytes((0x80 | rng.below(64), 192 + rng.below(32))) + rng.bytes(rng.below(80))
    if k == 3:
        return bytes((0x80 | rng.below(64), rng.below(128))) + rng.bytes(rng.below(120))
    p = bytearray(valid[rng.below(len(valid))])
    if k == 4 and p:
        p[rng.below(len(p))] ^= 1 << rng.below(8)
    elif k == 5:
        p = p[: rng.below(len(p) + 1)]
    elif k == 6:
        p += rng.bytes(1 + rng.below(8))
    elif k == 7 and len(p) > 12:
        p[4 + rng.below(8)] = rng.below(256)
    return bytes(p)


def test_garbage_storm_is_counted_and_harmless():
    w = trio()
    valid = []
    w.tap = lambda src, dst, data: valid.append(data) if dst == RELAY else None
    w.request("ann")
    w.talk("ann", 5)
    w.release("ann")
    w.run(w.now + 16000)
    w.tap = None
    w.clear()
    rng = Rng(2024)
    before = dict(w.relay.counters)
    n = 1500
    srcs = [SRC, w.addr["bob"], RELAY]
    for _ in range(n):
        w.relay.on_datagram(w.now, srcs[rng.below(3)], _mutations(rng, valid))
    c = w.relay.counters
    assert c["rx_datagrams"] - before["rx_datagrams"] == n
    assert c["rx_datagrams"] == c["accepted"] + w.relay.dropped()
    assert w.relay.dropped() > 1000
    # The group still works afterwards.
    w.clear()
    w.request("cat")
    assert w.floors("cat")[-1] == ("Granted", "fire-1", "cat")
    w.talk("cat", 2)
    assert len(w.heard("bob")) == 2
    w.check_counters()


def test_status_holds_no_secrets():
    w = trio()
    w.request("ann", ind=mcpt.IND_EMERGENCY)
    import json

    text = json.dumps(w.relay.status())
    from relaynet import hexs

    for n in ("ann", "bob", "cat"):
        assert hexs(secret_of(n)) not in text
        s = w.relay._by_identity[ident(n)]
        assert s.keys is None and s.vector is None
    assert "floor_ssrc" in text and floor_ssrc(G1) == w.relay.status()["groups"][0]["floor_ssrc"]
