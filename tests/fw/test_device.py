"""The device session (opmob.device) against a real relay core, in memory, under a virtual clock."""

from fwtest import Rng, raises
from opmob import authvec, mcpt, sig
from opmob.device import BACKOFF_REFUSED, DeviceSession
from opmob.floorid import floor_ssrc
from opmob.registry import Registry
from opmob.relay import Relay
from opmob.store import MemoryStore
from opmob.ticks import tadd
from relaynet import G1, G2, RELAY, World, export_doc, hexs, ident, secret_of, sig_type


def sent_by(w, name, *mtypes):
    """Record the signalling of ``mtypes`` that ``name`` (None: anyone) sends, as ``(time, bytes)``
    in a list filled as it happens."""
    got = []
    addr = w.addr[name] if name in w.addr else None

    def tap(src, dst, data):
        if (addr is None or src == addr) and sig_type(data) in mtypes:
            got.append((w.now, data))

    w.tap = tap
    return got


# --- registration -------------------------------------------------------------------------------


def test_registration_events_in_order():
    w = World()
    d = w.device("ann", [G1, (G2, 7, sig.AFF_SELECTED)])
    ev = w.events("ann")
    assert ev[0] == ("persist", (1, 1), (None, 0))  # vid 1 recorded before answering
    assert ev[1] == ("registered", d.ssrc)
    assert ev[2:4] == [("affiliation", G1, sig.AFF_OK), ("affiliation", G2, sig.AFF_OK)]
    floors = [(e[0], e[1], e[2].kind) for e in ev[4:]]
    assert floors == [("floor", G1, mcpt.FLOOR_IDLE), ("floor", G2, mcpt.FLOOR_IDLE)]
    assert d.state == "registered" and d.session != 0 and d.key_id == 1
    assert d.affiliated == [G1, G2]
    assert w.relay._by_identity["ann@no"].talk_group() == G2
    # Floor Idle asked for an ack; the device gave it, so T7 does not repeat it.
    w.step(12000)
    assert w.events("ann", "floor") == []
    w.check_counters()


def test_secret_and_identity_are_checked():
    raises(ValueError, DeviceSession, "Ann@no", bytes(16), RELAY, Rng(1).bytes)
    raises(ValueError, DeviceSession, "ann@no", bytes(15), RELAY, Rng(1).bytes)
    d = DeviceSession("ann@no", bytes(16), RELAY, Rng(1).bytes)
    raises(ValueError, d.affiliate, 0, ["not a group"])
    raises(ValueError, d.affiliate, 0, [("fire-1@no", 256, 0)])
    assert "secret" not in repr(d) and hexs(bytes(16)) not in repr(d)


def test_keepalive_every_interval():
    w = World()
    w.device("ann", [G1])
    ka = sent_by(w, "ann", sig.KEEPALIVE)
    w.run(61000)
    assert [t for t, _ in ka] == [15000, 30000, 45000, 60000]
    assert w.relay.counters["keepalives"] == 4
    w.check_counters()


def test_reregisters_before_expiry_and_keeps_its_groups():
    w = World(keepalive=10, expiry=100)
    d = w.device("ann", [G1, G2])
    sent = sent_by(w, "ann", sig.REGISTER, sig.AFFILIATE)
    w.run(79000)
    assert d.key_id == 1 and sent == []
    w.run(81000)
    # REGISTER carried the groups, so no AFFILIATE was needed.
    assert [(t, sig_type(x)) for t, x in sent] == [(80000, sig.REGISTER)]
    assert d.key_id == 2 and d.state == "registered" and d.affiliated == [G1, G2]
    assert w.relay.status()["devices"][0]["groups"] == [G1, G2]
    w.check_counters()


def test_reregisters_when_the_relay_asks():
    w = World(keepalive=10, expiry=100)
    d = w.device("ann", [G1])
    w.relay._by_identity["ann@no"].expires_at = w.now + 15000  # as if it missed its 80 % mark
    w.run(11000)
    assert ("reregister", sig.CAUSE_EXPIRED) in w.events("ann")
    assert d.key_id == 2 and d.affiliated == [G1]


