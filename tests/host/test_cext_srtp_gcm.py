"""SRTP/SRTCP with AEAD_AES_128_GCM (RFC 7714): the C extension (``opmob_c.SrtpSession(...,
profile=PROFILE_AEAD_AES_128_GCM)``) and the CPython twin (``opmob.srtp``) against libsrtp2.

libsrtp2 (2.7, through pylibsrtp, ``Policy.SRTP_PROFILE_AEAD_AES_128_GCM``) is the independent
reference: its own key derivation, IV, AAD and packet layout. The AES-GCM primitive under all
three is OpenSSL's (ours through EVP, the twin through ``cryptography``, pylibsrtp's libsrtp
linked against its own OpenSSL), so what is checked here is the SRTP framing around it.

Checked: known answers; > 10,000 RTP packets in ten SSRCs, every stream rolling over (ROC 0 -> 1),
plus 1,200 SRTCP packets, byte for byte equal from C, twin and libsrtp, each side unprotecting the
others'; every payload length 0..1,088; damaged tag, payload and header, and replays, refused by
C and twin with the same typed error (and by libsrtp), with no state moving; the twin's outcome
and stream state after every operation; batch = single calls; a fan-out mixing profiles; the
pipeline (``Transcoder``) with GCM sessions; bad input from hypothesis.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import opmob_c
import pylibsrtp
import pytest
import test_cext_pipeline as tcp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from opmob import dvi4, rtp
from opmob import srtp as pure
from opmob.errors import AuthFailed, BadValue, Oversized, Replayed, UnknownStream
from pylibsrtp import Policy, Session
from test_cext_srtp import (
    MK,
    MS,
    anything,
    check_against_twin,
    chunks,
    damage,
    flip,
    long_traffic,
    outcome,
    ssrc_of,
)

GCM = opmob_c.PROFILE_AEAD_AES_128_GCM
MS12 = MS[:12]
TAG = 16


def c_gcm(key: bytes, **kw: int) -> opmob_c.SrtpSession:
    return opmob_c.SrtpSession(key[:16], key[16:28], profile=GCM, **kw)


def pure_gcm(key: bytes, **kw: int) -> pure.SrtpSession:
    return pure.SrtpSession(key[:16], key[16:28], profile=GCM, **kw)


def ref(key: bytes, outbound: bool) -> Session:
    kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    return Session(Policy(key=key[:28], ssrc_type=kind, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))


def test_profile_ids_are_dtls_srtps() -> None:
    assert opmob_c.PROFILE_AES_CM_128_HMAC_SHA1_80 == pure.PROFILE_AES_CM_128_HMAC_SHA1_80 == 1
    assert GCM == pure.PROFILE_AEAD_AES_128_GCM == opmob_c.lib.OPMOB_SRTP_AEAD_AES_128_GCM == 7


def test_known_answers_are_libsrtps() -> None:
    plain = bytes.fromhex("800f1234decafbadcafebabe" + "ab" * 16)
    want = "800f1234decafbadcafebabe0eca0cf95ee955b26cd3d288b49f6ca959171450975f4144da9cdd7ae989a277"
    rtcp = bytes.fromhex("81c8000bcafebabe" + "ab" * 16)
    want_rtcp = "81c8000bcafebabeea6e5eb3c75c462000f59ebf9e4ebd4e934239488f02f9ca1580174557117e3780000001"
    for s in (c_gcm(MK + MS12), pure_gcm(MK + MS12), ref(MK + MS12, True)):
        assert s.protect(plain).hex() == want
        assert s.protect_rtcp(rtcp).hex() == want_rtcp
    # The same key under AES_CM gives other bytes: the profile is really in use.
    assert opmob_c.SrtpSession(MK, MS).protect(plain).hex() != want


def test_key_derivation_with_a_12_byte_master_salt() -> None:
    """libsrtp runs the AES-CM PRF on a GCM master salt zero-padded to 14 bytes."""
    rng = random.Random(3)
    for _ in range(20):
        mk, ms = rng.randbytes(16), rng.randbytes(12)
        for label in range(6):
            out = opmob_c.ffi.new("uint8_t[]", 16)
            assert opmob_c.lib.opmob_srtp_kdf(mk, 16, ms, 12, label, out, 16) == 0
            got = bytes(opmob_c.ffi.buffer(out))
            assert got == pure.kdf(mk, ms, label, 16) == pure.kdf(mk, ms + b"\0\0", label, 16)
    out = opmob_c.ffi.new("uint8_t[]", 16)
    assert opmob_c.lib.opmob_srtp_kdf(MK, 16, MS, 13, 0, out, 16) == opmob_c.lib.OPMOB_E_ARG


def test_over_ten_thousand_packets_with_rollover_equal_libsrtp_and_the_twin() -> None:
    rng = random.Random(41)
    key = rng.randbytes(28)
    rtp_pkts, rtcp = long_traffic(41)
    c_tx, c_rx, p_tx, p_rx = c_gcm(key), c_gcm(key), pure_gcm(key), pure_gcm(key)
    ref_tx, ref_rx = ref(key, True), ref(key, False)
    sent: list[bytes] = []
    mine_all: list[bytes] = []
    # C in batches of 1,000 (the relay's form), libsrtp and the twin packet by packet.
    for batch in chunks(rtp_pkts, 1000):
        for plain, mine in zip(batch, c_tx.protect_batch(batch), strict=True):
            try:
                theirs: bytes | None = ref_tx.protect(plain)
            except pylibsrtp.Error as e:
                assert "replay" in str(e)
                theirs = None
            twin = outcome(p_tx.protect, plain)
            if theirs is None:
                assert isinstance(mine, Replayed) and twin is Replayed
                continue
            assert mine == theirs == twin
            assert ref_rx.unprotect(mine) == plain == p_rx.unprotect(mine)
            sent.append(plain)
            mine_all.append(mine)
    assert len(sent) >= 10_000
    for s in {ssrc_of(p) for p in rtp_pkts}:
        state = c_tx.stream_state(s, outbound=True)
        assert state is not None and state[0] >= 1  # every stream rolled over
        assert state == p_tx.stream_state(s, outbound=True)
    # C unprotects libsrtp's, single calls and batches.
    ref_tx2 = ref(key, True)
    theirs_all = [ref_tx2.protect(p) for p in sent]
    assert theirs_all == mine_all
    half = len(theirs_all) // 2
    assert [c_rx.unprotect(p) for p in theirs_all[:half]] == sent[:half]
    assert [x for b in chunks(theirs_all[half:], 1000) for x in c_rx.unprotect_batch(b)] == sent[half:]
    # SRTCP, all three ways.
    mine_rtcp = [x for b in chunks(rtcp, 500) for x in c_tx.protect_rtcp_batch(b)]
    assert mine_rtcp == [ref_tx.protect_rtcp(p) for p in rtcp] == [p_tx.protect_rtcp(p) for p in rtcp]
    assert (
        [ref_rx.unprotect_rtcp(p) for p in mine_rtcp] == rtcp == [p_rx.unprotect_rtcp(p) for p in mine_rtcp]
    )
    their_rtcp = [ref_tx2.protect_rtcp(p) for p in rtcp]
    assert [c_rx.unprotect_rtcp(p) for p in their_rtcp] == rtcp
    assert len(rtcp) >= 1000


def test_every_payload_length_equals_libsrtp() -> None:
    """Payloads 0..1,088 bytes (partial and whole GCM blocks), RTP and SRTCP, against libsrtp both
    ways; one byte more is refused by C and twin alike."""
    rng = random.Random(43)
    key = rng.randbytes(28)
    c_tx, c_rx, p_tx = c_gcm(key), c_gcm(key), pure_gcm(key)
    ref_tx, ref_rx = ref(key, True), ref(key, False)
    for n in range(0, pure.MAX_PAYLOAD + 1):
        plain = struct.pack(">BBHII", 0x80, 5, n, 160 * n, 0x5EED) + rng.randbytes(n)
        mine = c_tx.protect(plain)
        assert mine == ref_tx.protect(plain) == p_tx.protect(plain)
        assert len(mine) == len(plain) + TAG
        assert c_rx.unprotect(mine) == plain == ref_rx.unprotect(mine)
        if n % 4 == 0:
            rtcp = struct.pack(">BBHI", 0x81, 200, n // 4 + 1, 0x5EED) + rng.randbytes(n)
            mine = c_tx.protect_rtcp(rtcp)
            assert mine == ref_tx.protect_rtcp(rtcp) == p_tx.protect_rtcp(rtcp)
            assert c_rx.unprotect_rtcp(mine) == rtcp == ref_rx.unprotect_rtcp(mine)
    too_big = struct.pack(">BBHII", 0x80, 5, 9999, 0, 0x5EED) + bytes(pure.MAX_PAYLOAD + 1)
    assert outcome(c_gcm(key).protect, too_big) is Oversized is outcome(pure_gcm(key).protect, too_big)
    # A packet that fits under AES_CM's 10-byte tag but not GCM's 16 within the 1,500-byte MTU.
    big = struct.pack(">BBHII", 0x9F, 5, 1, 0, 0x5EED) + bytes(60) + struct.pack(">HH", 0xBEDE, 83)
    big += bytes(332) + bytes(1080)  # a 408-byte header, 1,488 bytes in all
    assert len(big) + 10 <= 1500 < len(big) + TAG
    assert isinstance(opmob_c.SrtpSession(MK, MS).protect(big), bytes)
    assert outcome(c_gcm(key).protect, big) is Oversized is outcome(pure_gcm(key).protect, big)


def states(s: Any, ssrcs: set[int]) -> tuple[object, ...]:
    """Stream count and every stream's state, both directions: what a forged packet must not move."""
    return tuple(
        (s.stream_count(o), tuple(s.stream_state(x, o) for x in sorted(ssrcs))) for o in (False, True)
    )


