"""TS 24.380 floor-control messages in RTCP APP "MCPT" packets (opmob.mcpt), on both runtimes.

The wire vectors below are worked out by hand from TS 24.380 clause 8 and RFC 3550 clause 6.7, not
produced by the encoder; tests/host/test_mcpt_tshark.py checks the same layouts against tshark.
"""

import struct

from fwtest import Rng, raises, unhex
from opmob import mcpt
from opmob.errors import BadValue, BadVersion, Oversized, Truncated, WireError
from opmob.mcpt import FloorMsg, TrackInfo

# --- hand-computed packets -------------------------------------------------------------------------

# Floor Request, SSRC 0x11223344, Floor Priority 5.
#   80            V=2, P=0, subtype 00000 (Floor Request)
#   cc            PT 204 (APP)
#   0003          16 bytes = 4 words, minus one
#   11223344      SSRC
#   4d435054      "MCPT"
#   00 02 05 00   field 0 (Floor Priority), length 2, priority 5, spare 0
FLOOR_REQUEST_P5 = "80cc0003112233444d43505400020500"

# Floor Granted asking for a Floor Ack, SSRC 0xdeadbeef, Duration 30 s, priority 200, User ID "ab".
#   91            V=2, P=0, subtype 1 0001 (ack bit + Floor Granted)
#   0005          24 bytes = 6 words, minus one
#   01 02 001e    field 1 (Duration), length 2, 30
#   00 02 c8 00   field 0 (Floor Priority), length 2, 200, spare
#   06 02 6162    field 6 (User ID), length 2, "ab" (2 + 2 bytes: no padding)
FLOOR_GRANTED_ACK = "91cc0005deadbeef4d4350540102001e0002c80006026162"

# Floor Deny, SSRC 1, Reject Cause 7 (queue full) with phrase "busy!", then User ID "björn@se".
#   83            subtype 3 (Floor Deny)
#   02 07 0007 6275737921 000000   field 2, length 2 + 5, cause 7, "busy!", 3 bytes padding (9 -> 12)
#   06 09 626ac3b6726e407365 00    field 6, length 9 ("ö" is c3 b6), 1 byte padding (11 -> 12)
#   length: 12 + 12 + 12 = 36 bytes = 9 words -> 8
FLOOR_DENY_TEXT = "83cc0008000000014d4350540207000762757379210000000609626ac3b6726e40736500"

# Floor Release with Track Info: queueing capability 1, participant type "abc", references 1 and
# 0xffffffff. Value: 01 03 "abc" 00 (type padded to 4) 00000001 ffffffff = 14 bytes; 2 + 14 = 16, so
# no field padding. 12 + 16 = 28 bytes = 7 words -> 6.
FLOOR_RELEASE_TRACK = "84cc00060000abcd4d4350540b0e01036162630000000001ffffffff"

# Floor Ack from the controlling function (Source 2) acknowledging a Floor Granted (Message Type 1),
# carrying an SSRC field 0xaabbccdd (value: SSRC + 16 spare bits = 6 bytes; 2 + 6 = 8, no padding).
#   8a            subtype 10 (Floor Ack)
#   0a 02 0002    field 10 (Source), 2
#   0c 02 01 00   field 12 (Message Type), 1, spare
#   0e 06 aabbccdd 0000   field 14 (SSRC)
#   12 + 4 + 4 + 8 = 28 bytes -> 6
FLOOR_ACK_SSRC = "8acc0006000000054d4350540a0200020c0201000e06aabbccdd0000"


def test_floor_request_priority_wire_bytes():
    m = FloorMsg(mcpt.FLOOR_REQUEST, 0x11223344, priority=5)
    assert mcpt.encode(m) == unhex(FLOOR_REQUEST_P5)
    assert mcpt.decode(unhex(FLOOR_REQUEST_P5)) == m


def test_floor_granted_with_ack_bit_wire_bytes():
    m = FloorMsg(mcpt.FLOOR_GRANTED, 0xDEADBEEF, True, duration=30, priority=200, user_id="ab")
    assert mcpt.encode(m) == unhex(FLOOR_GRANTED_ACK)
    d = mcpt.decode(unhex(FLOOR_GRANTED_ACK))
    assert d == m and d.ack_req is True and d.name == "Floor Granted"


