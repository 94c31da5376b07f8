"""Authentication vectors and key derivation (opmob.authvec), on both runtimes."""

from fwtest import Rng, load_vectors, raises, unhex
from opmob import authvec
from opmob.compat import HmacSha256
from opmob.errors import AuthFailed, BadValue

V = load_vectors("sig_authvec_v1.json")
K = unhex(V["vectors"][0]["k"])
RAND = unhex(V["vectors"][0]["rand"])


def test_hmac_sha256_rfc4231():
    # RFC 4231 test cases 1, 2 and 6 (a key longer than the block is hashed first).
    cases = (
        (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            b"\xaa" * 131,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    )
    for key, data, want in cases:
        assert HmacSha256(key).digest(data) == unhex(want)
        # digest(*parts) hashes the concatenation, and the object can be reused.
        h = HmacSha256(key)
        assert h.digest(data[:3], data[3:]) == unhex(want)
        assert h.digest(data) == unhex(want)


def test_vectors_from_file():
    for v in V["vectors"]:
        k, rand, vid = unhex(v["k"]), unhex(v["rand"]), v["vid"]
        assert authvec.xres(k, rand) == unhex(v["xres"])
        assert authvec.session_key(k, rand) == unhex(v["ks"])
        assert authvec.autn(k, rand, vid) == unhex(v["autn"])
        assert authvec.make_vector(k, rand, vid) == (
            vid,
            rand,
            unhex(v["xres"]),
            unhex(v["ks"]),
            unhex(v["autn"]),
        )


def test_prf_layout():
    # PRF(key, label, data) = HMAC-SHA256(key, "OpMob v1 " || label || 0x00 || data): the doc's formula.
    assert authvec.prf(K, b"RES", RAND) == HmacSha256(K).digest(b"OpMob v1 RES\x00" + RAND)
    assert authvec.xres(K, RAND) == authvec.prf(K, b"RES", RAND)[:16]
    vid = b"\x00\x00\x03\xe8"
    assert authvec.autn(K, RAND, 1000) == HmacSha256(K).digest(b"OpMob v1 AUTN\x00" + RAND + vid)[:16]


def test_device_accepts_its_home_challenge():
    for v in V["vectors"]:
        k, rand = unhex(v["k"]), unhex(v["rand"])
        res, ks = authvec.device_respond(k, rand, unhex(v["autn"]), v["vid"])
        assert res == unhex(v["xres"]) and ks == unhex(v["ks"])


def test_device_refuses_forged_or_foreign_challenge():
    vid, rand, _xres, _ks, autn = authvec.make_vector(K, RAND, 1000)
    for i in range(16):
        bad = bytearray(autn)
        bad[i] ^= 0x01
        raises(AuthFailed, authvec.device_respond, K, rand, bytes(bad), vid)
    # The vid is bound into AUTN: a relay cannot relabel an old vector as fresh.
    raises(AuthFailed, authvec.device_respond, K, rand, autn, vid + 1)
    other_k = bytes(15) + b"\x01"
    raises(AuthFailed, authvec.device_respond, other_k, rand, autn, vid)
    raises(AuthFailed, authvec.device_respond, K, bytes(16), autn, vid)
    raises(BadValue, authvec.device_respond, K, rand, autn[:15], vid)


def test_auts():
    a = V["auts"][0]
    k, rand = unhex(a["k"]), unhex(a["rand"])
    assert authvec.auts(k, rand, a["vid"]) == unhex(a["auts"])
    authvec.check_auts(k, rand, a["vid"], unhex(a["auts"]))
    raises(AuthFailed, authvec.check_auts, k, rand, a["vid"] + 1, unhex(a["auts"]))
    raises(AuthFailed, authvec.check_auts, k, bytes(16), a["vid"], unhex(a["auts"]))
    # AUTS and AUTN use distinct labels: one can never stand in for the other.
    assert authvec.auts(k, rand, 1000) != authvec.autn(k, rand, 1000)


def test_control_proof():
    for c in V["control"]:
        k = unhex(c["k"])
        p = authvec.control_proof(k, c["identity"], c["action"], c["seq"])
        assert p == unhex(c["proof"])
        authvec.check_control_proof(k, c["identity"], c["action"], c["seq"], p)
        raises(AuthFailed, authvec.check_control_proof, k, c["identity"], c["action"], c["seq"] + 1, p)
        raises(AuthFailed, authvec.check_control_proof, k, "kari.hansen@no", c["action"], c["seq"], p)
    proofs = set(c["proof"] for c in V["control"])
    assert len(proofs) == len(V["control"])  # the action is bound in


def test_derive_matches_file_and_keys_are_distinct():
    d = V["derive"][0]
    sk = authvec.derive(unhex(d["ks"]), unhex(d["rand"]), unhex(d["nonce"]))
    got = dict(sk.items())
    assert sorted(got) == sorted(d["keys"])
    for name, h in d["keys"].items():
        assert got[name] == unhex(h), name
    lengths = {"mac": 32, "enc": 16, "key": 16, "salt": 14}
    for name, v in got.items():
        assert len(v) == lengths[name.rsplit("_", 1)[1]], name
    # Every key is distinct, so no two uses (direction, purpose) share key material.
    prefixes = set(v[:14] for v in got.values())
    assert len(prefixes) == len(got)


def test_derive_depends_on_every_input():
    ks = unhex(V["derive"][0]["ks"])
    base = authvec.derive(ks, RAND, bytes(16))
    assert authvec.derive(ks, RAND, bytes(16)) == base
    assert authvec.derive(ks, RAND, bytes(15) + b"\x01").sig_up_mac != base.sig_up_mac
    assert authvec.derive(ks, bytes(16), bytes(16)).srtp_down_key != base.srtp_down_key
    assert authvec.derive(bytes(16), RAND, bytes(16)).sig_down_enc != base.sig_down_enc
    assert "<secret>" in repr(base)


def test_link_proofs_and_keys():
    lk = V["link"][0]
    args = (lk["initiator"], lk["responder"], unhex(lk["nonce_i"]), unhex(lk["nonce_r"]), lk["agreement"])
    psk = unhex(lk["psk"])
    pi = authvec.link_proof(psk, False, *args)
    pr = authvec.link_proof(psk, True, *args)
    assert pi == unhex(lk["proof_i"]) and pr == unhex(lk["proof_r"])
    assert pi != pr  # a responder's proof cannot be replayed as the initiator's
    authvec.check_link_proof(psk, True, *(args + (pr,)))
    raises(AuthFailed, authvec.check_link_proof, psk, False, *(args + (pr,)))
    swapped = (args[1], args[0]) + args[2:]
    raises(AuthFailed, authvec.check_link_proof, psk, True, *(swapped + (pr,)))
    other_agreement = args[:4] + (args[4] + 1,)
    raises(AuthFailed, authvec.check_link_proof, psk, True, *(other_agreement + (pr,)))
    raises(AuthFailed, authvec.check_link_proof, bytes(32), True, *(args + (pr,)))
    keys = dict(authvec.link_keys(psk, *args).items())
    for name, h in lk["keys"].items():
        assert keys[name] == unhex(h), name
    raises(BadValue, authvec.link_proof, psk[:15], True, *args)


def test_ct_equal():
    assert authvec.ct_equal(b"", b"")
    assert authvec.ct_equal(b"abc", bytearray(b"abc"))
    assert not authvec.ct_equal(b"abc", b"abd")
    assert not authvec.ct_equal(b"abc", b"ab")
    r = Rng(7)
    for _ in range(200):
        a = r.bytes(16)
        b = bytearray(a)
        assert authvec.ct_equal(a, b)
        b[r.below(16)] ^= 1 << r.below(8)
        assert not authvec.ct_equal(a, b)


def test_bad_inputs_are_bad_value():
    raises(BadValue, authvec.xres, K[:15], RAND)
    raises(BadValue, authvec.session_key, K, RAND + b"\x00")
    raises(BadValue, authvec.autn, K, RAND, -1)
    raises(BadValue, authvec.autn, K, RAND, 1 << 32)
    raises(BadValue, authvec.derive, K, RAND, b"short")
    raises(BadValue, authvec.control_proof, K, "", 1, 1)
    raises(BadValue, authvec.control_proof, K, "a@b", 256, 1)
    raises(BadValue, authvec.link_keys, bytes(32), "a@b", "c@d", bytes(16), bytes(8), 1)
