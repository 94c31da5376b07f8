"""RTP fixed header (RFC 3550 §5.1): wire bytes, round trips, bad input. Both runtimes."""

from fwtest import Rng, raises, unhex

from opmob import rtp
from opmob.errors import BadValue, BadVersion, Oversized, Truncated, WireError


def test_minimal_header_wire_bytes():
    # V=2, no P/X/CC; M=1, PT=5; seq 0x1234; ts 0xDEADBEEF; SSRC 0x01020304 (hand-computed).
    h = rtp.RtpHeader(rtp.PT_DVI4_8K, 0x1234, 0xDEADBEEF, 0x01020304, marker=True)
    assert h.encode() == unhex("80851234deadbeef01020304")


def test_csrcs_extension_and_padding_wire_bytes():
    h = rtp.RtpHeader(
        96, 1, 2, 3, csrcs=(0xAABBCCDD,), ext_profile=0xBEDE, ext=b"\x10\x01\x00\x00", padding=4
    )
    pkt = rtp.encode(h, b"xy")
    # b0: V=2|P|X|CC=1 = 0xB1; then CSRC, extension header (profile, 1 word), extension, payload, 3 pad + count
    assert pkt == unhex("b16000010000000200000003aabbccddbede000110010000") + b"xy" + unhex("00000004")
    back, payload = rtp.decode(pkt)
    assert back == h
    assert payload == b"xy"
    assert rtp.header_length(pkt) == 24


def test_round_trip_keeps_every_field():
    r = Rng(7)
    for _ in range(300):
        cc = r.below(4)
        ext = bytes(4 * r.below(3)) if r.below(2) else None
        h = rtp.RtpHeader(
            r.below(128),
            r.below(65536),
            r.u32(),
            r.u32(),
            marker=bool(r.below(2)),
            csrcs=[r.u32() for _ in range(cc)],
            ext_profile=None if ext is None else r.below(65536),
            ext=b"" if ext is None else ext,
            padding=r.below(5),
        )
        payload = r.bytes(r.below(100))
        back, got = rtp.decode(rtp.encode(h, payload))
        assert back == h
        assert got == payload


def test_sequence_and_timestamp_wrap_on_encode():
    h = rtp.RtpHeader(5, 65536 + 3, (1 << 32) + 9, 1)
    back, _ = rtp.decode(h.encode())
    assert (back.seq, back.ts) == (3, 9)


def test_bad_input_raises_typed_errors():
    good = rtp.RtpHeader(5, 1, 2, 3).encode() + b"payload"
    raises(Truncated, rtp.decode, good[:11])
    raises(Truncated, rtp.decode, b"")
    raises(BadVersion, rtp.decode, b"\x40" + good[1:])
    raises(Truncated, rtp.decode, b"\x83" + good[1:12])  # 3 CSRCs promised, none there
    raises(Truncated, rtp.decode, b"\x90" + good[1:12] + b"\xbe\xde")  # extension header cut short
    raises(Truncated, rtp.decode, b"\x90" + good[1:12] + b"\xbe\xde\x00\x05")  # extension longer than packet
    raises(BadValue, rtp.decode, b"\xa0" + good[1:] + b"\x00")  # padding count 0
    raises(BadValue, rtp.decode, b"\xa0" + good[1:12] + b"\xff")  # padding longer than the payload
    raises(Oversized, rtp.decode, good + bytes(rtp.MAX_PACKET))
    raises(BadValue, rtp.RtpHeader(128, 0, 0, 0).encode)
    raises(BadValue, rtp.RtpHeader(5, 0, 0, 0, csrcs=range(16)).encode)


def test_seeded_random_input_raises_only_wire_errors():
    r = Rng(2024)
    base = rtp.encode(
        rtp.RtpHeader(5, 1, 2, 3, csrcs=(9,), ext_profile=1, ext=bytes(4), padding=2), bytes(20)
    )
    decoded = 0
    for i in range(5000):
        if i & 1:
            data = bytearray(base)
            for _ in range(1 + r.below(4)):
                data[r.below(len(data))] = r.below(256)
            data = bytes(data[: r.below(len(data) + 1)])
        else:
            data = r.bytes(r.below(64))
        try:
            rtp.decode(data)
            decoded += 1
        except WireError:
            pass
    assert decoded > 100  # the mutations keep some packets valid, so both paths run
