"""The C extension's SRTP/SRTCP (``opmob_c.SrtpSession``, libcrypto) against libsrtp2 (pylibsrtp)
and against the pure-Python twin (``opmob.srtp``).

libsrtp: the known answers and committed vectors; more than 10,000 RTP packets in ten SSRCs
across sequence-number rollovers plus 1,200 SRTCP packets, protected by both and each unprotecting
the other's. The twin: the same outcome (bytes, or the same error type) and the same stream state
after every operation on streams of good, damaged, replayed, truncated, oversized and surplus
packets, every replay window size class, stream removal, and the batch forms against the single
calls. Bad input from hypothesis: only WireError comes out, and exactly when the twin raises.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import random
import struct
from array import array
from pathlib import Path
from types import ModuleType
from typing import Any

import opmob_c
import pylibsrtp
import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from opmob import srtp as pure
from opmob.errors import AuthFailed, BadValue, Replayed, UnknownStream, WireError

ROOT = Path(__file__).resolve().parents[2]
MK = bytes.fromhex("e1f97a0d3e018be0d64fa32c06de4139")
MS = bytes.fromhex("0ec675ad498afeebb6960b3aabe6")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_srtp_vectors", ROOT / "tests/vectors/make_srtp_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = load_generator()


def outcome(fn: Any, data: bytes) -> bytes | type[WireError]:
    try:
        out: bytes = fn(data)
    except WireError as e:
        return type(e)
    return out


def flip(pkt: bytes, bit: int) -> bytes:
    b = bytearray(pkt)
    b[bit >> 3] ^= 0x80 >> (bit & 7)
    return bytes(b)


def ssrc_of(pkt: bytes, rtcp: bool = False) -> int:
    return int(struct.unpack_from(">I", pkt, 4 if rtcp else 8)[0])


# -- libsrtp ---------------------------------------------------------------------------------------


def test_known_answers_are_libsrtps() -> None:
    s = opmob_c.SrtpSession(MK, MS)
    assert s.protect(bytes.fromhex("800f1234decafbadcafebabe" + "ab" * 16)).hex() == (
        "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb"
    )
    assert s.protect_rtcp(bytes.fromhex("81c8000bcafebabe" + "ab" * 16)).hex() == (
        "81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798"
    )


def test_key_derivation_equals_the_twins() -> None:
    rng = random.Random(5)
    for _ in range(20):
        mk, ms = rng.randbytes(16), rng.randbytes(14)
        for label in range(6):
            for n in (14, 16, 20):
                out = opmob_c.ffi.new("uint8_t[]", n)
                assert opmob_c.lib.opmob_srtp_kdf(mk, 16, ms, 14, label, out, n) == 0
                assert bytes(opmob_c.ffi.buffer(out)) == pure.kdf(mk, ms, label, n)


def test_committed_libsrtp_vectors() -> None:
    v = json.loads((ROOT / "tests/vectors/srtp_libsrtp.json").read_text())
    mk, ms = bytes.fromhex(v["master_key"]), bytes.fromhex(v["master_salt"])
    tx, rx = opmob_c.SrtpSession(mk, ms), opmob_c.SrtpSession(mk, ms)
    sent = 0
    for plain_hex, prot_hex in v["rtp"]:
        plain = bytes.fromhex(plain_hex)
        got = outcome(tx.protect, plain)
        if prot_hex is None:
            assert got is Replayed
            continue
        assert got == bytes.fromhex(prot_hex)
        assert rx.unprotect(bytes.fromhex(prot_hex)) == plain
        sent += 1
    for plain_hex, prot_hex in v["rtcp"]:
        assert tx.protect_rtcp(bytes.fromhex(plain_hex)).hex() == prot_hex
        assert rx.unprotect_rtcp(bytes.fromhex(prot_hex)) == bytes.fromhex(plain_hex)
    assert sent >= 1000


# The tags' HMAC-SHA1 is computed from keyed SHA-1 states (c_ext/opmob_srtp.c): RFC 2202's
# vectors, and OpenSSL's own HMAC() over keys and messages around the block boundaries.
RFC2202_HMAC_SHA1 = [
    (b"\x0b" * 20, b"Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    (b"Jefe", b"what do ya want for nothing?", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    (b"\xaa" * 20, b"\xdd" * 50, "125d7342b9ac11cd91a39af48aa17b4f63f175d3"),
    (bytes(range(1, 26)), b"\xcd" * 50, "4c9007f4026250c6bc8414f9bf50c86c2d7235da"),
    (b"\x0c" * 20, b"Test With Truncation", "4c1a03424b55e07fe7f27be1d58bb9324a9a5a04"),
    (
        b"\xaa" * 80,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "aa4ae5e15272d00e95705637ce8a3b55ed402112",
    ),
    (
        b"\xaa" * 80,
        b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data",
        "e8e99d0f45237d786d6bbaa7965c7808bbff1a91",
    ),
]


def c_hmac_sha1(key: bytes, msg: bytes) -> bytes:
    out = opmob_c.ffi.new("uint8_t[]", 20)
    assert opmob_c.lib.opmob_hmac_sha1(key, len(key), msg, len(msg), out, 20) == 20
    return bytes(opmob_c.ffi.buffer(out))


def openssl_hmac() -> Any:
    """OpenSSL's one-shot HMAC() with EVP_sha1(), from the libcrypto the extension links."""
    import ctypes.util

    from cffi import FFI

    ffi = FFI()
    ffi.cdef(
        "const void *EVP_sha1(void);"
        "unsigned char *HMAC(const void *md, const void *key, int key_len, const unsigned char *d,"
        " size_t n, unsigned char *out, unsigned int *out_len);"
    )
    name = ctypes.util.find_library("crypto")
    assert name is not None
    lib = ffi.dlopen(name)

    def mac(key: bytes, msg: bytes) -> bytes:
        out = ffi.new("unsigned char[]", 64)
        n = ffi.new("unsigned int *")
        assert lib.HMAC(lib.EVP_sha1(), key, len(key), msg, len(msg), out, n) != ffi.NULL
        return bytes(ffi.buffer(out, n[0]))

    return mac