def test_damaged_and_replayed_packets_refused_alike_and_nothing_moves() -> None:
    """Every damaged packet (tag, payload, header; SRTCP also the index) gets the same typed
    error from C and twin, libsrtp refuses ours damaged too, and neither side's state moves."""
    rng = random.Random(47)
    key = rng.randbytes(28)
    rtp_pkts, rtcp = long_traffic(47)
    c_tx, c_rx, p_rx = c_gcm(key), c_gcm(key), pure_gcm(key)
    ref_tx, ref_rx = ref(key, True), ref(key, False)
    ssrcs = {ssrc_of(p) for p in rtp_pkts} | {0xF0F0F0F0}
    checked = 0
    for plain in rtp_pkts[:600]:
        theirs = ref_tx.protect(plain)
        hlen = rtp.header_length(plain)
        forged = [
            flip(theirs, 8 * (len(theirs) - 1 - rng.randrange(TAG)) + rng.randrange(8)),  # tag
            flip(theirs, 8 * 4 + rng.randrange(32)),  # timestamp: AAD only
            flip(theirs, 8 * 1),  # marker
            theirs[:8] + struct.pack(">I", 0xF0F0F0F0) + theirs[12:],  # another SSRC: a new stream
        ]
        if len(theirs) > hlen + TAG:
            forged.append(flip(theirs, 8 * rng.randrange(hlen, len(theirs) - TAG) + rng.randrange(8)))
        before = states(c_rx, ssrcs)
        assert before == states(p_rx, ssrcs)
        for bad in forged:
            assert outcome(c_rx.unprotect, bad) is AuthFailed is outcome(p_rx.unprotect, bad)
        assert states(c_rx, ssrcs) == before == states(p_rx, ssrcs)
        assert c_rx.unprotect(theirs) == plain == p_rx.unprotect(theirs)
        assert outcome(c_rx.unprotect, theirs) is Replayed is outcome(p_rx.unprotect, theirs)
        checked += 1
    assert checked == 600
    assert c_rx.stream_state(0xF0F0F0F0) is None and p_rx.stream_state(0xF0F0F0F0) is None
    assert states(c_rx, ssrcs) == states(p_rx, ssrcs)
    # SRTCP: tag, payload, header, index; then replays.
    for plain in rtcp[:300]:
        theirs = ref_tx.protect_rtcp(plain)
        n = len(theirs)
        forged = [
            flip(theirs, 8 * (n - 4 - 1 - rng.randrange(TAG)) + rng.randrange(8)),  # tag
            flip(theirs, 8 * 1 + rng.randrange(8)),  # header: packet type
            theirs[:-4] + struct.pack(">I", struct.unpack(">I", theirs[-4:])[0] + 1000),  # index
        ]
        if n > 8 + 20:
            forged.append(flip(theirs, 8 * rng.randrange(8, n - 20) + rng.randrange(8)))  # payload
        before = states(c_rx, ssrcs | {ssrc_of(plain, rtcp=True)})
        for bad in forged:
            assert outcome(c_rx.unprotect_rtcp, bad) is AuthFailed is outcome(p_rx.unprotect_rtcp, bad)
        assert states(c_rx, ssrcs | {ssrc_of(plain, rtcp=True)}) == before
        assert c_rx.unprotect_rtcp(theirs) == plain == p_rx.unprotect_rtcp(theirs)
        assert outcome(c_rx.unprotect_rtcp, theirs) is Replayed is outcome(p_rx.unprotect_rtcp, theirs)
        mine = c_tx.protect_rtcp(plain)
        with pytest.raises(pylibsrtp.Error):
            ref_rx.unprotect_rtcp(flip(mine, 8 * rng.randrange(n)))
        assert ref_rx.unprotect_rtcp(mine) == plain
        with pytest.raises(pylibsrtp.Error, match="replay"):
            ref_rx.unprotect_rtcp(mine)


