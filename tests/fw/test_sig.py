"""OpMob signalling messages v1 (opmob.sig), on both runtimes.

Vectors: tests/vectors/sig_v1.json (made by tests/vectors/gen_sig_v1.py, shown in
docs/protocol.md); their bytes are re-checked against an independent implementation in
tests/host/test_sig_vectors.py.
"""

import struct

import sigjson
from fwtest import ROOT, Rng, load_vectors, raises, unhex
from opmob import authvec, errors, sig
from opmob.errors import AuthFailed, BadValue, Oversized, UnknownStream, WireError

V = load_vectors("sig_v1.json")
A = load_vectors("sig_authvec_v1.json")
DEV = V["session_keys"]["device"]
UP = sigjson.key_from_json(DEV["up"])
DOWN = sigjson.key_from_json(DEV["down"])


def rx_key_for(entry):
    """The receiver's key for a vector: the same direction's key (each direction has its own)."""
    return sigjson.key_from_json(entry["key"])


def test_every_message_type_has_a_vector():
    types = set(sigjson.TYPES[v["type"]] for v in V["messages"])
    assert types == set(sig.MESSAGES), sorted(set(sig.MESSAGES) - types)


def test_vectors_encode_to_their_bytes():
    for v in V["messages"]:
        m = sigjson.msg_from_json(v)
        got = sig.encode(m, rx_key_for(v))
        assert got == unhex(v["hex"]), v["name"]


def test_vectors_decode_to_their_messages():
    for v in V["messages"]:
        b = unhex(v["hex"])
        m = sig.decode(b, rx_key_for(v))
        assert m == sigjson.msg_from_json(v), v["name"]
        assert m.protected == (v["key"] is not None)
        assert sigjson.msg_to_json(m)["fields"] == v["fields"], v["name"]
        if v["key"] is not None:
            raises(UnknownStream, sig.decode, b)


def test_vectors_appear_in_protocol_md():
    with open(ROOT + "/docs/protocol.md") as f:
        doc = "".join(f.read().split())
    for v in V["messages"]:
        assert v["hex"] in doc, v["name"]
    for name, val in (("K", A["vectors"][0]["k"]), ("AUTN", A["vectors"][0]["autn"])):
        assert val in doc, name
    for h in A["derive"][0]["keys"].values():
        assert h in doc


def test_decode_only_vectors():
    for v in V["decode_only"]:
        m = sig.decode(unhex(v["hex"]), sigjson.key_from_json(v["key"]))
        assert m == sigjson.msg_from_json(v["message"]), v["name"]
        assert m.protected == bool(v.get("protected"))


def test_reject_vectors_raise_the_named_error():
    assert len(V["reject"]) >= 40
    names = set()
    for v in V["reject"]:
        cls = getattr(errors, v["error"])
        e = raises(WireError, sig.decode, unhex(v["hex"]), sigjson.key_from_json(v["key"]))
        assert type(e) is cls, (v["name"], type(e).__name__, v["error"])
        names.add(v["error"])
    assert names == set(("Truncated", "Oversized", "BadVersion", "BadValue", "AuthFailed", "UnknownStream"))


def test_register_built_by_hand():
    # Independent of the encoder: the bytes docs/protocol.md sections 2 and 3 describe.
    ident = b"ola@no"
    nonce = bytes(range(16))
    aff = bytes((7, sig.AFF_SCAN)) + b"fire@no"
    body = bytes((0x01, len(ident))) + ident + bytes((0x08, 16)) + nonce
    body += bytes((0x11, 4)) + struct.pack(">I", 3) + bytes((0x30, len(aff))) + aff
    want = b"OM" + bytes((1, 0x01, 0, 0)) + struct.pack(">HII", len(body), 0xDEADBEEF, 0) + body
    m = sig.SigMsg(
        sig.REGISTER,
        txid=0xDEADBEEF,
        identity="ola@no",
        nonce=nonce,
        caps=3,
        affiliations=[("fire@no", 7, 1)],
    )
    assert sig.encode(m) == want
    assert sig.decode(want) == m