def test_rogue_relay_is_refused():
    w = World()
    store = MemoryStore()
    doc = export_doc()
    for dev in doc["devices"]:
        if dev["identity"] == "ann@no":
            dev["secret"] = hexs(b"\x42" * 16)  # a relay that does not have ann's home vectors
    Registry(store, "no").load_export(doc)
    w.relay = Relay(w.cfg, Registry(store, "no"), store, Rng(5).bytes, 0)
    fails = sent_by(w, None, sig.AUTH_FAILURE)
    d = w.device("ann", [G1])
    assert d.state == "waiting" and d.session == 0 and d.ssrc is None
    assert w.events("ann") == [("relay_refused", sig.CAUSE_AUTN_INVALID)]
    assert d.counters["autn_refused"] == 1
    assert len(fails) == 1 and sig.decode(fails[0][1]).cause == sig.CAUSE_AUTN_INVALID
    # Nothing from that relay's challenge was kept: no vector id used, no keys.
    assert d.vid_window.highest is None and d._p_keys is None
    assert d.send_floor(w.now, mcpt.FloorMsg(mcpt.FLOOR_REQUEST)) == []
    assert BACKOFF_REFUSED <= d.next_deadline() <= BACKOFF_REFUSED * 1.25


def test_stale_vector_id_resynchronises_the_registry():
    w = World()
    d = w.device("ann", [G1], vid_state=(1000, 1), start=False)
    fails = sent_by(w, "ann", sig.AUTH_FAILURE)
    w.act("ann", d.start(w.now))
    assert len(fails) == 1
    f = sig.decode(fails[0][1])
    assert f.cause == sig.CAUSE_SYNC_FAILURE and f.vid == 1000
    assert d.state == "registered" and d.vid_window.highest == 1001
    assert w.registry.device("ann@no").vid == 1001
    assert w.relay.counters["auth_sync_failures"] == 1 and d.counters["sync_failures"] == 1
    w.check_counters()


def test_replayed_challenge_is_not_answered_with_a_response():
    w = World()
    chals = sent_by(w, None, sig.CHALLENGE)
    d = w.device("ann", [G1])
    old = sig.decode(chals[0][1])
    # Later, a relay on the path keeps the device's REGISTER and answers with the old challenge.
    w.lose = lambda src, dst, data: sig_type(data) == sig.REGISTER
    w.act("ann", d._register(w.now))
    txid = d._reg_txid
    replay = sig.SigMsg(
        sig.CHALLENGE, txid=txid, session=old.session, down=True, rand=old.rand, autn=old.autn, vid=old.vid
    )
    out = d.on_datagram(w.now, RELAY, sig.encode(replay))
    assert len(out) == 1
    f = sig.decode(out[0][1])
    assert f.type == sig.AUTH_FAILURE and f.cause == sig.CAUSE_SYNC_FAILURE and f.vid == old.vid
    assert f.auts == authvec.auts(secret_of("ann"), old.rand, old.vid)
    assert d._p_keys is None


def test_relay_lost_then_back_off_then_recovery():
    w = World()
    d = w.device("ann", [G1])
    regs = sent_by(w, "ann", sig.REGISTER)
    w.lose = lambda src, dst, data: True
    w.run(35000)
    assert ("relay_lost",) in w.events("ann")  # KEEPALIVE at 15 s, timed out at 34.5 s
    w.run(200000)
    firsts = []
    for t, data in regs:
        if not firsts or data != regs[[x[0] for x in regs].index(firsts[-1])][1]:
            firsts.append(t)
    gaps = [b - a for a, b in zip(firsts, firsts[1:])]
    assert firsts[0] == 34500 and len(gaps) >= 3
    # Each attempt runs its 19.5 s of retransmissions, then waits longer than the last time.
    waits = [g - 19500 for g in gaps]
    for a, b in zip(waits, waits[1:]):
        assert b > a * 1.4
    assert d.state in ("registering", "waiting")
    w.lose = None
    w.run(400000)
    assert d.state == "registered" and d.affiliated == [G1]
    st = w.relay.status()
    assert st["devices"][0]["groups"] == [G1] and w.relay.counters["sessions_expired"] == 1
    w.check_counters()


def test_rejected_device_waits_as_told():
    w = World(max_devices=1)
    a = w.device("ann", [G1])
    b = w.device("bob", [G1])
    assert b.state == "waiting" and ("rejected", sig.CAUSE_NO_RESOURCES) in w.events("bob")
    w.act("ann", a.deregister(w.now))
    t0 = w.now
    while b.state != "registered":
        w.step(500)
    assert 30000 <= w.since(t0) <= 30000 * 1.25 + 500
    assert b.affiliated == [G1]


