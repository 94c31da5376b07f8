"""One relay-to-relay link's state machine (opmob.relay_peer.Peer) alone, on bytes and time: the
handshake, keys, keep-alive, silence, back-off. No relay, no groups; both runtimes. The clock
starts just before its 2^30 wrap, so every timer here crosses it."""

from fwtest import Rng
from opmob import rtp, sig, srtp
from opmob.errors import AuthFailed
from opmob.relay_config import RelayConfig
from opmob.relay_peer import LINK_CONNECTING, LINK_DOWN, LINK_UP, RETRY_MIN, Peer
from opmob.ticks import PERIOD, tadd, tdiff

PSK = bytes(range(32))
RA = ("10.0.0.1", 7700)
RB = ("10.0.0.2", 7700)
KA_MS = 2000
T0 = PERIOD - 1500


def lcfg(me, peer, initiate, psk):
    d = {"relay": {"identity": me}, "registry": {"path": "unused"}, "link": [{"peer": peer, "key_file": "k"}]}
    if initiate:
        d["link"][0]["host"] = RA[0]
        d["link"][0]["port"] = RA[1]
    lk = RelayConfig.from_dict(d).links[0]
    lk.psk = psk
    return lk


def pair(psk_b=PSK, now=T0, keys=None):
    """B initiates to A, as in test_relay_link_core; ``keys``: a list the key log appends to."""
    log = None if keys is None else (lambda *a: keys.append(a))
    b = Peer(
        lcfg("relay-b@no", "relay-a@no", True, psk_b),
        "relay-b@no",
        RA,
        Rng(1).bytes,
        srtp.SrtpSession,
        KA_MS,
        600,
        now,
        log,
    )
    a = Peer(
        lcfg("relay-a@no", "relay-b@no", False, PSK),
        "relay-a@no",
        None,
        Rng(2).bytes,
        srtp.SrtpSession,
        KA_MS,
        600,
        now,
        log,
    )
    return a, b


def handshake(a, b, now, sid=0x5151):
    """HELLO, CHALLENGE, AUTH, ACK between the two, all at ``now``; the LINK_ACK's bytes."""
    out, ticked = b.tick(now)
    assert len(out) == 1 and not ticked and b.state == LINK_CONNECTING
    hello = sig.decode(out[0])
    assert hello.type == sig.LINK_HELLO and hello.relay == "relay-b@no" and hello.peer == "relay-a@no"
    ch = sig.decode(a.challenge(now, hello, sid, bytes(range(16))))
    assert ch.type == sig.LINK_CHALLENGE and ch.session == sid and b.answers_hello(ch.txid)
    assert b.on_response(now, ch) is not None
    auth_bytes = b.on_challenge(now, ch)
    if auth_bytes is None:
        return None
    assert sig.peek(auth_bytes).session == sid
    auth = sig.decode(auth_bytes, a.auth_key(sid))
    assert a.auth_ok(sid, auth)
    ack_bytes = a.accept(now, RB, sid, auth)
    a.opened(now)
    ack = sig.decode(ack_bytes, b.rx)
    assert ack.type == sig.LINK_ACK and ack.keepalive == KA_MS // 1000 and ack.expiry == 600
    assert b.on_response(now, ack).type == sig.LINK_AUTH
    b.opened(now)
    return ack_bytes