def test_protection_layout_siv():
    # tag = HMAC-SHA256(mac, header || plaintext)[:16]; body = AES-CTR(enc, tag[:14] || 0000).
    from opmob.compat import AesCtr, HmacSha256

    mac = unhex(DEV["up"]["mac"])
    enc = unhex(DEV["up"]["enc"])
    m = sig.SigMsg(sig.KEEPALIVE, txid=1, session=2, location=(1, 2, 3, 4))
    plain = sig.encode_body(m)
    wire = sig.encode(m, UP)
    hdr = wire[:16]
    assert hdr[4] == sig.FLAG_PROTECTED and struct.unpack(">H", hdr[6:8])[0] == len(plain)
    tag = HmacSha256(mac).digest(hdr, plain)[:16]
    assert wire[-16:] == tag
    iv = bytearray(tag[:14] + b"\x00\x00")
    out = bytearray(len(plain))
    AesCtr(enc).xor(iv, plain, out)
    assert wire[16:-16] == bytes(out)
    assert wire[16:-16] != plain


def test_retransmission_bytes_are_identical_and_messages_differ():
    m = sig.SigMsg(sig.DEREGISTER, txid=5, session=9)
    assert sig.encode(m, UP) == sig.encode(m, UP)
    m2 = sig.SigMsg(sig.DEREGISTER, txid=6, session=9)
    a, b = sig.encode(m, UP), sig.encode(m2, UP)
    assert a[-16:] != b[-16:]


def test_directions_do_not_mix():
    sk = authvec.derive(bytes(16), bytes(16), bytes(16))
    dev_tx, dev_rx = sig.keys(sk, owner=False)
    rel_tx, rel_rx = sig.keys(sk, owner=True)
    up = sig.encode(sig.SigMsg(sig.KEEPALIVE, txid=1, session=3), dev_tx)
    assert sig.decode(up, rel_rx).type == sig.KEEPALIVE
    raises(AuthFailed, sig.decode, up, dev_rx)  # reflected back to the device
    raises(AuthFailed, sig.decode, up, rel_tx)
    down = sig.encode(sig.SigMsg(sig.KEEPALIVE_ACK, txid=1, session=3, down=True, status=0), rel_tx)
    assert sig.decode(down, dev_rx).status == sig.KA_OK
    raises(AuthFailed, sig.decode, down, rel_rx)


def _tamper_positions(wire):
    for i in range(len(wire)):
        for bit in (0x01, 0x80):
            b = bytearray(wire)
            b[i] ^= bit
            yield i, bytes(b)


def test_every_tampered_byte_is_refused():
    for name in ("auth_response", "register_ack", "auth_vector_response", "device_control_kill"):
        v = [x for x in V["messages"] if x["name"] == name][0]
        wire = unhex(v["hex"])
        key = rx_key_for(v)
        for i, b in _tamper_positions(wire):
            e = raises(WireError, sig.decode, b, key)
            # Beyond the framing bytes (magic, version, flags, reserved, length), any change is
            # caught by the tag; a changed type is either unknown or fails the tag.
            if i >= 8 or i == 3:
                assert type(e) in (AuthFailed, BadValue), (name, i, e)
                if i >= 8:
                    assert type(e) is AuthFailed, (name, i, e)


def test_peek_and_demux():
    v = [x for x in V["messages"] if x["name"] == "register_ack"][0]
    b = unhex(v["hex"])
    h = sig.peek(b)
    assert (h.type, h.txid, h.session) == (sig.REGISTER_ACK, v["txid"], v["session"])
    assert h.protected and h.down and h.is_response
    assert h.length == len(b) - 32
    assert "REGISTER_ACK" in repr(h)
    assert sig.is_sig(b) and sig.is_sig(memoryview(b))
    rtp = bytes((0x80, 0x05)) + bytes(10)
    rtcp = bytes((0x81, 204)) + bytes(10)
    assert not sig.is_sig(rtp) and not sig.is_sig(rtcp) and not sig.is_sig(b"O")
    assert (b[0] >> 6) != 2  # the magic can never be taken for RTP/RTCP version 2
    # peek does not need the type to be known (so a responder can answer ERROR UNSUPPORTED).
    unknown = b[:3] + b"\x7e" + b[4:]
    assert sig.peek(unknown).type == 0x7E
    raises(BadValue, sig.decode, unknown, DOWN)
    # memoryview and bytearray decode as bytes do.
    assert sig.decode(memoryview(b), DOWN) == sig.decode(bytearray(b), DOWN)