def test_floor_deny_reject_phrase_and_utf8_wire_bytes():
    m = FloorMsg(mcpt.FLOOR_DENY, 1, reject_cause=7, reject_text="busy!", user_id="bj\u00f6rn@se")
    assert mcpt.encode(m) == unhex(FLOOR_DENY_TEXT)
    assert mcpt.decode(unhex(FLOOR_DENY_TEXT)) == m


def test_track_info_wire_bytes():
    m = FloorMsg(mcpt.FLOOR_RELEASE, 0xABCD, track_info=TrackInfo(1, "abc", [1, 0xFFFFFFFF]))
    assert mcpt.encode(m) == unhex(FLOOR_RELEASE_TRACK)
    d = mcpt.decode(unhex(FLOOR_RELEASE_TRACK))
    assert d.track_info == TrackInfo(1, "abc", (1, 0xFFFFFFFF))
    assert d.track_info.refs == (1, 0xFFFFFFFF)


def test_track_info_participant_type_already_aligned_has_no_padding():
    # "abcd" is 4 bytes: no padding, so the reference follows at once. Value 2 + 4 + 4 = 10 bytes,
    # field 12 bytes: 0b 0a 00 04 61626364 00000007.
    m = FloorMsg(mcpt.FLOOR_RELEASE, 1, track_info=TrackInfo(0, "abcd", [7]))
    assert mcpt.encode(m)[12:] == unhex("0b0a00046162636400000007")
    # An empty participant type takes no bytes at all: 0b 06 01 00 00000009.
    m = FloorMsg(mcpt.FLOOR_RELEASE, 1, track_info=TrackInfo(1, "", [9]))
    assert mcpt.encode(m)[12:] == unhex("0b06010000000009")


def test_floor_ack_source_message_type_and_ssrc_field_wire_bytes():
    m = FloorMsg(mcpt.FLOOR_ACK, 5, source=2, msg_type=1, ssrc_field=0xAABBCCDD)
    assert mcpt.encode(m) == unhex(FLOOR_ACK_SSRC)
    assert mcpt.decode(unhex(FLOOR_ACK_SSRC)) == m


def test_two_byte_fields_wire_bytes():
    # Each of these is id | 02 | 16-bit big-endian value, no padding.
    m = FloorMsg(mcpt.FLOOR_TAKEN, 0, permission=1, seq=0xBEEF, indicator=mcpt.IND_EMERGENCY)
    assert mcpt.encode(m)[12:] == unhex("050200010802beef0d021000")
    m = FloorMsg(mcpt.FLOOR_QUEUE_POSITION_INFO, 0, queue_info=(3, 250))
    assert mcpt.encode(m)[12:] == unhex("030203fa")
    m = FloorMsg(mcpt.FLOOR_GRANTED, 0, queue_size=513)
    assert mcpt.encode(m)[12:] == unhex("07020201")


# --- field order and round trips -------------------------------------------------------------------

TI = TrackInfo(1, "mcptt-client", [0x01020304, 42])

# Every field each message's TS 24.380 table lists, in the table's order (written out here rather
# than read from mcpt.ORDER, so a wrong table in the module cannot agree with itself).
SPEC_ORDER = [
    (mcpt.FLOOR_REQUEST, ("priority", "user_id", "track_info", "indicator")),
    (
        mcpt.FLOOR_GRANTED,
        (
            "duration",
            "ssrc_field",
            "priority",
            "user_id",
            "queue_size",
            "queued_user",
            "queue_info",
            "track_info",
            "indicator",
        ),
    ),
    (
        mcpt.FLOOR_TAKEN,
        ("granted_party", "permission", "user_id", "seq", "track_info", "indicator", "ssrc_field"),
    ),
    (mcpt.FLOOR_DENY, ("reject_cause", "user_id", "track_info", "indicator")),
    (mcpt.FLOOR_RELEASE, ("user_id", "track_info", "indicator")),
    (mcpt.FLOOR_IDLE, ("seq", "track_info", "indicator")),
    (mcpt.FLOOR_REVOKE, ("reject_cause", "track_info", "indicator")),
    (mcpt.FLOOR_QUEUE_POSITION_REQUEST, ("user_id", "track_info")),
    (
        mcpt.FLOOR_QUEUE_POSITION_INFO,
        ("user_id", "ssrc_field", "queued_user", "queue_info", "track_info", "indicator"),
    ),
    (mcpt.FLOOR_ACK, ("source", "msg_type", "track_info")),
    (mcpt.FLOOR_RELEASE_MULTI_TALKER, ("user_id", "track_info", "indicator", "ssrc_field")),
]