def test_libsrtp_refuses_our_damaged_and_replayed_packets() -> None:
    """Any one bit flipped anywhere in our packet, and a replay: libsrtp refuses."""
    rng = random.Random(53)
    key = rng.randbytes(28)
    rtp_pkts, _ = long_traffic(53)
    c_tx, ref_rx = c_gcm(key), ref(key, False)
    for plain in rtp_pkts[:600]:
        mine = c_tx.protect(plain)
        with pytest.raises(pylibsrtp.Error):
            ref_rx.unprotect(flip(mine, rng.randrange(len(mine) * 8)))
        assert ref_rx.unprotect(mine) == plain
        with pytest.raises(pylibsrtp.Error, match="replay"):
            ref_rx.unprotect(mine)


def test_srtcp_in_clear_is_refused_even_with_a_good_tag() -> None:
    """E = 0 under GCM: the whole packet authenticated, nothing encrypted. Refused
    with BadValue before the tag is looked at, as for AES_CM."""
    key = pure.kdf(MK, MS12, pure.LABEL_RTCP_ENCRYPTION, 16)
    salt = pure.kdf(MK, MS12, pure.LABEL_RTCP_SALT, 12)
    plain = struct.pack(">BBHI", 0x80, 201, 1, 0x1234) + bytes(8)
    for index in (1, 7, 0x7FFFFFFF):
        word = struct.pack(">I", index)
        iv = bytes(a ^ b for a, b in zip(struct.pack(">HIHI", 0, 0x1234, 0, index), salt, strict=True))
        tag = AESGCM(key).encrypt(iv, b"", plain + word)
        pkt = plain + tag + word
        assert outcome(c_gcm(MK + MS12).unprotect_rtcp, pkt) is BadValue
        assert outcome(pure_gcm(MK + MS12).unprotect_rtcp, pkt) is BadValue
        forged = pkt[:-4] + struct.pack(">I", 0x80000000 | index)
        assert outcome(c_gcm(MK + MS12).unprotect_rtcp, forged) is AuthFailed
        assert outcome(pure_gcm(MK + MS12).unprotect_rtcp, forged) is AuthFailed