def test_size_bounds():
    # A protected AFFILIATE of exactly 1200 bytes encodes; one more byte does not.
    def aff(total_ident_len):
        return ("a" * (total_ident_len - 3) + "@no", 1, 0)

    affs = [aff(64)] * 17  # 17 x (2 TLV + 2 priority/flags + 64) = 1156
    rest = 1200 - 32 - 1156 - 4  # one more entry fills the message to the byte
    m = sig.SigMsg(sig.AFFILIATE, txid=1, session=1, affiliations=affs + [aff(rest)])
    b = sig.encode(m, UP)
    assert len(b) == 1200
    assert sig.decode(b, UP) == m
    m = sig.SigMsg(sig.AFFILIATE, txid=1, session=1, affiliations=affs + [aff(rest + 1)])
    raises(Oversized, sig.encode, m, UP)
    raises(Oversized, sig.decode, b + b"\x00", UP)
    # Open messages may use the 16 bytes a tag would take.
    m = sig.SigMsg(sig.REGISTER, txid=1, identity="a@no", nonce=bytes(16), affiliations=affs[:16])
    assert len(sig.encode(m)) == 16 + 6 + 18 + 16 * 68


def test_body_over_1024_bytes_round_trips_both_ways():
    v = [x for x in V["messages"] if x["name"] == "affiliate_large"][0]
    b = unhex(v["hex"])
    assert sig.peek(b).length > 1024
    m = sig.decode(b, UP)
    assert len(m.affiliations) == 21


def test_identities():
    good = ("a@b", "ola.nordmann@no", "relay-tromso-1@no", "x_y@se", "0@0", "a" * 60 + "@fi")
    bad = (
        "",
        "@",
        "a@",
        "@no",
        "a@b@c",
        "ola",
        "Ola@no",
        "ola@NO",
        "øyvind@no",
        "ola@n.o",
        "ola@n_o",
        "o la@no",
        "a" * 62 + "@no",
        "ola@no\n",
        b"ola@no",
        None,
    )
    for s in good:
        assert sig.valid_identity(s), s
        m = sig.SigMsg(sig.GROUP_DETACH, txid=1, session=1, group=s)
        assert sig.decode(sig.encode(m, UP), UP).group == s
    for s in bad:
        assert not sig.valid_identity(s), s
        if s is not None:
            raises(BadValue, sig.encode, sig.SigMsg(sig.GROUP_DETACH, txid=1, session=1, group=s), UP)
    assert sig.system_of("fire-oslo@no") == "no"


def test_encode_refuses_what_decode_would_refuse():
    def enc(t, key=UP, **f):
        return sig.encode(sig.SigMsg(t, txid=1, session=1, **f), key)

    cases = (
        (sig.AUTH_RESPONSE, {}),  # missing required
        (sig.AUTH_RESPONSE, {"res": bytes(15)}),
        (sig.AUTH_RESPONSE, {"res": "0" * 16}),
        (sig.AFFILIATE, {"affiliations": []}),
        (sig.AFFILIATE, {"affiliations": [("a@b", 256, 0)]}),
        (sig.AFFILIATE, {"affiliations": [("a@b", 1)]}),
        (sig.AFFILIATE, {"affiliations": ("a@b", 1, 0)}),
        (sig.CALL_SETUP, {"group": "g@no", "call_type": 4, "priority": 1}),
        (sig.CALL_SETUP, {"group": "g@no", "call_type": 0, "priority": -1}),
        (sig.CALL_SETUP, {"group": "g@no", "call_type": True, "priority": 1}),
        (sig.DEVICE_CONTROL, {"action": 0}),
        (sig.DEVICE_CONTROL, {"action": 3, "seq": 1}),
        (sig.KEEPALIVE_ACK, {"status": 3}),
        (sig.KEEPALIVE, {"location": (900000001, 0, 0, 0)}),
        (sig.KEEPALIVE, {"location": (0, -1800000001, 0, 0)}),
        (sig.KEEPALIVE, {"location": (0, 0, 65536, 0)}),
        (sig.CALL_ACK, {"call_id": 1, "ssrc": 1, "floor_ssrc": 1 << 32}),
        (sig.CALL_ACK, {"call_id": 1, "ssrc": 1, "floor_ssrc": 1, "addr": (bytes(5), 80)}),
        (sig.CALL_ACK, {"call_id": 1, "ssrc": 1, "floor_ssrc": 1, "addr": (bytes(4), 0)}),
        (sig.AUTH_VECTOR_REQUEST, {"identity": "a@b", "count": 9}),
        (sig.AUTH_VECTOR_RESPONSE, {"vectors": [(1, bytes(16), bytes(16), bytes(16), bytes(16))] * 9}),
        (sig.AUTH_VECTOR_RESPONSE, {"vectors": [(1, bytes(16), bytes(16), bytes(16))]}),
        (sig.LINK_ACK, {"keepalive": 0, "expiry": 1, "grants": 0}),
        (sig.ERROR, {"cause": 1, "text": "x" * 129}),
        (sig.ERROR, {"cause": 1, "text": "tab\there"}),
        (sig.ERROR, {"cause": 65536}),
    )
    for t, f in cases:
        raises(BadValue, enc, t, **f)
    raises(BadValue, sig.encode, sig.SigMsg(sig.AUTH_FAILURE, cause=sig.CAUSE_SYNC_FAILURE, vid=1))
    # A must-protect type cannot be sent in the clear.
    raises(BadValue, sig.encode, sig.SigMsg(sig.KEEPALIVE, txid=1, session=1))
    raises(BadValue, sig.encode, sig.SigMsg(sig.KEEPALIVE, txid=1 << 32, session=1), UP)
    raises(BadValue, sig.encode, sig.SigMsg(sig.KEEPALIVE, txid=1, session=-1), UP)
    raises(TypeError, sig.SigMsg, sig.REGISTER, bogus=1)
    raises(TypeError, sig.SigMsg, sig.REGISTER, groups=["a@b"])  # DEAFFILIATE's field, not REGISTER's
    raises(TypeError, sig.SigMsg, sig.DEAFFILIATE, groups="a@no")  # a list, not one string
    raises(BadValue, sig.SigMsg, 0x7E)