def test_handshake_opens_both_sides_with_matching_keys():
    keys = []
    a, b = pair(keys=keys)
    assert b.next_deadline() == T0 and a.next_deadline() is None and a.state == LINK_DOWN
    ack_bytes = handshake(a, b, T0)
    assert a.state == b.state == LINK_UP and a.sid == b.sid == 0x5151
    assert a.addr == RB and b.addr == RA
    # SRTP both ways: B's tx is A's rx and back (up = initiator -> responder).
    pkt = rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, 1, 160, 0x77), bytes(20))
    assert bytes(a.srtp_rx.unprotect(b.srtp_tx.protect(pkt))) == pkt
    assert bytes(b.srtp_rx.unprotect(a.srtp_tx.protect(pkt))) == pkt
    # The key log names each side's transmit key as the other's receive key.
    bk = {x[0]: x[3:] for x in keys if x[1] == "relay-a@no"}
    ak = {x[0]: x[3:] for x in keys if x[1] == "relay-b@no"}
    assert bk["link_tx"] == ak["link_rx"] and bk["link_rx"] == ak["link_tx"] and len(keys) == 8
    # Both log the link's signalling keys, and with them the LINK_ACK (protected) opens: what
    # `opmob pcap decrypt` does with a lab relay's key log.
    assert bk["sig_link_up"] == ak["sig_link_up"] and bk["sig_link_down"] == ak["sig_link_down"]
    opened = []
    for label in ("sig_link_up", "sig_link_down"):
        enc, mac = bk[label]
        try:
            opened.append(sig.decode(ack_bytes, sig.SigKey(mac, enc)).type)
        except AuthFailed:  # the other direction's key: its tag does not verify
            pass
    assert opened == [sig.LINK_ACK]
    assert (
        a.counters["challenges"] == 1
        and b.counters["hellos"] == 1
        and a.counters["ups"] == b.counters["ups"] == 1
    )


def test_keepalive_on_time_across_the_wrap_and_silence_takes_it_down():
    a, b = pair()
    handshake(a, b, T0)
    assert b.next_deadline() == tadd(T0, KA_MS)
    now = tadd(T0, KA_MS)  # past the wrap
    assert now < T0
    resend, silent = b.poll(now)
    assert resend == [] and not silent
    out, ticked = b.tick(now)
    assert ticked and len(out) == 1
    ka = sig.decode(out[0], a.rx)
    assert ka.type == sig.KEEPALIVE and a.fresh_request(now, RB, ka.txid)
    assert not a.fresh_request(now, RB, ka.txid)  # a replay
    ack = sig.encode(ka.reply(sig.KEEPALIVE_ACK, status=sig.KA_OK), a.tx)
    assert b.on_response(now, sig.decode(ack, b.rx)) is not None
    # A hears nothing more: down 3.5 keep-alive intervals after the last word, to the ms.
    last = now
    assert a.poll(tadd(last, 3 * KA_MS + KA_MS // 2 - 1))[1] is False
    assert a.poll(tadd(last, 3 * KA_MS + KA_MS // 2))[1] is True
    a.reset(tadd(last, 3 * KA_MS + KA_MS // 2))
    assert a.state == LINK_DOWN and a.sid == 0 and a.srtp_tx is None and a.next_deadline() is None
    # B's side: the initiator goes back to HELLO after its back-off.
    b.reset(now)
    assert b.state == LINK_CONNECTING and b.next_deadline() == tadd(now, RETRY_MIN)


def test_wrong_key_refused_then_retried_with_back_off():
    a, b = pair(psk_b=bytes(32))
    assert handshake(a, b, T0) is None
    assert b.counters["auth_failed"] == 1 and b.state == LINK_CONNECTING and b.srtp_tx is None
    assert b.next_deadline() == tadd(T0, RETRY_MIN)
    now = tadd(T0, RETRY_MIN)
    assert handshake(a, b, now) is None
    assert b.next_deadline() == tadd(now, 2 * RETRY_MIN)  # doubled
    assert a.state == LINK_DOWN and b.counters["hellos"] == 2


def test_unanswered_hello_is_retransmitted_then_retried():
    a, b = pair()
    out, _ = b.tick(T0)
    first = out[0]
    sent = [0]
    now = T0
    while True:
        d = b.next_deadline()
        now = d
        resend, _ = b.poll(now)
        if not resend:
            break
        assert resend == [first]
        sent.append(tdiff(now, T0))
    # The transaction's schedule (txn.py), then the back-off: a new HELLO after RETRY_MIN.
    assert sent == [0, 500, 1500, 3500, 7500, 11500, 15500]
    assert b.state == LINK_CONNECTING and b.next_deadline() == tadd(now, RETRY_MIN)
    out, _ = b.tick(tadd(now, RETRY_MIN))
    assert len(out) == 1 and sig.decode(out[0]).nonce != sig.decode(first).nonce


def test_a_new_auth_is_refused_without_the_pending_challenge():
    a, b = pair()
    handshake(a, b, T0)
    assert a.auth_key(0x5151) is None and not a.auth_ok(
        0x5151, sig.SigMsg(sig.LINK_AUTH, txid=1, proof=bytes(16))
    )