@pytest.mark.parametrize(
    "window,max_streams,seed", [(128, 64, 61), (64, 3, 62), (1000, 4, 63), (32767, 2, 64)]
)
def test_every_outcome_and_state_equal_the_twin(window: int, max_streams: int, seed: int) -> None:
    check_against_twin(window, max_streams, seed, GCM)


def test_batch_forms_equal_single_calls() -> None:
    rng = random.Random(67)
    key = rng.randbytes(28)
    rtp_pkts, rtcp = long_traffic(67)
    rtp_pkts = rtp_pkts[:3000]
    single, batch = c_gcm(key, max_streams=8), c_gcm(key, max_streams=8)
    want = [outcome(single.protect, p) for p in rtp_pkts]
    got = [
        x if isinstance(x, bytes) else type(x) for b in chunks(rtp_pkts, 257) for x in batch.protect_batch(b)
    ]
    assert got == want
    assert isinstance(want[0], bytes) and UnknownStream in want  # ten SSRCs, eight fit
    rx1, rx2 = c_gcm(key), c_gcm(key)
    prot = [w for w in want if isinstance(w, bytes)]
    mixed = [damage(rng, p) if rng.random() < 0.3 else p for p in prot] + prot[:50]
    want_rx = [outcome(rx1.unprotect, p) for p in mixed]
    got_rx = [
        x if isinstance(x, bytes) else type(x) for b in chunks(mixed, 300) for x in rx2.unprotect_batch(b)
    ]
    assert got_rx == want_rx
    assert AuthFailed in got_rx and Replayed in got_rx
    single, batch = c_gcm(key), c_gcm(key)
    want_c = [single.protect_rtcp(p) for p in rtcp]
    assert batch.protect_rtcp_batch(rtcp) == want_c
    mixed = [damage(rng, p, -4) if rng.random() < 0.3 else p for p in want_c] + want_c[:50]
    want_rx = [outcome(rx1.unprotect_rtcp, p) for p in mixed]
    got_rx = [x if isinstance(x, bytes) else type(x) for x in rx2.unprotect_rtcp_batch(mixed)]
    assert got_rx == want_rx
    assert Replayed in got_rx and AuthFailed in got_rx and BadValue in got_rx