SAMPLE = {
    "priority": 7,
    "duration": 120,
    "reject_cause": mcpt.DENY_QUEUE_FULL,
    "queue_info": (2, 9),
    "granted_party": "erik@se",
    "permission": 1,
    "user_id": "kari@no",
    "queue_size": 4,
    "seq": 65535,
    "queued_user": "matti@fi",
    "source": mcpt.SOURCE_PARTICIPATING,
    "track_info": TI,
    "msg_type": mcpt.FLOOR_GRANTED,
    "indicator": mcpt.IND_NORMAL | mcpt.IND_QUEUEING_SUPPORTED,
    "ssrc_field": 0xCAFEF00D,
}

ID_OF = {
    "priority": 0,
    "duration": 1,
    "reject_cause": 2,
    "queue_info": 3,
    "granted_party": 4,
    "permission": 5,
    "user_id": 6,
    "queue_size": 7,
    "seq": 8,
    "queued_user": 9,
    "source": 10,
    "track_info": 11,
    "msg_type": 12,
    "indicator": 13,
    "ssrc_field": 14,
}


def field_ids(pkt):
    """Field ids in wire order, walking the TLVs by hand."""
    out = []
    pos = 12
    while pos < len(pkt):
        fid, n = pkt[pos], pkt[pos + 1]
        out.append(fid)
        step = 2 + n
        pos += step + (4 - step % 4) % 4
    assert pos == len(pkt)
    return out


def full_msg(kind, names, ack=False):
    fields = {}
    for a in names:
        fields[a] = SAMPLE[a]
    if "reject_cause" in names:
        fields["reject_text"] = "queue full"
    return FloorMsg(kind, 0x5EED0000 + kind, ack, **fields)


def test_fields_follow_the_spec_table_order():
    for kind, names in SPEC_ORDER:
        pkt = mcpt.encode(full_msg(kind, names))
        assert field_ids(pkt) == [ID_OF[a] for a in names], mcpt.MESSAGE_NAMES[kind]


def test_fields_a_table_does_not_list_follow_in_ascending_id():
    m = FloorMsg(mcpt.FLOOR_IDLE, 1, seq=1, indicator=0x8000, ssrc_field=3, priority=1, user_id="x")
    assert field_ids(mcpt.encode(m)) == [8, 13, 0, 6, 14]


def test_round_trip_every_message_type_with_every_field():
    for kind, names in SPEC_ORDER:
        for ack in (False, True):
            if ack and kind not in mcpt.ACK_KINDS:
                continue
            m = full_msg(kind, names, ack)
            pkt = mcpt.encode(m)
            assert len(pkt) % 4 == 0
            assert struct.unpack(">H", pkt[2:4])[0] == len(pkt) // 4 - 1
            assert pkt[0] == 0x80 | kind | (0x10 if ack else 0)
            d = mcpt.decode(pkt)
            assert d == m, (d, m)
            assert mcpt.encode(d) == pkt


def test_decode_accepts_any_field_order():
    # Fields reversed relative to the table: the decoder does not care, the encoder restores order.
    body = "0d0280000602616200020500"
    pkt = unhex("80cc0005000000094d435054" + body)
    d = mcpt.decode(pkt)
    assert d == FloorMsg(mcpt.FLOOR_REQUEST, 9, priority=5, user_id="ab", indicator=0x8000)
    assert field_ids(mcpt.encode(d)) == [0, 6, 13]


def test_decode_accepts_bytearray_and_memoryview():
    raw = unhex(FLOOR_DENY_TEXT)
    want = mcpt.decode(raw)
    assert mcpt.decode(bytearray(raw)) == want
    assert mcpt.decode(memoryview(raw)) == want
    assert mcpt.decode_compound(memoryview(raw + raw)) == [want, want]