def test_hmac_sha1_rfc2202_vectors() -> None:
    for key, msg, want in RFC2202_HMAC_SHA1:
        assert c_hmac_sha1(key, msg).hex() == want


def test_hmac_sha1_equals_openssl_hmac() -> None:
    ref = openssl_hmac()
    rng = random.Random(23)
    assert ref(b"Jefe", b"what do ya want for nothing?").hex() == RFC2202_HMAC_SHA1[1][2]
    keys = [rng.randbytes(n) for n in (0, 1, 19, 20, 21, 55, 63, 64, 65, 100, 200)]
    msgs = [rng.randbytes(n) for n in (*range(0, 130), 200, 1024, 1502)]
    for key in keys:
        for msg in msgs:
            got = c_hmac_sha1(key, msg)
            assert got == ref(key, msg) == hmac.digest(key, msg, "sha1")
    out = opmob_c.ffi.new("uint8_t[]", 20)
    assert opmob_c.lib.opmob_hmac_sha1(b"k", 1, b"m", 1, out, 19) == opmob_c.lib.OPMOB_E_ARG


def test_every_payload_length_equals_libsrtp() -> None:
    """AES-CTR keystream for every payload length 0..1088 (up to 68 counter blocks), RTP and
    SRTCP, against libsrtp both ways; one byte more is refused."""
    rng = random.Random(29)
    key = rng.randbytes(30)
    ours_tx, ours_rx = opmob_c.SrtpSession(key[:16], key[16:]), opmob_c.SrtpSession(key[:16], key[16:])
    ref_tx, ref_rx = GEN.outbound(key), GEN.inbound(key)
    for n in range(0, pure.MAX_PAYLOAD + 1):
        plain = struct.pack(">BBHII", 0x80, 5, n, 160 * n, 0x5EED) + rng.randbytes(n)
        mine = ours_tx.protect(plain)
        assert mine == ref_tx.protect(plain)
        assert ours_rx.unprotect(mine) == plain == ref_rx.unprotect(mine)
        if n % 4 == 0:
            rtcp = struct.pack(">BBHI", 0x81, 200, n // 4 + 1, 0x5EED) + rng.randbytes(n)
            mine = ours_tx.protect_rtcp(rtcp)
            assert mine == ref_tx.protect_rtcp(rtcp)
            assert ours_rx.unprotect_rtcp(mine) == rtcp == ref_rx.unprotect_rtcp(mine)
    too_big = struct.pack(">BBHII", 0x80, 5, 9999, 0, 0x5EED) + bytes(pure.MAX_PAYLOAD + 1)
    assert outcome(ours_tx.protect, too_big) is outcome(pure.SrtpSession(key[:16], key[16:]).protect, too_big)


def long_traffic(seed: int) -> tuple[list[bytes], list[bytes]]:
    """> 10,000 RTP packets from ten SSRCs, each stream crossing at least one sequence-number
    rollover (some two: 1,500 packets from near 65535, one stream jumping far ahead), with loss
    gaps, neighbour swaps and every header shape; and 1,200 RTCP packets (SR, RR, SDES, BYE, MCPT)."""
    rng = random.Random(seed)
    streams = []
    for k in range(10):
        ssrc, ts = rng.getrandbits(32), rng.getrandbits(32)
        seq = 65535 - rng.randrange(0, 900)
        pkts = []
        for i in range(1050 + 20 * k):
            seq += 1 + (rng.random() < 0.02) * rng.randint(1, 4)
            if k == 9 and i == 600:
                seq += 30000  # a jump within the estimate's reach
            shape = rng.random()
            pkts.append(
                GEN._rtp(
                    rng,
                    ssrc,
                    seq,
                    ts + 160 * i,
                    5 if k < 7 else 96,
                    marker=i == 0,
                    csrcs=rng.choice((1, 2, 15)) if shape < 0.05 else 0,
                    ext_words=rng.choice((0, 1, 3)) if 0.05 <= shape < 0.1 else None,
                    padding=rng.choice((1, 4)) if 0.1 <= shape < 0.13 else 0,
                    plen=84 if shape > 0.4 else None,
                )
            )
        for a in range(0, len(pkts) - 1, 11):
            if rng.random() < 0.3:
                pkts[a], pkts[a + 1] = pkts[a + 1], pkts[a]
        streams.append(pkts)
    rtcp = GEN.rtcp_packets(rng) * 5
    return GEN.interleave(rng, streams), rtcp


def chunks(seq: list[bytes], n: int) -> list[list[bytes]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def test_over_ten_thousand_packets_with_rollover_equal_libsrtp_both_ways() -> None:
    rng = random.Random(7)
    key = rng.randbytes(30)
    rtp, rtcp = long_traffic(7)
    ours_tx, ours_rx = opmob_c.SrtpSession(key[:16], key[16:]), opmob_c.SrtpSession(key[:16], key[16:])
    ref_tx, ref_rx = GEN.outbound(key), GEN.inbound(key)
    theirs: list[bytes] = []
    sent = refused = 0
    # Ours in batches of 1,000 (the relay's form), libsrtp packet by packet.
    for batch in chunks(rtp, 1000):
        for plain, mine in zip(batch, ours_tx.protect_batch(batch), strict=True):
            try:
                ref: bytes | None = ref_tx.protect(plain)
            except pylibsrtp.Error as e:
                assert "replay" in str(e)
                ref = None
            if ref is None:
                assert isinstance(mine, Replayed)
                refused += 1
                continue
            assert mine == ref
            assert ref_rx.unprotect(mine) == plain
            theirs.append(plain)
            sent += 1
    assert sent >= 10_000
    rocs = [ours_tx.stream_state(s, outbound=True) for s in {ssrc_of(p) for p in rtp}]
    assert len(rocs) == 10 and all(r is not None and r[0] >= 1 for r in rocs)  # every stream rolled over
    # And ours unprotects libsrtp's, single calls and batches.
    ref_tx2 = GEN.outbound(key)
    prot = [ref_tx2.protect(p) for p in theirs]
    half = len(prot) // 2
    assert [ours_rx.unprotect(p) for p in prot[:half]] == theirs[:half]
    got = [x for b in chunks(prot[half:], 1000) for x in ours_rx.unprotect_batch(b)]
    assert got == theirs[half:]
    # SRTCP, both ways.
    mine_rtcp = [x for b in chunks(rtcp, 500) for x in ours_tx.protect_rtcp_batch(b)]
    assert mine_rtcp == [ref_tx.protect_rtcp(p) for p in rtcp]
    assert [ref_rx.unprotect_rtcp(p) for p in mine_rtcp] == rtcp
    their_rtcp = [ref_tx2.protect_rtcp(p) for p in rtcp]
    assert [ours_rx.unprotect_rtcp(p) for p in their_rtcp] == rtcp
    assert len(rtcp) >= 1000


def test_libsrtp_and_we_refuse_each_others_damaged_and_replayed_packets() -> None:
    rng = random.Random(11)
    key = rng.randbytes(30)
    rtp, rtcp = long_traffic(11)
    ours = opmob_c.SrtpSession(key[:16], key[16:])
    ours_rx = opmob_c.SrtpSession(key[:16], key[16:])
    ref_rx, ref_tx = GEN.inbound(key), GEN.outbound(key)
    checked = 0
    for plain in rtp[:600]:
        prot = ours.protect(plain)
        with pytest.raises(pylibsrtp.Error):
            ref_rx.unprotect(flip(prot, rng.randrange(len(prot) * 8)))
        assert ref_rx.unprotect(prot) == plain
        with pytest.raises(pylibsrtp.Error, match="replay"):
            ref_rx.unprotect(prot)
        theirs = ref_tx.protect(plain)
        with pytest.raises(WireError):
            ours_rx.unprotect(flip(theirs, rng.randrange(len(theirs) * 8)))
        assert ours_rx.unprotect(theirs) == plain
        with pytest.raises(Replayed):
            ours_rx.unprotect(theirs)
        checked += 1
    for plain in rtcp[:200]:
        prot = ours.protect_rtcp(plain)
        with pytest.raises(pylibsrtp.Error):
            ref_rx.unprotect_rtcp(flip(prot, rng.randrange(len(prot) * 8)))
        assert ref_rx.unprotect_rtcp(prot) == plain
    assert checked == 600


def test_srtcp_in_clear_is_refused_like_libsrtp() -> None:
    auth_key = pure.derive_session_keys(MK, MS)[4]
    plain = struct.pack(">BBHI", 0x80, 201, 1, 0x1234)
    for index in (1, 7, 0x7FFFFFFF):
        trailer = struct.pack(">I", index)
        pkt = plain + trailer + hmac.new(auth_key, plain + trailer, hashlib.sha1).digest()[:10]
        with pytest.raises(BadValue):
            opmob_c.SrtpSession(MK, MS).unprotect_rtcp(pkt)
        forged = plain + struct.pack(">I", 0x80000000 | index) + pkt[-10:]
        with pytest.raises(AuthFailed):
            opmob_c.SrtpSession(MK, MS).unprotect_rtcp(forged)


# -- the pure twin, operation by operation ---------------------------------------------------------


def damage(rng: random.Random, pkt: bytes, e_flag_at: int = -14) -> bytes:
    """One of the ways a packet goes wrong on the way, or the packet itself. ``e_flag_at``: where
    an SRTCP packet's E flag sits, from the end (AES_CM -14, GCM -4)."""
    kind = rng.randrange(9)
    p = bytearray(pkt)
    if kind == 0 and p:
        p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        p = p[: rng.randrange(len(p) + 1)]
    elif kind == 2:
        p += rng.randbytes(rng.choice((1, 10, 1500)))  # longer, sometimes past 1,500 bytes
    elif kind == 3 and p:
        p[0] = rng.randrange(256)  # version, CC, X, P
    elif kind == 4 and len(p) > 12:
        p[12:14] = rng.randbytes(2)  # an extension length, when X is set
    elif kind == 5 and len(p) >= 14:
        p[e_flag_at] ^= 0x80  # the SRTCP E flag
    return bytes(p)


def assert_same_state(a: Any, b: Any, ssrcs: set[int]) -> None:
    for outbound in (False, True):
        assert a.stream_count(outbound) == b.stream_count(outbound)
        for s in ssrcs:
            assert a.stream_state(s, outbound) == b.stream_state(s, outbound), (s, outbound)
            assert a.highest_index(s, outbound) == b.highest_index(s, outbound), (s, outbound)


@pytest.mark.parametrize(
    "window,max_streams,seed", [(128, 64, 1), (64, 3, 2), (100, 5, 3), (1000, 4, 4), (32767, 2, 5)]
)
def test_every_outcome_and_state_equal_the_twin(window: int, max_streams: int, seed: int) -> None:
    check_against_twin(window, max_streams, seed, pure.PROFILE_AES_CM_128_HMAC_SHA1_80)


def check_against_twin(window: int, max_streams: int, seed: int, profile: int) -> None:
    """C and twin, sender and receiver each, over 1,500 random operations: the same bytes or the
    same error type every time, the same stream state every 50 operations and after every error."""
    rng = random.Random(seed)
    key = rng.randbytes(30)
    mk, ms = key[:16], key[16 : 16 + pure.master_salt_len(profile)]
    e_flag_at = -14 if profile == pure.PROFILE_AES_CM_128_HMAC_SHA1_80 else -4
    c_tx, c_rx = (opmob_c.SrtpSession(mk, ms, window, max_streams, profile) for _ in range(2))
    p_tx, p_rx = (pure.SrtpSession(mk, ms, window, max_streams, profile) for _ in range(2))
    ssrcs = [rng.getrandbits(32) for _ in range(max_streams + 2)]  # more than fit: UnknownStream
    seqs = {s: rng.choice((0, 1, 32767, 32768, 65000, 65535, rng.randrange(65536))) for s in ssrcs}
    sent: list[tuple[bool, bytes]] = []
    kinds: dict[object, int] = {}
    for i in range(1500):
        op = rng.random()
        s = rng.choice(ssrcs)
        if op < 0.45:
            step = rng.choice((1, 1, 1, 2, -1, -5, 0, window, -window, 40000, -40000, 32768))
            seqs[s] = (seqs[s] + step) & 0xFFFF
            plain = GEN._rtp(
                rng, s, seqs[s], i * 160, 5, csrcs=rng.choice((0, 0, 1)), padding=rng.choice((0, 0, 2))
            )
            if rng.random() < 0.03:
                plain += bytes(1500 - len(plain))  # too large to protect
            a, b = outcome(c_tx.protect, plain), outcome(p_tx.protect, plain)
            if isinstance(a, bytes):
                sent.append((False, a))
        elif op < 0.6:
            plain = GEN._rtcp_hdr(0, 201, struct.pack(">I", s) + rng.randbytes(rng.choice((0, 4, 24))))
            if rng.random() < 0.05:
                plain = plain[: rng.randrange(8)]
            a, b = outcome(c_tx.protect_rtcp, plain), outcome(p_tx.protect_rtcp, plain)
            if isinstance(a, bytes):
                sent.append((True, a))
        elif sent:
            rtcp, pkt = rng.choice(sent[-300:])  # recent ones, some again (replays)
            pkt = damage(rng, pkt, e_flag_at)
            fn_c = c_rx.unprotect_rtcp if rtcp else c_rx.unprotect
            fn_p = p_rx.unprotect_rtcp if rtcp else p_rx.unprotect
            a, b = outcome(fn_c, pkt), outcome(fn_p, pkt)
        else:
            continue
        assert a == b, (i, a, b)
        kinds[a if isinstance(a, type) else bytes] = kinds.get(a if isinstance(a, type) else bytes, 0) + 1
        if i % 50 == 0 or not isinstance(a, bytes):
            assert_same_state(c_tx, p_tx, set(ssrcs))
            assert_same_state(c_rx, p_rx, set(ssrcs))
    assert_same_state(c_tx, p_tx, set(ssrcs))
    assert_same_state(c_rx, p_rx, set(ssrcs))
    # Every error a packet can cause here came up at least once.
    from opmob.errors import BadVersion, Oversized, Truncated

    for err in (AuthFailed, Replayed, UnknownStream, Truncated, Oversized, BadVersion, BadValue):
        assert kinds.get(err, 0) > 0, (err, kinds)
    assert kinds[bytes] > 300


def test_remove_stream_and_table_churn_equal_the_twin() -> None:
    rng = random.Random(9)
    c = opmob_c.SrtpSession(MK, MS, max_streams=50)
    p = pure.SrtpSession(MK, MS, max_streams=50)
    pool = [rng.getrandbits(32) for _ in range(200)] + [0, 0xFFFFFFFF]
    seq = {s: rng.randrange(65536) for s in pool}
    for i in range(6000):
        s = rng.choice(pool)
        if rng.random() < 0.25:
            c.remove_stream(s)
            p.remove_stream(s)
        else:
            seq[s] = (seq[s] + 1) & 0xFFFF
            plain = struct.pack(">BBHII", 0x80, 5, seq[s], i, s) + bytes(8)
            assert outcome(c.protect, plain) == outcome(p.protect, plain)
        assert c.stream_count(True) == p.stream_count(True)
        if i % 100 == 0:
            assert_same_state(c, p, set(pool))
    assert_same_state(c, p, set(pool))


def test_batch_forms_equal_single_calls() -> None:
    rng = random.Random(13)
    key = rng.randbytes(30)
    rtp, rtcp = long_traffic(13)
    rtp = rtp[:3000]
    single, batch = (
        opmob_c.SrtpSession(key[:16], key[16:], max_streams=8),
        opmob_c.SrtpSession(key[:16], key[16:], max_streams=8),
    )
    want = [outcome(single.protect, p) for p in rtp]
    got = [x if isinstance(x, bytes) else type(x) for b in chunks(rtp, 257) for x in batch.protect_batch(b)]
    assert got == want
    assert isinstance(want[0], bytes) and UnknownStream in want  # ten SSRCs, eight fit
    rx1, rx2 = opmob_c.SrtpSession(key[:16], key[16:]), opmob_c.SrtpSession(key[:16], key[16:])
    prot = [w for w in want if isinstance(w, bytes)]
    mixed = [damage(rng, p) if rng.random() < 0.3 else p for p in prot] + prot[:50]
    want_rx = [outcome(rx1.unprotect, p) for p in mixed]
    got_rx = [
        x if isinstance(x, bytes) else type(x) for b in chunks(mixed, 300) for x in rx2.unprotect_batch(b)
    ]
    assert got_rx == want_rx
    single, batch = opmob_c.SrtpSession(key[:16], key[16:]), opmob_c.SrtpSession(key[:16], key[16:])
    want_c = [single.protect_rtcp(p) for p in rtcp]
    assert batch.protect_rtcp_batch(rtcp) == want_c
    mixed = [damage(rng, p) if rng.random() < 0.3 else p for p in want_c] + want_c[:50]
    want_rx = [outcome(rx1.unprotect_rtcp, p) for p in mixed]
    got_rx = [x if isinstance(x, bytes) else type(x) for x in rx2.unprotect_rtcp_batch(mixed)]
    assert got_rx == want_rx
    assert Replayed in got_rx and AuthFailed in got_rx
    assert batch.protect_batch([]) == []


def test_fan_out_batch_one_session_per_packet() -> None:
    """The same RTP packet under each listener's key, one call; each listener unprotects its own."""
    rng = random.Random(17)
    keys = [rng.randbytes(30) for _ in range(20)]
    tx = [opmob_c.SrtpSession(k[:16], k[16:]) for k in keys]
    rx = [pure.SrtpSession(k[:16], k[16:]) for k in keys]
    for seq in range(5):
        plain = struct.pack(">BBHII", 0x80, 5, seq, 160 * seq, 0xABCD) + rng.randbytes(84)
        out = opmob_c.srtp_batch(opmob_c.lib.OPMOB_OP_PROTECT, tx, [plain] * len(tx))
        assert [r.unprotect(o) for r, o in zip(rx, out, strict=True)] == [plain] * len(tx)  # type: ignore[arg-type]
        assert len(set(out)) == len(tx)
    with pytest.raises(ValueError):
        opmob_c.srtp_batch(opmob_c.lib.OPMOB_OP_PROTECT, tx[:2], [plain] * 3)


def test_large_and_mixed_batches_split_like_single_calls() -> None:
    """Outputs cut from the batch buffer: one size over several 1,024-item chunks and a rest,
    one size with failures among them, and many sizes."""
    rng = random.Random(19)
    key = rng.randbytes(30)

    def pkt(seq: int, plen: int) -> bytes:
        return struct.pack(">BBHII", 0x80, 5, seq & 0xFFFF, 160 * seq, 0xC0FFEE) + rng.randbytes(plen)

    same = [pkt(i, 84) for i in range(2 * 1024 + 77)]
    mixed = [pkt(len(same) + i, rng.randrange(0, 300)) for i in range(1500)]
    faulty = [pkt(len(same) + len(mixed) + i, 84) for i in range(600)]
    faulty[10] = faulty[9]  # replayed
    faulty[300] = faulty[300][:5]  # truncated
    for n in (1, 1023, 1024, 1025):
        assert opmob_c._split(bytearray(range(7)) * n, array("I", [7] * n), n) == [bytes(range(7))] * n
    single = opmob_c.SrtpSession(key[:16], key[16:])
    want = [outcome(single.protect, p) for p in same + mixed + faulty]
    batch = opmob_c.SrtpSession(key[:16], key[16:])
    got = [
        x if isinstance(x, bytes) else type(x) for b in (same, mixed, faulty) for x in batch.protect_batch(b)
    ]
    assert got == want
    assert all(type(x) is bytes for x in got if not isinstance(x, type))
    rx = opmob_c.SrtpSession(key[:16], key[16:])
    prot = [w for w in want if isinstance(w, bytes)]
    sent = [p for p, w in zip(same + mixed + faulty, want, strict=True) if isinstance(w, bytes)]
    assert len(sent) == len(want) - 2
    assert rx.unprotect_batch(prot) == sent


def test_batches_from_several_threads_at_once() -> None:
    """Threads batching at once (the C calls release the GIL): per-thread scratch buffers, and
    fan-out batches locking shared sessions, give each thread exactly its own results."""
    import threading

    rng = random.Random(31)
    keys = [rng.randbytes(30) for _ in range(6)]
    shared = [opmob_c.SrtpSession(k[:16], k[16:]) for k in keys]
    nthreads, rounds = 4, 120
    plains = {
        t: [
            [
                struct.pack(">BBHII", 0x80, 5, r * 50 + i, 0, 0x7000 + t) + rng.randbytes(84 + t)
                for i in range(50)
            ]
            for r in range(rounds)
        ]
        for t in range(nthreads)
    }
    got: dict[int, tuple[list[Any], list[Any]]] = {}

    def work(t: int) -> None:
        own = opmob_c.SrtpSession(keys[0][:16], keys[0][16:])
        mine, fanned = [], []
        for batch in plains[t]:
            mine.append(own.protect_batch(batch))
            fanned.append(opmob_c.srtp_batch(opmob_c.lib.OPMOB_OP_PROTECT, shared, [batch[0]] * len(shared)))
        got[t] = (mine, fanned)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(nthreads):
        ref = pure.SrtpSession(keys[0][:16], keys[0][16:])
        assert got[t][0] == [[ref.protect(p) for p in batch] for batch in plains[t]]
        refs = [pure.SrtpSession(k[:16], k[16:]) for k in keys]
        assert got[t][1] == [[r.protect(batch[0]) for r in refs] for batch in plains[t]]


def test_constructor_refuses_what_the_twin_refuses() -> None:
    for args in ((MK, MS, 63), (MK, MS, 0x8000), (MK, MS, 128, 0), (MK[:15], MS), (MK, MS + b"x")):
        with pytest.raises(ValueError):
            pure.SrtpSession(*args)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            opmob_c.SrtpSession(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        opmob_c.SrtpSession(MK, MS, 128, 65537)


# -- bad input ---------------------------------------------------------------------------------------


def _genuine(seed: int) -> tuple[list[bytes], list[bytes]]:
    rtp, rtcp = long_traffic(seed)
    tx = GEN.outbound(MK + MS)
    return [tx.protect(p) for p in rtp[:200]], [tx.protect_rtcp(p) for p in rtcp[:100]]


GOOD_RTP, GOOD_RTCP = _genuine(21)


def anything(pool: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=1600),
        st.binary(min_size=1, max_size=120).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:]),
        st.tuples(st.sampled_from(pool), st.randoms(use_true_random=False)).map(lambda t: damage(t[1], t[0])),
    )


@fuzz
@given(data=anything(GOOD_RTP))
def test_unprotect_bad_input_same_outcome_as_twin(data: bytes) -> None:
    assert outcome(opmob_c.SrtpSession(MK, MS).unprotect, data) == outcome(
        pure.SrtpSession(MK, MS).unprotect, data
    )


@fuzz
@given(data=anything(GOOD_RTCP))
def test_unprotect_rtcp_bad_input_same_outcome_as_twin(data: bytes) -> None:
    assert outcome(opmob_c.SrtpSession(MK, MS).unprotect_rtcp, data) == outcome(
        pure.SrtpSession(MK, MS).unprotect_rtcp, data
    )


@fuzz
@given(data=st.binary(max_size=1600))
def test_protect_bad_input_same_outcome_as_twin(data: bytes) -> None:
    assert outcome(opmob_c.SrtpSession(MK, MS).protect, data) == outcome(
        pure.SrtpSession(MK, MS).protect, data
    )
    assert outcome(opmob_c.SrtpSession(MK, MS).protect_rtcp, data) == outcome(
        pure.SrtpSession(MK, MS).protect_rtcp, data
    )