def test_sigmsg_api():
    m = sig.SigMsg(sig.REGISTER, txid=3, identity="a@b", nonce=bytes(16), caps=None)
    assert m.caps is None and m.prev_relay is None and m.affiliations == []
    assert m.fields() == {"identity": "a@b", "nonce": bytes(16)}
    assert m.name == "REGISTER" and not m.is_response
    raises(AttributeError, getattr, m, "res")
    assert "REGISTER" in repr(m)
    # Lists of lists are normalised to lists of tuples, so equality does not depend on it.
    a = sig.SigMsg(sig.AFFILIATE, affiliations=[["g@no", 1, 2]])
    b = sig.SigMsg(sig.AFFILIATE, affiliations=(("g@no", 1, 2),))
    assert a == b and not (a != b)
    assert a != sig.SigMsg(sig.AFFILIATE, affiliations=[("g@no", 1, 3)])
    assert a != sig.SigMsg(sig.AFFILIATE, txid=1, affiliations=[("g@no", 1, 2)])
    r = m.reply(sig.CHALLENGE, rand=bytes(16), autn=bytes(16), vid=1)
    assert (r.txid, r.session, r.down, r.is_response) == (3, 0, True, True)
    raises(BadValue, m.reply, sig.REGISTER_ACK)
    raises(BadValue, r.reply, sig.ERROR, cause=1)
    assert m.reply(sig.ERROR, cause=sig.CAUSE_BUSY).cause == sig.CAUSE_BUSY


def test_answers_table_is_complete():
    requests = [t for t in sig.MESSAGES if t < 0x80]
    responses = [t for t in sig.MESSAGES if t >= 0x80]
    assert sorted(sig.ANSWERS) == sorted(requests)
    answered = set()
    for t in requests:
        assert sig.answers(t, sig.ERROR)
        for a in sig.ANSWERS[t]:
            assert a >= 0x80 and sig.answers(t, a)
            answered.add(a)
    assert answered | set((sig.ERROR, sig.PENDING)) == set(responses)
    # PENDING completes nothing: the requester keeps waiting (Transactions.keep_waiting).
    for t in requests:
        assert not sig.answers(t, sig.PENDING)
    assert not sig.answers(sig.CHALLENGE, sig.ERROR)
    assert not sig.answers(sig.REGISTER, sig.REGISTER_ACK)
    assert sig.type_name(0x7E) == "type 0x7e" and sig.type_name(sig.ERROR) == "ERROR"


