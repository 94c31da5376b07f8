"""SRTP / SRTCP conformance against libsrtp2 (2.7.0 as bundled in pylibsrtp 1.0.0), live.

libsrtp checks: that the committed vectors (tests/vectors/srtp_libsrtp.json) are still what it
produces; that the known answers in tests/fw/test_srtp.py are its own; that it unprotects what
``opmob.srtp`` protects and the other way round (thousands of packets, ten SSRCs, sequence
wraps, SRTCP from four SSRCs); that it refuses our packets with a flipped bit or replayed, as we
refuse its; that both refuse SRTCP sent in clear; and that, for arbitrary runs of sequence
numbers (jumps, repeats, reordering), its sender and receiver decide exactly as ours do, packet
by packet. Hypothesis then feeds 10,000 random and damaged packets each to ``unprotect`` and
``unprotect_rtcp``: only WireError subclasses may come out, and only genuine packets may pass.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import random
import struct
from pathlib import Path
from types import ModuleType

import pylibsrtp
import pytest
from fuzzing import fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opmob.errors import AuthFailed, BadValue, Replayed, WireError
from opmob.rtp import header_length
from opmob.srtp import SrtpSession

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "srtp_libsrtp.json"
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


def traffic(seed: int) -> tuple[list[bytes], list[bytes]]:
    """Fresh RTP (ten interleaved streams) and RTCP traffic of the shapes the vectors have."""
    rng = random.Random(seed)
    return GEN.interleave(rng, GEN.rtp_streams(rng) + GEN.rtp_streams(rng)), GEN.rtcp_packets(rng)


def flip(pkt: bytes, bit: int) -> bytes:
    b = bytearray(pkt)
    b[bit >> 3] ^= 0x80 >> (bit & 7)
    return bytes(b)


def test_committed_vectors_equal_libsrtp_now() -> None:
    committed = json.loads(VECTORS.read_text())
    now = GEN.build()
    for key in ("master_key", "master_salt", "rtp", "rtcp"):
        assert committed[key] == now[key], (
            f"{key} differs: rerun tests/vectors/make_srtp_vectors.py and review"
        )
    assert sum(p is not None for _, p in now["rtp"]) >= 1000
    assert len(now["rtcp"]) >= 200
    assert VECTORS.read_text() == GEN.dump(now)


def test_fw_known_answers_are_libsrtps() -> None:
    tx = GEN.outbound(MK + MS)
    assert tx.protect(bytes.fromhex("800f1234decafbadcafebabe" + "ab" * 16)).hex() == (
        "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb"
    )
    assert tx.protect_rtcp(bytes.fromhex("81c8000bcafebabe" + "ab" * 16)).hex() == (
        "81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798"
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_libsrtp_unprotects_ours_and_we_send_what_it_sends(seed: int) -> None:
    key = random.Random(seed).randbytes(30)
    rtp, rtcp = traffic(seed)
    ours = SrtpSession(key[:16], key[16:])
    ref_tx, ref_rx = GEN.outbound(key), GEN.inbound(key)
    sent = 0
    wrapped: set[int] = set()
    for plain in rtp:
        try:
            prot = ours.protect(plain)
        except Replayed:
            with pytest.raises(pylibsrtp.Error, match="replay"):
                ref_tx.protect(plain)
            continue
        assert ref_tx.protect(plain) == prot
        assert ref_rx.unprotect(prot) == plain
        sent += 1
        ssrc = struct.unpack(">I", plain[8:12])[0]
        if ours.stream_state(ssrc, outbound=True)[0] > 0:
            wrapped.add(ssrc)
    for plain in rtcp:
        prot = ours.protect_rtcp(plain)
        assert ref_rx.unprotect_rtcp(prot) == plain
    assert sent >= 1000 and len(wrapped) >= 2 and len(rtcp) >= 200


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_we_unprotect_libsrtps(seed: int) -> None:
    key = random.Random(seed).randbytes(30)
    rtp, rtcp = traffic(seed)
    ref_tx = GEN.outbound(key)
    ours = SrtpSession(key[:16], key[16:])
    got = 0
    for plain in rtp:
        try:
            prot = ref_tx.protect(plain)
        except pylibsrtp.Error:
            continue
        assert ours.unprotect(prot) == plain
        got += 1
    for plain in rtcp:
        assert ours.unprotect_rtcp(ref_tx.protect_rtcp(plain)) == plain
    assert got >= 1000


def test_libsrtp_rejects_our_flipped_and_replayed_packets() -> None:
    rng = random.Random(11)
    key = rng.randbytes(30)
    rtp, rtcp = traffic(11)
    ours = SrtpSession(key[:16], key[16:])
    ref_rx = GEN.inbound(key)
    checked = 0
    for plain in rtp[:400]:
        try:
            prot = ours.protect(plain)
        except Replayed:
            continue
        bit = rng.randrange(len(prot) * 8)
        with pytest.raises(pylibsrtp.Error):
            ref_rx.unprotect(flip(prot, bit))
        assert ref_rx.unprotect(prot) == plain
        with pytest.raises(pylibsrtp.Error, match="replay"):
            ref_rx.unprotect(prot)
        checked += 1
    for plain in rtcp:
        prot = ours.protect_rtcp(plain)
        with pytest.raises(pylibsrtp.Error):
            ref_rx.unprotect_rtcp(flip(prot, rng.randrange(len(prot) * 8)))
        assert ref_rx.unprotect_rtcp(prot) == plain
        with pytest.raises(pylibsrtp.Error, match="replay"):
            ref_rx.unprotect_rtcp(prot)
    assert checked >= 300


def test_we_reject_libsrtps_flipped_and_replayed_packets() -> None:
    rng = random.Random(12)
    key = rng.randbytes(30)
    rtp, rtcp = traffic(12)
    ref_tx = GEN.outbound(key)
    ours = SrtpSession(key[:16], key[16:])
    checked = 0
    for plain in rtp[:400]:
        try:
            prot = ref_tx.protect(plain)
        except pylibsrtp.Error:
            continue
        before = ours.stream_state(struct.unpack(">I", plain[8:12])[0])
        # Payload and tag bits: a plain authentication failure, and no state moved.
        bit = rng.randrange(8 * header_length(plain), len(prot) * 8)
        with pytest.raises(AuthFailed):
            ours.unprotect(flip(prot, bit))
        assert ours.stream_state(struct.unpack(">I", plain[8:12])[0]) == before
        with pytest.raises(WireError):
            ours.unprotect(flip(prot, rng.randrange(len(prot) * 8)))
        assert ours.unprotect(prot) == plain
        with pytest.raises(Replayed):
            ours.unprotect(prot)
        checked += 1
    for plain in rtcp:
        prot = ref_tx.protect_rtcp(plain)
        # Past the version, not in the index (a flipped index may name one already seen: Replayed).
        n = len(prot)
        bit = rng.choice((rng.randrange(2, 8 * (n - 14)), rng.randrange(8 * (n - 10), 8 * n)))
        with pytest.raises(AuthFailed):
            ours.unprotect_rtcp(flip(prot, bit))
        with pytest.raises(WireError):
            ours.unprotect_rtcp(flip(prot, rng.randrange(8 * n)))
        assert ours.unprotect_rtcp(prot) == plain
        with pytest.raises(Replayed):
            ours.unprotect_rtcp(prot)
    assert checked >= 300


def test_both_refuse_srtcp_in_clear() -> None:
    """E = 0 with a genuine tag (made here with the standard library's hmac, not ours)."""
    from opmob.srtp import derive_session_keys

    auth_key = derive_session_keys(MK, MS)[4]
    plain = struct.pack(">BBHI", 0x80, 201, 1, 0x1234)
    for index in (1, 7, 0x7FFFFFFF):
        trailer = struct.pack(">I", index)
        pkt = plain + trailer + hmac.new(auth_key, plain + trailer, hashlib.sha1).digest()[:10]
        with pytest.raises(pylibsrtp.Error, match="unable to perform desired validation"):
            GEN.inbound(MK + MS).unprotect_rtcp(pkt)
        with pytest.raises(BadValue):
            SrtpSession(MK, MS).unprotect_rtcp(pkt)
        # With E = 1 the same tag is wrong for both.
        forged = plain + struct.pack(">I", 0x80000000 | index) + pkt[-10:]
        with pytest.raises(pylibsrtp.Error, match="authentication failure"):
            GEN.inbound(MK + MS).unprotect_rtcp(forged)
        with pytest.raises(AuthFailed):
            SrtpSession(MK, MS).unprotect_rtcp(forged)


# -- the same decisions as libsrtp, packet by packet --------------------------------------------

steps = st.one_of(
    st.just(1),
    st.integers(-200, 200),
    st.integers(-40000, 40000),
    st.sampled_from([0, 127, 128, 129, -127, -128, -129, 32767, 32768, 32769, -32768, 65535]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 32767, 32768, 32769, 65407, 65535])),
    moves=st.lists(steps, min_size=1, max_size=60),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_sender_and_receiver_decide_like_libsrtp(start: int, moves: list[int], order_seed: int) -> None:
    key = bytes(range(30))
    ours_tx, ours_rx = SrtpSession(key[:16], key[16:]), SrtpSession(key[:16], key[16:])
    ref_tx, ref_rx = GEN.outbound(key), GEN.inbound(key)
    seq = start
    sent = []
    for i, m in enumerate(moves):
        seq = (seq + m) & 0xFFFF
        plain = struct.pack(">BBHII", 0x80, 0, seq, i, 0xA5A5) + bytes([i]) * (i % 20)
        try:
            mine: bytes | None = ours_tx.protect(plain)
        except Replayed:
            mine = None
        try:
            ref: bytes | None = ref_tx.protect(plain)
        except pylibsrtp.Error:
            ref = None
        assert mine == ref, (i, seq)
        if mine is not None:
            sent.append((plain, mine))
        c = ours_tx.protect_rtcp(struct.pack(">BBHI", 0x80, 201, 1, 0xA5A5) + bytes([i]) * 4)
        assert c == ref_tx.protect_rtcp(struct.pack(">BBHI", 0x80, 201, 1, 0xA5A5) + bytes([i]) * 4)
        sent.append((None, c))
    # Deliver in a shuffled order with duplicates: each side accepts exactly the same packets.
    rng = random.Random(order_seed)
    arrivals = sent + [rng.choice(sent) for _ in range(len(sent) // 3)]
    rng.shuffle(arrivals)
    for plain, prot in arrivals:
        rtcp = plain is None
        try:
            mine = ours_rx.unprotect_rtcp(prot) if rtcp else ours_rx.unprotect(prot)
        except WireError:
            mine = None
        try:
            ref = ref_rx.unprotect_rtcp(prot) if rtcp else ref_rx.unprotect(prot)
        except pylibsrtp.Error:
            ref = None
        assert mine == ref


# -- bad input: only WireError, and only genuine packets pass -----------------------------------


def _pool(seed: int) -> tuple[bytes, dict[bytes, bytes], dict[bytes, bytes]]:
    """A key and genuine packets protected by libsrtp under it, each mapped to its plain packet."""
    rng = random.Random(seed)
    key = rng.randbytes(30)
    rtp, rtcp = traffic(seed)
    tx = GEN.outbound(key)
    good_rtp = {}
    for p in rtp[:300]:
        try:
            good_rtp[tx.protect(p)] = p
        except pylibsrtp.Error:
            pass
    return key, good_rtp, {tx.protect_rtcp(p): p for p in rtcp[:100]}


KEY, GOOD_RTP, GOOD_RTCP = _pool(21)


@st.composite
def damaged(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    p = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 4))
        if op == 0 and p:
            i = draw(st.integers(0, len(p) - 1))
            p[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            p = p[: draw(st.integers(0, len(p)))]
        elif op == 2:
            i = draw(st.integers(0, len(p)))
            p[i:i] = draw(st.binary(min_size=1, max_size=40))
        elif op == 3 and p:
            p[draw(st.integers(0, len(p) - 1))] = draw(st.integers(0, 255))
        elif op == 4 and len(p) > 12:
            # Header fields that steer parsing: CC, X, and an extension length.
            p[0] = 0x80 | draw(st.integers(0, 0x3F))
    return bytes(p)


def anything(pool: list[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, random bytes that look like version 2, and damaged genuine packets (which
    include, when no damage is drawn, the genuine packet itself)."""
    return st.one_of(
        st.binary(max_size=1600),
        st.binary(min_size=1, max_size=120).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:]),
        damaged(pool),
    )


@fuzz
@given(data=anything(sorted(GOOD_RTP)))
def test_unprotect_bad_input_raises_only_wire_errors(data: bytes) -> None:
    s = SrtpSession(KEY[:16], KEY[16:])
    try:
        out = s.unprotect(data)
    except WireError:
        return
    assert GOOD_RTP.get(data) == out


@fuzz
@given(data=anything(sorted(GOOD_RTCP)))
def test_unprotect_rtcp_bad_input_raises_only_wire_errors(data: bytes) -> None:
    s = SrtpSession(KEY[:16], KEY[16:])
    try:
        out = s.unprotect_rtcp(data)
    except WireError:
        return
    assert GOOD_RTCP.get(data) == out