def test_padding_contents_are_ignored():
    # TS 24.380: padding "should" be zero and "shall" be ignored by the receiver.
    raw = bytearray(unhex(FLOOR_DENY_TEXT))
    raw[21:24] = b"\xff\xfe\xfd"  # the 3 padding bytes after "busy!"
    raw[35] = 0x55  # the padding byte after the User ID
    assert mcpt.decode(bytes(raw)) == mcpt.decode(unhex(FLOOR_DENY_TEXT))
    ti = bytearray(unhex(FLOOR_RELEASE_TRACK))
    ti[19] = 0x77  # the participant type's padding byte
    assert mcpt.decode(bytes(ti)).track_info == TrackInfo(1, "abc", (1, 0xFFFFFFFF))


def test_spare_bytes_are_ignored():
    raw = bytearray(unhex(FLOOR_ACK_SSRC))
    raw[19] = 0xEE  # Message Type spare
    raw[26:28] = b"\x12\x34"  # SSRC field spare
    assert mcpt.decode(bytes(raw)) == mcpt.decode(unhex(FLOOR_ACK_SSRC))


def test_unknown_fields_are_skipped():
    base = FloorMsg(mcpt.FLOOR_REQUEST, 0x11223344, priority=5)
    # id 20 (List of Locations in later releases), length 3, padded to 8 bytes; and id 200 with a
    # 16-bit length of 5 (3-byte header + 5 = 8 bytes, no padding).
    extra = "1403aabbcc000000" + "c800050102030405"
    pkt = unhex("80cc0007112233444d43505400020500" + extra)
    assert mcpt.decode(pkt) == base
    # Unknown fields may repeat; known ones may not.
    pkt = unhex("80cc0005112233444d435054140000001400000000020500")
    assert mcpt.decode(pkt) == base
    # Old Rel-13 draft ids (102..116) are unknown today and skipped too.
    pkt = unhex("80cc0004112233444d4350546602050000020500")
    assert mcpt.decode(pkt) == base


def test_empty_texts_and_empty_track_info():
    m = FloorMsg(mcpt.FLOOR_TAKEN, 1, seq=1, granted_party="", user_id="", track_info=TrackInfo())
    d = mcpt.decode(mcpt.encode(m))
    assert d == m and d.granted_party == "" and d.track_info.refs == ()


def test_limits_of_text_and_track_info():
    long_id = "a" * 255
    m = FloorMsg(mcpt.FLOOR_RELEASE, 1, user_id=long_id)
    assert mcpt.decode(mcpt.encode(m)).user_id == long_id
    raises(BadValue, mcpt.encode, FloorMsg(mcpt.FLOOR_RELEASE, 1, user_id=long_id + "a"))
    # Multi-byte characters count in bytes: 128 x "ö" is 256 bytes.
    raises(BadValue, mcpt.encode, FloorMsg(mcpt.FLOOR_RELEASE, 1, user_id="\u00f6" * 128))
    m = FloorMsg(mcpt.FLOOR_DENY, 1, reject_cause=1, reject_text="r" * 253)
    assert mcpt.decode(mcpt.encode(m)) == m
    raises(BadValue, mcpt.encode, FloorMsg(mcpt.FLOOR_DENY, 1, reject_cause=1, reject_text="r" * 254))
    # Track Info value: 2 + 4 + 4 * 62 = 254 bytes fits; one more reference does not.
    ti = TrackInfo(0, "abc", range(62))
    assert mcpt.decode(mcpt.encode(FloorMsg(0, 1, track_info=ti))).track_info == ti
    raises(BadValue, mcpt.encode, FloorMsg(0, 1, track_info=TrackInfo(0, "abc", range(63))))


# --- bad input ---------------------------------------------------------------------------------------