def test_fan_out_mixing_profiles_in_one_call() -> None:
    """One packet under each listener's key and profile, one C call: the output room is per
    packet the largest tag (a 10-byte stride would leave the GCM outputs short of room)."""
    rng = random.Random(71)
    keys = [rng.randbytes(30) for _ in range(20)]
    profiles = [GCM if i % 3 else pure.PROFILE_AES_CM_128_HMAC_SHA1_80 for i in range(len(keys))]

    def pair(k: bytes, prof: int) -> tuple[opmob_c.SrtpSession, pure.SrtpSession]:
        ms = k[16 : 16 + pure.master_salt_len(prof)]
        return opmob_c.SrtpSession(k[:16], ms, profile=prof), pure.SrtpSession(k[:16], ms, profile=prof)

    tx, rx = zip(*(pair(k, p) for k, p in zip(keys, profiles, strict=True)), strict=True)
    for seq in range(5):
        plain = struct.pack(">BBHII", 0x80, 5, seq, 160 * seq, 0xABCD) + rng.randbytes(1000)
        out = opmob_c.srtp_batch(opmob_c.lib.OPMOB_OP_PROTECT, list(tx), [plain] * len(tx))
        assert [len(o) for o in out] == [len(plain) + (TAG if p == GCM else 10) for p in profiles]
        assert [r.unprotect(o) for r, o in zip(rx, out, strict=True)] == [plain] * len(tx)
        rtcp = struct.pack(">BBHI", 0x81, 200, 250, 0xABCD) + rng.randbytes(996)
        out = opmob_c.srtp_batch(opmob_c.lib.OPMOB_OP_PROTECT_RTCP, list(tx), [rtcp] * len(tx))
        assert [r.unprotect_rtcp(o) for r, o in zip(rx, out, strict=True)] == [rtcp] * len(tx)
    gcm_only = c_gcm(keys[1])
    many = [struct.pack(">BBHII", 0x80, 5, i, 0, 7) + bytes(1000) for i in range(300)]
    assert all(isinstance(x, bytes) and len(x) == 1028 for x in gcm_only.protect_batch(many))