def test_nothing_goes_out_unregistered():
    w = World()
    w.lose = lambda src, dst, data: True
    d = w.device("ann", [G1])
    assert d.state == "registering"
    assert d.send_floor(w.now, mcpt.FloorMsg(mcpt.FLOOR_REQUEST)) == []
    assert d.send_voice(w.now, w.rtp_packet("ann")) == []
    assert d.emergency(w.now) == [] and d.deregister(w.now) == [] and d.affiliate(w.now, [G2]) == []
    assert d.counters["floor_refused"] == 1 and d.counters["voice_refused"] == 1


def test_floor_events_name_their_group():
    w = World()
    a = w.device("ann", [G1, G2])
    w.device("bob", [G1, G2])
    w.clear()
    w.request("ann", G2)
    ev = w.events("ann", "floor")
    assert [(e[1], e[2].kind) for e in ev] == [(G2, mcpt.FLOOR_GRANTED)]
    assert ev[0][2].ssrc == floor_ssrc(G2) and ev[0][2].ssrc_field == a.ssrc
    assert [(e[1], e[2].kind) for e in w.events("bob", "floor")] == [(G2, mcpt.FLOOR_TAKEN)]
    w.check_counters()


def test_unanswered_floor_request_finds_a_restarted_relay_quickly():
    w = World()
    a = w.device("ann", [G1])
    w.device("bob", [G1])
    w.step(5000)
    w.clear()
    w.restart()
    t0 = w.now
    w.request("ann")
    assert w.floors("ann") == []
    w.step(1200)  # no floor answer within 1 s: the device asks with a KEEPALIVE, learns, registers
    assert a.state == "registered" and a.key_id == 2 and w.since(t0) < 1500
    assert ("reregister", sig.CAUSE_UNKNOWN_SESSION) in w.events("ann")
    w.request("ann")
    assert w.floors("ann")[-1] == ("Granted", "fire-1", "ann")


def test_full_stream_table_brings_fresh_keys():
    from opmob import device as devmod

    saved = devmod.RX_STREAMS
    devmod.RX_STREAMS = 2  # one floor server and one talker
    try:
        w = World()
        d = w.device("dan", [G1])
        w.device("ann", [G1])
        w.device("bob", [G1])
        w.request("ann")
        w.talk("ann", 2)
        w.release("ann")
        w.request("bob")
        w.clear()
        w.talk("bob", 1)  # a third stream under this key: not heard, fresh keys asked for
        assert d.counters["drop_rtp_streams_full"] == 1 and w.heard("dan") == []
        assert d.key_id == 2 and d.state == "registered"
        w.talk("bob", 2)
        assert len(w.heard("dan")) == 2
    finally:
        devmod.RX_STREAMS = saved


def test_deregister():
    w = World()
    d = w.device("ann", [G1])
    w.act("ann", d.deregister(w.now))
    assert d.state == "idle" and d.session == 0 and ("deregistered",) in w.events("ann")
    assert w.relay.status()["devices"] == [] and d.next_deadline() is None
    # A retransmitted DEREGISTER still gets its answer (the relay keeps the keys a while).
    assert w.relay.counters["deregistrations"] == 1


# --- control from the home ------------------------------------------------------------------------


def _control(w, name, action, seq, proof):
    """A DEVICE_CONTROL under the relay's session key, with a chosen seq and proof: what a relay
    that holds the session but not the device's secret could send."""
    s = w.relay._by_identity[ident(name)]
    m = sig.SigMsg(
        sig.DEVICE_CONTROL,
        txid=s.txns.new_txid(),
        session=s.sid,
        down=True,
        action=action,
        seq=seq,
        proof=proof,
    )
    return sig.encode(m, s.tx)