def with_header(b0, body_hex, pt=0xCC, name="4d435054", ssrc="00000001"):
    body = unhex(body_hex)
    n = 12 + len(body)
    return bytes((b0, pt)) + struct.pack(">H", n // 4 - 1) + unhex(ssrc + name) + body


def test_truncated_packets():
    raw = unhex(FLOOR_DENY_TEXT)
    for cut in range(len(raw)):
        e = raises(WireError, mcpt.decode, raw[:cut])
        assert isinstance(e, Truncated), (cut, e)


def test_length_field_beyond_buffer():
    raw = bytearray(unhex(FLOOR_REQUEST_P5))
    raw[3] = 4  # claims 20 bytes, 16 present
    raises(Truncated, mcpt.decode, bytes(raw))
    raw[2:4] = b"\xff\xff"
    raises(Truncated, mcpt.decode, bytes(raw))


def test_length_field_short_of_buffer():
    raw = bytearray(unhex(FLOOR_GRANTED_ACK))
    raw[3] = 4  # claims 20 of 24 bytes
    raises(BadValue, mcpt.decode, bytes(raw))
    raises(BadValue, mcpt.decode, unhex(FLOOR_REQUEST_P5) + b"\x00\x00\x00\x00")


def test_app_packet_too_short_for_its_name():
    # A well-framed 8-byte APP packet has no room for the name.
    raises(Truncated, mcpt.decode, unhex("80cc000100000001"))


def test_bad_version():
    for v in (0, 1, 3):
        raw = bytearray(unhex(FLOOR_REQUEST_P5))
        raw[0] = (v << 6) | (raw[0] & 0x3F)
        raises(BadVersion, mcpt.decode, bytes(raw))
        raises(BadVersion, mcpt.decode_compound, bytes(raw))


def test_wrong_packet_type_name_and_padding_bit():
    raises(BadValue, mcpt.decode, with_header(0x80, "00020500", pt=0xC9))
    raises(BadValue, mcpt.decode, with_header(0x80, "00020500", pt=0xCD))
    raises(BadValue, mcpt.decode, with_header(0x80, "00020500", name="4d434350"))  # MCCP
    raises(BadValue, mcpt.decode, with_header(0x80, "00020500", name="6d637074"))  # mcpt
    raises(BadValue, mcpt.decode, with_header(0xA0, "00020500"))


def test_unknown_subtypes_and_misplaced_ack_bit():
    for st in range(32):
        pkt = with_header(0x80 | st, "")
        kind, ack = st & 0x0F, bool(st & 0x10)
        ok = kind in mcpt.MESSAGE_NAMES and (not ack or kind in mcpt.ACK_KINDS)
        if ok:
            d = mcpt.decode(pkt)
            assert d.kind == kind and d.ack_req == ack
            assert mcpt.encode(d) == pkt
        else:
            raises(BadValue, mcpt.decode, pkt)
    # Wireshark's table of ack-able subtypes: 0x11, 0x12, 0x13, 0x14, 0x15, 0x19.
    assert sorted(mcpt.ACK_KINDS) == [1, 2, 3, 4, 5, 9]


def test_field_overruns():
    raises(Truncated, mcpt.decode, with_header(0x83, "06090000"))  # User ID of 9 in 2 bytes
    raises(Truncated, mcpt.decode, with_header(0x83, "0602616206ff0000"))  # second field
    raises(Truncated, mcpt.decode, with_header(0x80, "14ff0000"))  # unknown id, same check
    raises(Truncated, mcpt.decode, with_header(0x80, "c8000500"))  # 16-bit length 5 in 1 byte
    raises(Truncated, mcpt.decode, with_header(0x80, "c8ff0000"))  # 16-bit length 0xff00
    # A field that fits but whose padding would not cannot happen (the packet is whole words), so
    # the last case is a field header cut short: 12 + 4 bytes, the field needs 3 + 2 + 3 padding.
    raises(Truncated, mcpt.decode, with_header(0x80, "c8000241"))


def test_duplicate_fields():
    raises(BadValue, mcpt.decode, with_header(0x80, "0002050000020600"))
    raises(BadValue, mcpt.decode, with_header(0x81, "0102001e060261620102001e"))


def test_wrong_lengths_of_fixed_fields():
    for fid, want in ((0, 2), (1, 2), (3, 2), (5, 2), (7, 2), (8, 2), (10, 2), (12, 2), (13, 2), (14, 6)):
        for n in (0, 1, 3, 4, 5, 6, 7):
            if n == want:
                continue
            step = 2 + n
            body = bytes((fid, n)) + bytes(n) + bytes((4 - step % 4) % 4)
            pkt = with_header(0x80, "") + body
            pkt = pkt[:2] + struct.pack(">H", len(pkt) // 4 - 1) + pkt[4:]
            raises(BadValue, mcpt.decode, pkt)
    raises(BadValue, mcpt.decode, with_header(0x83, "02010100"))  # Reject Cause shorter than 2


def test_out_of_range_values_in_packets():
    raises(BadValue, mcpt.decode, with_header(0x82, "05020002"))  # permission 2
    raises(BadValue, mcpt.decode, with_header(0x8A, "0a020004"))  # source 4
    raises(BadValue, mcpt.decode, with_header(0x84, "0b06020000000001"))  # queueing capability 2


def test_malformed_track_info():
    raises(BadValue, mcpt.decode, with_header(0x84, "0b010000"))  # shorter than 2
    raises(BadValue, mcpt.decode, with_header(0x84, "0b04010561620000"))  # type of 5 in 2 bytes
    raises(BadValue, mcpt.decode, with_header(0x84, "0b05010000000000"))  # 3 bytes of references
    raises(BadValue, mcpt.decode, with_header(0x84, "0b060101ff000000"))  # bad UTF-8 type


BAD_UTF8 = [
    "ff",  # never a UTF-8 byte
    "c3",  # sequence cut short
    "c0af",  # overlong "/"
    "e080af",  # overlong
    "eda080",  # surrogate U+D800
    "f4908080",  # above U+10FFFF
    "f5808080",  # invalid lead
    "80",  # lone continuation
    "e282",  # cut short
    "e228a1",  # bad continuation
]


def test_bad_utf8_in_every_text_field():
    for bad in BAD_UTF8:
        b = unhex(bad)
        for fid in (4, 6, 9):
            step = 2 + len(b)
            body = bytes((fid, len(b))) + b + bytes((4 - step % 4) % 4)
            pkt = with_header(0x82, "") + body
            pkt = pkt[:2] + struct.pack(">H", len(pkt) // 4 - 1) + pkt[4:]
            raises(BadValue, mcpt.decode, pkt)
        text = b"\x00\x01" + b
        step = 2 + len(text)
        body = bytes((2, len(text))) + text + bytes((4 - step % 4) % 4)
        pkt = with_header(0x83, "") + body
        pkt = pkt[:2] + struct.pack(">H", len(pkt) // 4 - 1) + pkt[4:]
        raises(BadValue, mcpt.decode, pkt)
        raises(BadValue, mcpt.utf8_decode, b, "t")


def test_valid_utf8_edges_are_accepted():
    for good, text in (
        ("7f", "\x7f"),
        ("c280", "\x80"),
        ("dfbf", "\u07ff"),
        ("e0a080", "\u0800"),
        ("ed9fbf", "\ud7ff"),
        ("ee8080", "\ue000"),
        ("efbfbf", "\uffff"),
        ("f0908080", "\U00010000"),
        ("f48fbfbf", "\U0010ffff"),
    ):
        assert mcpt.utf8_decode(unhex(good), "t") == text
        m = FloorMsg(mcpt.FLOOR_RELEASE, 1, user_id=text)
        assert mcpt.decode(mcpt.encode(m)) == m


def test_oversized():
    big = with_header(0x80, "1400" + "00" * 1490)  # well-formed framing, 1504 bytes
    assert len(big) > mcpt.MAX_PACKET
    raises(Oversized, mcpt.decode, big)
    raises(Oversized, mcpt.decode_compound, big)
    raises(Oversized, mcpt.decode, bytes(1501))


def test_encode_rejects_values_the_format_cannot_carry():
    bad = [
        {"priority": 256},
        {"priority": -1},
        {"priority": "5"},
        {"duration": 65536},
        {"reject_cause": 70000},
        {"reject_cause": 1, "reject_text": ""},
        {"reject_text": "no cause"},
        {"queue_info": (256, 0)},
        {"queue_info": (1, 2, 3)},
        {"queue_info": 5},
        {"permission": 2},
        {"queue_size": -1},
        {"seq": 1 << 16},
        {"source": 4},
        {"msg_type": 256},
        {"indicator": 0x10000},
        {"ssrc_field": 1 << 32},
        {"ssrc_field": -1},
        {"user_id": b"bytes"},
        {"granted_party": 5},
        {"queued_user": None, "track_info": "x"},
        {"track_info": TrackInfo(2, "a", ())},
        {"track_info": TrackInfo(0, "a", (1 << 32,))},
        {"track_info": TrackInfo(0, 7, ())},
    ]
    for fields in bad:
        raises(BadValue, mcpt.encode, FloorMsg(mcpt.FLOOR_GRANTED, 1, **fields))
    raises(BadValue, mcpt.encode, FloorMsg(mcpt.FLOOR_GRANTED, 1 << 32))
    raises(BadValue, mcpt.encode, FloorMsg(mcpt.FLOOR_GRANTED, -1))
    for kind in (7, 11, 12, 13, 14, 16, -1, "0"):
        raises(BadValue, mcpt.encode, FloorMsg(kind, 1))
    for kind in (0, 6, 8, 10, 15):
        raises(BadValue, mcpt.encode, FloorMsg(kind, 1, True))
    raises(BadValue, mcpt.encode, "not a message")


def test_encode_rejects_unencodable_text():
    # CPython str may hold a lone surrogate; MicroPython str stores it as the (invalid) UTF-8 eda080.
    raises(BadValue, mcpt.encode, FloorMsg(mcpt.FLOOR_RELEASE, 1, user_id="a\ud800"))


def test_is_mcpt():
    assert mcpt.is_mcpt(unhex(FLOOR_REQUEST_P5))
    assert mcpt.is_mcpt(memoryview(unhex(FLOOR_DENY_TEXT)))
    assert not mcpt.is_mcpt(unhex(FLOOR_REQUEST_P5)[:11])
    assert not mcpt.is_mcpt(b"")
    assert not mcpt.is_mcpt(with_header(0x80, "", pt=0xC8))
    assert not mcpt.is_mcpt(with_header(0x80, "", name="4d434350"))
    assert not mcpt.is_mcpt(with_header(0x40, ""))
    assert not mcpt.is_mcpt(None)


# --- compound packets ---------------------------------------------------------------------------------

# Receiver Report without report blocks: RC 0, PT 201, 8 bytes.
RR_EMPTY = "80c9000100000001"
# SDES with one chunk: SSRC, CNAME "ab", END, padded: 81 ca 0003 | ssrc | 01 02 61 62 | 00 000000
SDES_CNAME = "81ca0003000000010102616200000000"
# Another APP (name "MCCP", 24.380's MBMS subchannel control), carried along and skipped.
APP_MCCP = "80cc0002000000014d434350"


def test_decode_compound_picks_mcpt_packets():
    buf = unhex(RR_EMPTY + FLOOR_REQUEST_P5 + SDES_CNAME + APP_MCCP + FLOOR_DENY_TEXT)
    got = mcpt.decode_compound(buf)
    assert got == [mcpt.decode(unhex(FLOOR_REQUEST_P5)), mcpt.decode(unhex(FLOOR_DENY_TEXT))]
    assert mcpt.decode_compound(unhex(RR_EMPTY + SDES_CNAME)) == []
    assert mcpt.decode_compound(unhex(FLOOR_ACK_SSRC)) == [mcpt.decode(unhex(FLOOR_ACK_SSRC))]


def test_decode_compound_bad_input():
    raises(Truncated, mcpt.decode_compound, b"")
    raises(Truncated, mcpt.decode_compound, unhex(RR_EMPTY + FLOOR_REQUEST_P5)[:-1])
    raises(Truncated, mcpt.decode_compound, unhex(RR_EMPTY) + b"\x80\xcc")
    raises(BadVersion, mcpt.decode_compound, unhex(RR_EMPTY + "00c9000100000001"))
    raises(Truncated, mcpt.decode_compound, unhex(RR_EMPTY + "80cc000100000001"))  # APP < 12
    # A bad MCPT packet spoils the whole compound: one malformed message means a broken sender.
    bad = bytearray(unhex(FLOOR_REQUEST_P5))
    bad[13] = 1  # Floor Priority of 1 byte
    raises(BadValue, mcpt.decode_compound, unhex(RR_EMPTY) + bytes(bad))


# --- seeded fuzzing (the same sequences on both runtimes) ---------------------------------------------


def random_text(r, maxlen):
    alphabet = ("a", "Z", "0", "@", ".", "-", "\u00f6", "\u00e5", "\u20ac", "\U0001f4fb", "\x00", " ")
    out = ""
    n = r.below(maxlen + 1)
    for _ in range(n):
        out += alphabet[r.below(len(alphabet))]
    while len(out.encode("utf-8")) > maxlen:
        out = out[:-1]
    return out


def random_msg(r):
    kind = sorted(mcpt.MESSAGE_NAMES)[r.below(len(mcpt.MESSAGE_NAMES))]
    ack = kind in mcpt.ACK_KINDS and r.below(2) == 1
    m = FloorMsg(kind, r.u32(), ack)
    if r.below(2):
        m.priority = r.below(256)
    if r.below(2):
        m.duration = r.below(65536)
    if r.below(2):
        m.reject_cause = r.below(65536)
        if r.below(2):
            m.reject_text = random_text(r, 60) or "x"
    if r.below(2):
        m.queue_info = (r.below(256), r.below(256))
    for a in ("granted_party", "user_id", "queued_user"):
        if r.below(2):
            setattr(m, a, random_text(r, 40))
    if r.below(2):
        m.permission = r.below(2)
    for a in ("queue_size", "seq", "indicator"):
        if r.below(2):
            setattr(m, a, r.below(65536))
    if r.below(2):
        m.source = r.below(4)
    if r.below(2):
        m.track_info = TrackInfo(r.below(2), random_text(r, 20), [r.u32() for _ in range(r.below(6))])
    if r.below(2):
        m.msg_type = r.below(256)
    if r.below(2):
        m.ssrc_field = r.u32()
    return m


def check_decoder(pkt):
    """decode either raises a WireError or returns a message that re-encodes to an equal message."""
    try:
        m = mcpt.decode(pkt)
    except WireError:
        return False
    again = mcpt.decode(mcpt.encode(m))
    assert again == m, (pkt, m, again)
    return True


def test_seeded_round_trip_of_random_messages():
    r = Rng(0x24380)
    for _ in range(1500):
        m = random_msg(r)
        pkt = mcpt.encode(m)
        assert mcpt.decode(pkt) == m
        assert mcpt.decode_compound(pkt + pkt) == [m, m]


def test_seeded_fuzz_random_bytes():
    r = Rng(0xF100)
    for i in range(10000):
        n = r.below(64)
        b = r.bytes(n)
        if i % 2 and n >= 12:
            # Give half of them a plausible header, so the field walker gets exercised.
            b = bytes((0x80 | r.below(32), 204)) + struct.pack(">H", n // 4 - 1) + b[4:8] + b"MCPT" + b[12:]
        check_decoder(b)
        try:
            mcpt.decode_compound(b)
        except WireError:
            pass


def test_seeded_fuzz_mutated_valid_packets():
    r = Rng(0x3A7)
    decoded = 0
    for _ in range(10000):
        pkt = bytearray(mcpt.encode(random_msg(r)))
        for _ in range(1 + r.below(4)):
            op = r.below(5)
            if op == 0 and pkt:
                pkt[r.below(len(pkt))] = r.below(256)
            elif op == 1 and len(pkt) > 12:
                # Hit the field area, where lengths and ids live.
                pkt[12 + r.below(len(pkt) - 12)] = r.below(256)
            elif op == 2 and pkt:
                pkt = pkt[: r.below(len(pkt))]
            elif op == 3:
                pkt += r.bytes(r.below(9))
            else:
                at = r.below(len(pkt) + 1)
                pkt = pkt[:at] + r.bytes(1 + r.below(4)) + pkt[at:]
        if r.below(2) and len(pkt) >= 4 and len(pkt) % 4 == 0:
            pkt[2:4] = struct.pack(">H", len(pkt) // 4 - 1)
        if check_decoder(bytes(pkt)):
            decoded += 1
    # The mutations must leave a good share decodable, or the field walker was never reached.
    assert decoded > 500, decoded