def test_must_protect_set():
    open_types = set(t for t in sig.MESSAGES if not sig.must_protect(t))
    want = (sig.REGISTER, sig.CHALLENGE, sig.AUTH_FAILURE, sig.REGISTER_REJECT)
    want += (sig.LINK_HELLO, sig.LINK_CHALLENGE, sig.ERROR, sig.PENDING)
    assert open_types == set(want)


def test_unknown_and_long_tlvs_are_skipped_everywhere():
    r = Rng(11)
    for t in sig.MESSAGES:
        m = sigjson.random_msg(r, t)
        body = sig.encode_body(m)
        junk = bytes((0x7D, 3, 1, 2, 3)) + bytes((0xFE, 0x01, 0x02)) + bytes(258)
        for b in (junk + body, body + junk):
            wire = sig.frame(t, b, m.txid, m.session, m.down, UP)
            assert sig.decode(wire, UP) == m, sig.type_name(t)


def test_random_round_trip():
    r = Rng(20240601)
    for t in sorted(sig.MESSAGES):
        for i in range(60):
            m = sigjson.random_msg(r, t)
            b = sig.encode(m, UP)
            got = sig.decode(b, UP)
            assert got == m and got.protected, m
            if not sig.must_protect(t):
                b = sig.encode(m)
                got = sig.decode(b)
                assert got == m and not got.protected, m
                assert sig.decode(b, UP) == m  # open types stay readable when a key exists


def _outcome(buf, key=None):
    """Returns "ok" or the WireError class name; anything else escapes and fails the test."""
    try:
        sig.decode(buf, key)
    except WireError as e:
        return type(e).__name__
    return "ok"


def _tally(counts, name):
    counts[name] = counts.get(name, 0) + 1


def test_fuzz_random_bytes():
    r = Rng(1)
    types = sorted(sig.MESSAGES)
    counts = {}
    for i in range(10000):
        b = r.bytes(r.below(80))
        kind = i % 3
        if kind == 1:
            b = b"OM" + b  # magic, then anything
        elif kind == 2:
            # A sound header over random bytes: a known type, consistent length, P or not.
            flags = r.below(4) if len(b) >= 16 else r.below(4) & 2
            mtype = types[r.below(len(types))]
            blen = len(b) - (16 if flags & 1 else 0)
            b = b"OM\x01" + bytes((mtype, flags, 0)) + struct.pack(">HII", blen, r.u32(), r.u32()) + b
        _tally(counts, _outcome(b))
        _tally(counts, _outcome(b, UP))
    for name in ("Truncated", "BadValue", "BadVersion", "AuthFailed", "UnknownStream"):
        assert counts.get(name), (name, counts)


def test_fuzz_mutated_vectors():
    r = Rng(2)
    pool = [(unhex(v["hex"]), rx_key_for(v)) for v in V["messages"]]
    counts = {}
    for _ in range(10000):
        wire, key = pool[r.below(len(pool))]
        b = bytearray(wire)
        for _ in range(1 + r.below(3)):
            op = r.below(4)
            if op == 0 and b:
                b[r.below(len(b))] ^= 1 << r.below(8)
            elif op == 1 and b:
                b = b[: r.below(len(b))]
            elif op == 2:
                p = r.below(len(b) + 1)
                b = b[:p] + r.bytes(1 + r.below(4)) + b[p:]
            elif b:
                b[r.below(len(b))] = r.below(256)
        _tally(counts, _outcome(bytes(b), key))
    for name in ("ok", "Truncated", "BadValue", "BadVersion", "AuthFailed"):
        assert counts.get(name), (name, counts)


def test_fuzz_protected_bodies():
    # Authentic but malformed bodies: the TLV parser must hold up after the tag has verified.
    r = Rng(3)
    types = sorted(sig.MESSAGES)
    counts = {}
    for _ in range(5000):
        t = types[r.below(len(types))]
        m = sigjson.random_msg(r, t)
        body = bytearray(sig.encode_body(m))
        op = r.below(3)
        if op == 0:
            body = bytearray(r.bytes(r.below(60)))
        elif op == 1 and body:
            body = body[: r.below(len(body))]
        elif body:
            body[r.below(len(body))] = r.below(256)
        _tally(counts, _outcome(sig.frame(t, bytes(body), m.txid, m.session, m.down, UP), UP))
    for name in ("ok", "Truncated", "BadValue"):
        assert counts.get(name), (name, counts)