def test_constructor_refuses_wrong_profile_and_salt() -> None:
    for args, kw in (
        ((MK, MS), {"profile": GCM}),  # a 14-byte salt for GCM
        ((MK, MS12), {}),  # a 12-byte salt for AES_CM
        ((MK, MS12), {"profile": 2}),
        ((MK, MS), {"profile": 0}),
        ((MK[:15], MS12), {"profile": GCM}),
    ):
        with pytest.raises(ValueError):
            pure.SrtpSession(*args, **kw)
        with pytest.raises(ValueError):
            opmob_c.SrtpSession(*args, **kw)
    p = opmob_c.ffi.new("opmob_srtp **")
    for prof, salt in ((GCM, MS), (1, MS12), (8, MS12), (-1, MS)):
        assert (
            opmob_c.lib.opmob_srtp_new_profile(prof, MK, 16, salt, len(salt), 128, 4, p)
            == opmob_c.lib.OPMOB_E_ARG
        )
    assert opmob_c.lib.opmob_srtp_new_profile(GCM, MK, 16, MS12, 12, 128, 4, p) == 0
    opmob_c.lib.opmob_srtp_free(p[0])
    assert c_gcm(MK + MS12).profile == pure_gcm(MK + MS12).profile == GCM
    assert opmob_c.SrtpSession(MK, MS).profile == pure.SrtpSession(MK, MS).profile == 1


# -- the pipeline ------------------------------------------------------------------------------------


def test_pipeline_to_codec2_with_gcm_sessions_equals_composition() -> None:
    """Accessory (GCM) -> Transcoder -> backhaul (GCM), against the twin's GCM sessions composed
    step by step (test_cext_pipeline.RefSlot); damage and replays included."""
    nslots = 4
    ks = [random.Random(73 + i).randbytes(28) for i in range(nslots + 1)]
    back = ks[-1]
    tc = opmob_c.Transcoder(nslots)
    refs = []
    c_back, p_back = c_gcm(back), pure_gcm(back)
    for slot, cfg in enumerate(tcp.slot_cfgs("3200", nslots)):
        tc.open(slot, **cfg, dvi4_rx=c_gcm(ks[slot]), codec2_tx=c_back)
        refs.append(tcp.RefSlot(cfg, {"dvi4_rx": pure_gcm(ks[slot]), "codec2_tx": p_back}))
    senders = [ref(ks[s], True) for s in range(nslots)]
    rng = random.Random(79)
    inputs = []
    for slot, plain, bad in tcp.accessory_traffic(5, nslots, 200):
        pkt = senders[slot].protect(plain)
        if bad:
            pkt = tcp.damage(rng, pkt)
        inputs.append((slot, pkt))
        if rng.random() < 0.02:
            inputs.append((slot, pkt))
    want = [tcp.result(refs[s].to_codec2, p) for s, p in inputs]
    got = [tcp.as_plain(r) for i in range(0, len(inputs), 50) for r in tc.to_codec2(inputs[i : i + 50])]
    assert got == want
    kinds = {w if isinstance(w, str) else len(w) for w in want}
    assert {"AuthFailed", "Replayed", 1} <= kinds
    outs = [p for w in want if isinstance(w, list) for p in w]
    assert len(outs) > 500 and all(len(p) == 12 + 8 + TAG for p in outs)
    back_rx = ref(back, False)
    assert all(len(back_rx.unprotect(p)) == 12 + 8 for p in outs)  # libsrtp reads the backhaul


