"""opmob.mcpt against tools we did not write, plus property tests (CPython only).

- tshark (Wireshark's RTCP dissector, TS 24.380 part) decodes every message type we encode
  (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 15), with and without the ack bit, carrying every field of its
  table: tshark must report the same subtype, SSRC, packet length, field ids, field lengths and field
  values (priority, duration, reject cause and phrase, queue position and priority, granted party,
  permission, user id, queue size, sequence number, queued user, source, message type, floor
  indicator, SSRC field, track info), and no expert warnings.
- tshark also splits a UDP datagram holding several MCPT packets the way decode_compound does.
- hypothesis: decode/decode_compound on random bytes, on valid packets with random bodies and on
  mutated valid packets either return or raise a WireError (10,000 examples each); random valid
  FloorMsgs survive encode -> decode unchanged (10,000 examples).

Display quirks of tshark 4.0 that the expectations below allow for:
- a Track Info participant type whose length is a multiple of 4 gets 4 bytes of "padding" in tshark
  (it computes 4 - len % 4), swallowing the first reference, so the tshark cases use other lengths;
- the Reject Cause is shown as the Floor Deny / Floor Revoke field only when the ack bit is clear;
- a field with length 0 shows no value.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from opmob import mcpt
from opmob.errors import WireError
from opmob.mcpt import FloorMsg, TrackInfo
from opmob_host.pcap import write_pcap

TSHARK = shutil.which("tshark")
PORT = 41380

needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt install tshark)")

PREFIX = "rtcp.app_data.mcptt."
TSHARK_FIELDS = [
    "rtcp.app.subtype",
    "rtcp.app.name",
    "rtcp.ssrc.identifier",
    "rtcp.length",
    "rtcp.mcptt.fld_id",
    "rtcp.mcptt.fld_len",
    PREFIX + "priority",
    PREFIX + "duration",
    PREFIX + "rej_cause",
    PREFIX + "rej_cause.floor_deny",
    PREFIX + "rej_cause.floor_revoke",
    "rtcp.mcptt.rej_phrase",
    PREFIX + "queue_pos_inf",
    PREFIX + "queue_pri_lev",
    "rtcp.mcptt.granted_partys_id",
    PREFIX + "perm_to_req_floor",
    PREFIX + "user_id",
    PREFIX + "queue_size",
    PREFIX + "msg_seq_num",
    "rtcp.mcptt.queued_user_id",
    PREFIX + "source",
    PREFIX + "queueing_cap",
    PREFIX + "part_type_len",
    "rtcp.mcptt.participant_type",
    PREFIX + "floor_participant_ref",
    PREFIX + "msg_type",
    PREFIX + "floor_ind",
    PREFIX + "rtcp",
    "rtcp.mcptt.unknown_fld",
    "_ws.expert.message",
    "_ws.malformed",
]


def run_tshark(payloads: list[bytes], tmp_path: Path) -> list[dict[str, list[str]]]:
    """tshark's view of each UDP payload (one frame each), as {display field: [values]}."""
    cap = write_pcap(tmp_path / "mcpt.pcap", payloads, PORT + 1, PORT)
    cmd = [TSHARK, "-n", "-r", str(cap), "-d", f"udp.port=={PORT},rtcp", "-T", "json"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    frames = [p["_source"]["layers"] for p in json.loads(out)]
    assert len(frames) == len(payloads)
    return frames


def value_len(m: FloorMsg, fid: int) -> int:
    """The length byte we expect for field ``fid``, worked out from the message, not the encoder."""
    v = getattr(m, mcpt.FIELD_ATTRS[fid])
    if fid == mcpt.F_REJECT_CAUSE:
        return 2 + len((m.reject_text or "").encode())
    if fid in (mcpt.F_GRANTED_PARTY, mcpt.F_USER_ID, mcpt.F_QUEUED_USER):
        return len(v.encode())
    if fid == mcpt.F_TRACK_INFO:
        n = len(v.participant_type.encode())
        return 2 + n + (-n % 4) + 4 * len(v.refs)
    if fid == mcpt.F_SSRC:
        return 6
    return 2


def expected_view(m: FloorMsg) -> dict[str, list[str]]:
    present = [i for i, a in enumerate(mcpt.FIELD_ATTRS) if getattr(m, a) is not None]
    order = [i for i in mcpt.ORDER[m.kind] if i in present] + sorted(
        i for i in present if i not in mcpt.ORDER[m.kind]
    )
    subtype = m.kind | (mcpt.ACK_REQUESTED if m.ack_req else 0)
    size = 12 + sum(2 + value_len(m, i) + (-(2 + value_len(m, i)) % 4) for i in present)
    want: dict[str, list[str]] = {
        "rtcp.app.subtype": [str(subtype)],
        "rtcp.app.name": ["MCPT"],
        "rtcp.ssrc.identifier": [f"0x{m.ssrc:08x}"],
        "rtcp.length": [str(size // 4 - 1)],
    }
    if order:
        want["rtcp.mcptt.fld_id"] = [str(i) for i in order]
        want["rtcp.mcptt.fld_len"] = [str(value_len(m, i)) for i in order]

    def put(key: str, value: object) -> None:
        want.setdefault(key, []).append(str(value))

    def text(key: str, s: str) -> None:
        if s:  # tshark shows nothing for an empty value
            put(key, s)

    for fid in order:
        v = getattr(m, mcpt.FIELD_ATTRS[fid])
        if fid == mcpt.F_PRIORITY:
            put(PREFIX + "priority", v)
        elif fid == mcpt.F_DURATION:
            put(PREFIX + "duration", v)
        elif fid == mcpt.F_REJECT_CAUSE:
            which = {0x03: "rej_cause.floor_deny", 0x06: "rej_cause.floor_revoke"}.get(subtype, "rej_cause")
            put(PREFIX + which, v)
            if m.reject_text:
                put("rtcp.mcptt.rej_phrase", m.reject_text)
        elif fid == mcpt.F_QUEUE_INFO:
            put(PREFIX + "queue_pos_inf", v[0])
            put(PREFIX + "queue_pri_lev", v[1])
        elif fid == mcpt.F_GRANTED_PARTY:
            text("rtcp.mcptt.granted_partys_id", v)
        elif fid == mcpt.F_PERMISSION:
            put(PREFIX + "perm_to_req_floor", v)
        elif fid == mcpt.F_USER_ID:
            text(PREFIX + "user_id", v)
        elif fid == mcpt.F_QUEUE_SIZE:
            put(PREFIX + "queue_size", v)
        elif fid == mcpt.F_SEQ:
            put(PREFIX + "msg_seq_num", v)
        elif fid == mcpt.F_QUEUED_USER:
            text("rtcp.mcptt.queued_user_id", v)
        elif fid == mcpt.F_SOURCE:
            put(PREFIX + "source", v)
        elif fid == mcpt.F_TRACK_INFO:
            put(PREFIX + "queueing_cap", v.queueing)
            put(PREFIX + "part_type_len", len(v.participant_type.encode()))
            put("rtcp.mcptt.participant_type", v.participant_type)
            for r in v.refs:
                put(PREFIX + "floor_participant_ref", r)
        elif fid == mcpt.F_MESSAGE_TYPE:
            put(PREFIX + "msg_type", v)
        elif fid == mcpt.F_INDICATOR:
            put(PREFIX + "floor_ind", v)
        elif fid == mcpt.F_SSRC:
            put(PREFIX + "rtcp", v)
    return want


# Every field of each message's table, with values chosen to be told apart in tshark's output.
TABLE_FIELDS = {
    mcpt.FLOOR_REQUEST: dict(
        priority=201,
        user_id="kari.nordmann@no",
        track_info=TrackInfo(1, "participating", [7, 0xFFFFFFFE]),
        indicator=mcpt.IND_NORMAL | mcpt.IND_EMERGENCY,
    ),
    mcpt.FLOOR_GRANTED: dict(
        duration=30,
        ssrc_field=0x0BADCAFE,
        priority=99,
        user_id="bj\u00f6rn@se",
        queue_size=3,
        queued_user="matti@fi",
        queue_info=(2, 17),
        track_info=TrackInfo(0, "ctl", [1]),
        indicator=mcpt.IND_BROADCAST,
    ),
    mcpt.FLOOR_TAKEN: dict(
        granted_party="talker@no",
        permission=1,
        user_id="listener@se",
        seq=65534,
        track_info=TrackInfo(1, "non-controlling", [2, 3, 4]),
        indicator=mcpt.IND_IMMINENT_PERIL,
        ssrc_field=0xFEEDBEEF,
    ),
    mcpt.FLOOR_DENY: dict(
        reject_cause=mcpt.DENY_QUEUE_FULL,
        reject_text="k\u00f8 full",
        user_id="ola@no",
        track_info=TrackInfo(0, "p", [5]),
        indicator=mcpt.IND_SYSTEM,
    ),
    mcpt.FLOOR_RELEASE: dict(
        user_id="anna@se", track_info=TrackInfo(1, "pf", [6]), indicator=mcpt.IND_TEMPORARY_GROUP
    ),
    mcpt.FLOOR_IDLE: dict(seq=12, track_info=TrackInfo(0, "abcde", [9]), indicator=mcpt.IND_DUAL_FLOOR),
    mcpt.FLOOR_REVOKE: dict(
        reject_cause=mcpt.REVOKE_PREEMPTED,
        reject_text="pre-empted by emergency",
        track_info=TrackInfo(1, "xyz", [10]),
        indicator=mcpt.IND_EMERGENCY,
    ),
    mcpt.FLOOR_QUEUE_POSITION_REQUEST: dict(user_id="q@fi", track_info=TrackInfo(0, "q", [11])),
    mcpt.FLOOR_QUEUE_POSITION_INFO: dict(
        user_id="me@no",
        ssrc_field=0x12345678,
        queued_user="me@no",
        queue_info=(1, 255),
        track_info=TrackInfo(1, "abcdefg", [12]),
        indicator=mcpt.IND_QUEUEING_SUPPORTED,
    ),
    mcpt.FLOOR_ACK: dict(
        source=mcpt.SOURCE_NON_CONTROLLING, msg_type=mcpt.FLOOR_TAKEN, track_info=TrackInfo(0, "ack", [13])
    ),
    mcpt.FLOOR_RELEASE_MULTI_TALKER: dict(
        user_id="multi@se",
        track_info=TrackInfo(1, "mt", [14]),
        indicator=mcpt.IND_MULTI_TALKER,
        ssrc_field=0x01010101,
    ),
}


def table_messages() -> list[FloorMsg]:
    out = []
    for kind, fields in TABLE_FIELDS.items():
        out.append(FloorMsg(kind, 0x5EED0000 | kind, False, **fields))
        if kind in mcpt.ACK_KINDS:
            out.append(FloorMsg(kind, 0xACC00000 | kind, True, **fields))
        out.append(FloorMsg(kind, kind))  # and each with no fields at all
    return out


def test_every_message_type_is_covered():
    assert sorted(TABLE_FIELDS) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 15] == sorted(mcpt.MESSAGE_NAMES)
    for kind, fields in TABLE_FIELDS.items():
        names = set(fields) - {"reject_text"}
        assert names == {mcpt.FIELD_ATTRS[i] for i in mcpt.ORDER[kind]} or kind == 15


@needs_tshark
def test_tshark_decodes_every_message_type_with_every_field(tmp_path):
    msgs = table_messages()
    frames = run_tshark([mcpt.encode(m) for m in msgs], tmp_path)
    for m, got in zip(msgs, frames, strict=True):
        assert got == expected_view(m), m


def random_tshark_msg(rnd: random.Random) -> FloorMsg:
    """A random valid message within what tshark 4.0 displays faithfully (see the module docstring)."""

    def txt(lo: int, hi: int) -> str:
        return "".join(rnd.choice("abcXYZ019@.-_ \u00e5\u00f6\u20ac") for _ in range(rnd.randint(lo, hi)))

    kind = rnd.choice(sorted(mcpt.MESSAGE_NAMES))
    m = FloorMsg(kind, rnd.getrandbits(32), kind in mcpt.ACK_KINDS and rnd.random() < 0.5)
    for i, a in enumerate(mcpt.FIELD_ATTRS):
        if rnd.random() < 0.5:
            continue
        if a in ("priority", "msg_type"):
            v: object = rnd.randrange(256)
        elif a in ("duration", "reject_cause", "queue_size", "seq", "indicator"):
            v = rnd.randrange(65536)
        elif a == "queue_info":
            v = (rnd.randrange(256), rnd.randrange(256))
        elif a == "permission":
            v = rnd.randrange(2)
        elif a == "source":
            v = rnd.randrange(4)
        elif a == "ssrc_field":
            v = rnd.getrandbits(32)
        elif a == "track_info":
            pt = txt(1, 12)
            while len(pt.encode()) % 4 == 0:
                pt += "p"
            v = TrackInfo(rnd.randrange(2), pt, [rnd.getrandbits(32) for _ in range(rnd.randint(0, 5))])
        else:
            v = txt(1, 30)
        setattr(m, a, v)
        if i == mcpt.F_REJECT_CAUSE and rnd.random() < 0.5:
            m.reject_text = txt(1, 30)
    return m


@needs_tshark
def test_tshark_agrees_on_random_messages(tmp_path):
    rnd = random.Random(24380)
    msgs = [random_tshark_msg(rnd) for _ in range(400)]
    frames = run_tshark([mcpt.encode(m) for m in msgs], tmp_path)
    for m, got in zip(msgs, frames, strict=True):
        assert got == expected_view(m), m


@needs_tshark
def test_tshark_splits_several_mcpt_packets_in_one_datagram_like_decode_compound(tmp_path):
    a = FloorMsg(mcpt.FLOOR_IDLE, 1, seq=5, indicator=mcpt.IND_NORMAL)
    b = FloorMsg(mcpt.FLOOR_TAKEN, 2, True, granted_party="x@no", seq=6)
    c = FloorMsg(mcpt.FLOOR_ACK, 3, source=0, msg_type=1)
    rr = struct.pack(">BBHI", 0x80, 201, 1, 9)  # empty Receiver Report, skipped by decode_compound
    buf = mcpt.encode(a) + rr + mcpt.encode(b) + mcpt.encode(c)
    assert mcpt.decode_compound(buf) == [a, b, c]
    (got,) = run_tshark([buf], tmp_path)
    assert got["rtcp.app.subtype"] == ["5", str(0x12), "10"]
    assert got["rtcp.app.name"] == ["MCPT"] * 3
    assert got[PREFIX + "msg_seq_num"] == ["5", "6"]
    assert "_ws.expert.message" not in got and "_ws.malformed" not in got


@needs_tshark
def test_tshark_skips_unknown_fields_as_we_do(tmp_path):
    # A Floor Request with a field id (50) neither tool models, between two known ones: both step
    # over it by its length. (Ids 15 to 20 are later-release fields that tshark parses by content.)
    body = bytes.fromhex("000205003203aabbcc0000000d028000")
    pkt = struct.pack(">BBHI", 0x80, 204, (12 + len(body)) // 4 - 1, 77) + b"MCPT" + body
    assert mcpt.decode(pkt) == FloorMsg(mcpt.FLOOR_REQUEST, 77, priority=5, indicator=0x8000)
    (got,) = run_tshark([pkt], tmp_path)
    assert got["rtcp.mcptt.fld_id"] == ["0", "50", "13"]
    assert "rtcp.mcptt.unknown_fld" in got
    assert got[PREFIX + "priority"] == ["5"] and got[PREFIX + "floor_ind"] == [str(0x8000)]


# --- hypothesis ---------------------------------------------------------------------------------------

TEXT = st.text(max_size=63)  # at most 4 UTF-8 bytes a character: always fits the 255-byte length


@st.composite
def floor_msgs(draw: st.DrawFn) -> FloorMsg:
    kind = draw(st.sampled_from(sorted(mcpt.MESSAGE_NAMES)))
    ack = kind in mcpt.ACK_KINDS and draw(st.booleans())
    m = FloorMsg(kind, draw(st.integers(0, 2**32 - 1)), ack)
    u8, u16 = st.integers(0, 255), st.integers(0, 65535)
    opt = {
        "priority": u8,
        "duration": u16,
        "reject_cause": u16,
        "queue_info": st.tuples(u8, u8),
        "granted_party": TEXT,
        "permission": st.integers(0, 1),
        "user_id": TEXT,
        "queue_size": u16,
        "seq": u16,
        "queued_user": TEXT,
        "source": st.integers(0, 3),
        "track_info": st.builds(
            TrackInfo,
            st.integers(0, 1),
            st.text(max_size=20),
            st.lists(st.integers(0, 2**32 - 1), max_size=40),
        ),
        "msg_type": u8,
        "indicator": u16,
        "ssrc_field": st.integers(0, 2**32 - 1),
    }
    # One draw picks which fields are present: far cheaper than a none()-or-value draw per field.
    present = draw(st.integers(0, (1 << len(mcpt.FIELD_ATTRS)) - 1))
    for i, a in enumerate(mcpt.FIELD_ATTRS):
        if present >> i & 1:
            setattr(m, a, draw(opt[a]))
    if m.reject_cause is not None and draw(st.booleans()):
        m.reject_text = draw(st.text(min_size=1, max_size=63))
    return m


def decoders_hold(data: bytes) -> None:
    for fn in (mcpt.decode, mcpt.decode_compound):
        try:
            out = fn(data)
        except WireError:
            continue
        for m in out if isinstance(out, list) else [out]:
            assert mcpt.decode(mcpt.encode(m)) == m


@fuzz
@given(st.binary(max_size=300))
def test_hypothesis_random_bytes(data):
    decoders_hold(data)
    assert isinstance(mcpt.is_mcpt(data), bool)


@fuzz
@given(st.integers(0, 31), st.binary(max_size=300))
def test_hypothesis_valid_header_random_fields(subtype, body):
    body += bytes(-len(body) % 4)
    pkt = struct.pack(">BBHI", 0x80 | subtype, 204, (12 + len(body)) // 4 - 1, 1) + b"MCPT" + body
    decoders_hold(pkt)


@fuzz
@given(floor_msgs(), st.data())
def test_hypothesis_mutated_valid_packets(m, data):
    pkt = bytearray(mcpt.encode(m))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.integers(0, 3))
        if op == 0 and pkt:
            pkt[data.draw(st.integers(0, len(pkt) - 1))] = data.draw(st.integers(0, 255))
        elif op == 1:
            del pkt[data.draw(st.integers(0, len(pkt))) :]
        elif op == 2:
            at = data.draw(st.integers(0, len(pkt)))
            pkt[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(pkt) >= 4:
            pkt[2:4] = struct.pack(">H", data.draw(st.integers(0, 0xFFFF)))
    if data.draw(st.booleans()) and len(pkt) >= 4 and len(pkt) % 4 == 0:
        pkt[2:4] = struct.pack(">H", len(pkt) // 4 - 1)
    decoders_hold(bytes(pkt))


@fuzz
@given(floor_msgs())
def test_hypothesis_round_trip(m):
    pkt = mcpt.encode(m)
    assert mcpt.is_mcpt(pkt)
    assert len(pkt) % 4 == 0 and len(pkt) <= mcpt.MAX_PACKET
    assert mcpt.decode(pkt) == m
    assert mcpt.decode_compound(pkt + pkt) == [m, m]