def test_forged_and_replayed_controls_are_refused():
    w = World()
    d = w.device("ann", [G1])
    caught = []
    w.tap = lambda src, dst, data: caught.append(data) if sig_type(data) == sig.DEVICE_CONTROL else None
    w.relay_out(w.relay.device_control(w.now, "ann@no", "stun"))
    w.relay_out(w.relay.device_control(w.now, "ann@no", "revive"))
    assert d.state == "registered" and len(caught) == 2
    w.relay_out(w.relay.device_control(w.now, "ann@no", "stun"))
    assert d.state == "stunned"
    w.clear()
    # The captured revive, as sent: the cached answer comes back, nothing is done again.
    out = d.on_datagram(w.now, RELAY, caught[1])
    assert len(out) == 1 and d.state == "stunned"
    # Its proof in a new message: the sequence number was used.
    k = secret_of("ann")
    seq = w.registry.device("ann@no").cseq
    old = authvec.control_proof(k, "ann@no", sig.CTRL_REVIVE, 1)
    out = d.on_datagram(w.now, RELAY, _control(w, "ann", sig.CTRL_REVIVE, 1, old))
    up = w.relay._by_identity["ann@no"].rx  # the device answers up, in the relay's direction
    e = sig.decode(out[0][1], up)
    assert e.type == sig.ERROR and e.cause == sig.CAUSE_NOT_AUTHORIZED and d.state == "stunned"
    # A proof made without the secret.
    out = d.on_datagram(w.now, RELAY, _control(w, "ann", sig.CTRL_KILL, seq + 5, bytes(16)))
    assert sig.decode(out[0][1], up).cause == sig.CAUSE_NOT_AUTHORIZED
    assert d.state == "stunned" and d.counters["control_refused"] == 2
    # Long after, the captured message is a replay.
    w.run(w.now + 40000)
    assert d.on_datagram(w.now, RELAY, caught[1]) == [] and d.counters["drop_sig_replayed"] == 1
    # The home's genuine revive still works.
    w.relay_out(w.relay.device_control(w.now, "ann@no", "revive"))
    assert d.state == "registered"
    assert w.events("ann", "persist")[-1][2][0] == w.registry.device("ann@no").cseq


def test_device_drops_foreign_and_garbage():
    w = World()
    d = w.device("ann", [G1])
    valid = []
    w.tap = lambda src, dst, data: valid.append(data) if dst == w.addr["ann"] else None
    w.device("bob", [G1])
    w.request("bob")
    w.talk("bob", 3)
    w.tap = None
    assert d.on_datagram(w.now, ("10.9.9.9", 1), valid[0]) == [] and d.counters["drop_foreign"] == 1
    rng = Rng(77)
    for _ in range(600):
        p = bytearray(valid[rng.below(len(valid))])
        k = rng.below(4)
        if k == 0:
            p[rng.below(len(p))] ^= 1 << rng.below(8)
        elif k == 1:
            p = p[: rng.below(len(p))]
        elif k == 2:
            p = bytearray(rng.bytes(rng.below(40)))
        d.on_datagram(w.now, RELAY, bytes(p))
    w.check_counters()
    assert d.state == "registered"


def test_pending_keeps_a_request_waiting_only_under_the_session_keys():
    import struct

    w = World()
    d = w.device("ann", [G1])
    (dst, req) = d.affiliate(w.now, [G2])[0]  # never delivered: the relay is working on it
    assert dst == RELAY
    txid = struct.unpack(">I", req[8:12])[0]
    s = w.relay._by_identity["ann@no"]
    forged = sig.encode(sig.SigMsg(sig.PENDING, txid=txid, session=d.session, down=True))
    assert d.on_datagram(w.now, RELAY, forged) == []
    assert d.counters["drop_sig_unprotected_pending"] == 1 and d.counters["pending_rx"] == 0
    real = sig.encode(sig.SigMsg(sig.PENDING, txid=txid, session=d.session, down=True), s.tx)
    # The device alone, its clock driven by hand: running the world would carry these
    # retransmissions to the relay, which would answer them.
    t0 = w.now
    for at in (500, 1500, 3500, 7500, 11500):  # its retransmissions, none answered
        assert d.poll(tadd(t0, at)) == [(RELAY, req)]
    assert d._txns.get(txid).sends == 6  # one send left before it gives up
    now = tadd(t0, 12000)
    assert d.on_datagram(now, RELAY, real) == [] and d.counters["pending_rx"] == 1
    # Keep waiting: the attempts start over, the next one at the longest interval.
    t = d._txns.get(txid)
    assert t.sends == 1 and t.deadline == tadd(now, 4000)
    # A PENDING for nothing in flight is unsolicited.
    other = sig.encode(sig.SigMsg(sig.PENDING, txid=txid + 99, session=d.session, down=True), s.tx)
    d.on_datagram(now, RELAY, other)
    assert d.counters["drop_sig_unsolicited"] == 1