def test_two_relays_with_gcm_carry_speech_accessory_to_accessory() -> None:
    """libsrtp (GCM) talker -> relay A -> GCM backhaul -> relay B -> libsrtp (GCM) listener: every
    packet arrives, in order, decodable."""
    rng = random.Random(83)
    acc_a, back, acc_b = (rng.randbytes(28) for _ in range(3))
    a, b = opmob_c.Transcoder(4), opmob_c.Transcoder(4)
    a.open(1, codec2_ssrc=0xC0DEC2, dvi4_ssrc=0, dvi4_rx=c_gcm(acc_a), codec2_tx=c_gcm(back))
    b.open(3, codec2_ssrc=0, dvi4_ssrc=0xACCE55, codec2_rx=c_gcm(back), dvi4_tx=c_gcm(acc_b))
    talker, listener = ref(acc_a, True), ref(acc_b, False)
    pcm = (tcp.SPEECH / "hts1a.raw").read_bytes()
    enc, dec = dvi4.Dvi4Encoder(), dvi4.Dvi4Decoder()
    sent = [
        talker.protect(
            rtp.encode(
                rtp.RtpHeader(5, 100 + f, 8000 + 160 * f, 0x7A1C, marker=f == 0),
                enc.encode(pcm[f * tcp.FRAME : (f + 1) * tcp.FRAME]),
            )
        )
        for f in range(len(pcm) // tcp.FRAME)
    ]
    got = []
    for i in range(0, len(sent), 40):
        backhaul = [p for r in a.to_codec2([(1, p) for p in sent[i : i + 40]]) for p in r]
        assert all(len(p) == 12 + 8 + TAG for p in backhaul)
        for r in b.to_dvi4([(3, p) for p in backhaul]):
            assert isinstance(r, list) and len(r) == 1 and len(r[0]) == 12 + 84 + TAG
            hdr, payload = rtp.decode(listener.unprotect(r[0]))
            got.append((hdr, bytes(dec.decode(payload))))
    assert len(got) == len(sent)
    assert [h.seq for h, _ in got] == list(range(len(sent)))
    assert dec.resyncs == 0
    nxt = rtp.encode(rtp.RtpHeader(5, 100 + len(sent), 0, 0x7A1C), bytes(84))
    forged = flip(talker.protect(nxt), 8 * (12 + 84 + TAG) - 1)
    assert isinstance(a.to_codec2([(1, forged)])[0], AuthFailed)


# -- bad input ---------------------------------------------------------------------------------------


def _genuine(seed: int) -> tuple[list[bytes], list[bytes]]:
    rtp_pkts, rtcp = long_traffic(seed)
    tx = ref(MK + MS12, True)
    return [tx.protect(p) for p in rtp_pkts[:200]], [tx.protect_rtcp(p) for p in rtcp[:100]]


GOOD_RTP, GOOD_RTCP = _genuine(89)


@fuzz
@given(data=anything(GOOD_RTP))
def test_unprotect_bad_input_same_outcome_as_twin(data: bytes) -> None:
    assert outcome(c_gcm(MK + MS12).unprotect, data) == outcome(pure_gcm(MK + MS12).unprotect, data)


@fuzz
@given(data=anything(GOOD_RTCP))
def test_unprotect_rtcp_bad_input_same_outcome_as_twin(data: bytes) -> None:
    assert outcome(c_gcm(MK + MS12).unprotect_rtcp, data) == outcome(pure_gcm(MK + MS12).unprotect_rtcp, data)


@fuzz
@given(data=st.binary(max_size=1600))
def test_protect_bad_input_same_outcome_as_twin(data: bytes) -> None:
    assert outcome(c_gcm(MK + MS12).protect, data) == outcome(pure_gcm(MK + MS12).protect, data)
    assert outcome(c_gcm(MK + MS12).protect_rtcp, data) == outcome(pure_gcm(MK + MS12).protect_rtcp, data)
