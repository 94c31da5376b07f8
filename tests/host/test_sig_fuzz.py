"""Bad input to the signalling decoder (hypothesis, >= 10,000 cases each): ``sig.peek`` and
``sig.decode`` return or raise a WireError subclass, nothing else; and every valid message
survives encode -> decode, open or protected."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from fuzzing import fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opmob import sig
from opmob.errors import WireError

ROOT = Path(__file__).resolve().parents[2]
VEC = json.loads((ROOT / "tests" / "vectors" / "sig_v1.json").read_text())


def _key(d: dict[str, str] | None) -> sig.SigKey | None:
    return sig.SigKey(bytes.fromhex(d["mac"]), bytes.fromhex(d["enc"])) if d else None


POOL = [(bytes.fromhex(v["hex"]), _key(v["key"])) for v in VEC["messages"]]
POOL += [(bytes.fromhex(v["hex"]), _key(v["key"])) for v in VEC["decode_only"]]
UP = _key(VEC["session_keys"]["device"]["up"])
TYPES = sorted(sig.MESSAGES)
MANY = fuzz


def only_wire_errors(buf: bytes, key: sig.SigKey | None) -> str:
    try:
        sig.peek(buf)
    except WireError:
        pass
    try:
        m = sig.decode(buf, key)
    except WireError as e:
        return type(e).__name__
    # Whatever decodes must re-encode: decode never yields a message the encoder would refuse.
    again = sig.decode(sig.encode(m, key if m.protected else None), key)
    assert again == m
    return "ok"


@MANY
@given(buf=st.binary(max_size=1300), keyed=st.booleans())
def test_random_bytes(buf: bytes, keyed: bool) -> None:
    only_wire_errors(buf, UP if keyed else None)


@MANY
@given(
    mtype=st.one_of(st.sampled_from(TYPES), st.integers(0, 255)),
    flags=st.integers(0, 255),
    rsvd=st.sampled_from([0, 0, 0, 1]),
    txid=st.integers(0, 2**32 - 1),
    session=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=300),
    fix_len=st.booleans(),
    keyed=st.booleans(),
)
def test_random_body_behind_a_plausible_header(
    mtype: int, flags: int, rsvd: int, txid: int, session: int, body: bytes, fix_len: bool, keyed: bool
) -> None:
    tag = 16 if flags & 1 else 0
    blen = max(0, len(body) - tag) if fix_len else len(body) ^ 3
    hdr = (
        b"OM\x01"
        + bytes([mtype, flags & 0x07 if fix_len else flags, rsvd])
        + struct.pack(">HII", blen & 0xFFFF, txid, session)
    )
    only_wire_errors(hdr + body, UP if keyed else None)


@st.composite
def mutated(draw: Any) -> tuple[bytes, sig.SigKey | None]:
    wire, key = draw(st.sampled_from(POOL))
    b = bytearray(wire)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 4))
        if op == 0 and b:
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and b:
            del b[draw(st.integers(0, len(b) - 1)) :]
        elif op == 2:
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == 3 and b:
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        elif b:
            i = draw(st.integers(0, len(b) - 1))
            j = draw(st.integers(i, len(b)))
            del b[i:j]
    return bytes(b), key


@MANY
@given(case=mutated())
def test_mutated_vectors(case: tuple[bytes, sig.SigKey | None]) -> None:
    only_wire_errors(*case)


# --- valid messages ---------------------------------------------------------------------------

IDENT = st.from_regex(r"[a-z0-9._-]{1,40}@[a-z0-9-]{1,12}", fullmatch=True)
B16 = st.binary(min_size=16, max_size=16)
U32 = st.integers(0, 2**32 - 1)
TEXT = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)], max_size=128)


def value(kind: str, lo: int | None, hi: int | None) -> st.SearchStrategy[Any]:
    if kind == sig.K_IDENT:
        return IDENT
    if kind == sig.K_B16:
        return B16
    if kind in (sig.K_U8, sig.K_U16, sig.K_U32):
        assert lo is not None and hi is not None
        return st.integers(lo, hi)
    if kind == sig.K_TEXT:
        return TEXT
    if kind == sig.K_AFF:
        return st.tuples(IDENT, st.integers(0, 255), st.integers(0, 255))
    if kind == sig.K_RESULT:
        return st.tuples(IDENT, st.integers(0, 255))
    if kind == sig.K_VECTOR:
        return st.tuples(U32, B16, B16, B16, B16)
    if kind == sig.K_RESYNC:
        return st.tuples(B16, U32, B16)
    if kind == sig.K_LOCATION:
        return st.tuples(
            st.integers(-900_000_000, 900_000_000),
            st.integers(-1_800_000_000, 1_800_000_000),
            st.integers(0, 65535),
            st.integers(0, 65535),
        )
    if kind == sig.K_ADDR:
        return st.tuples(st.one_of(st.binary(min_size=4, max_size=4), B16), st.integers(1, 65535))
    raise AssertionError(kind)


@st.composite
def messages(draw: Any) -> sig.SigMsg:
    mtype = draw(st.sampled_from(TYPES))
    fields: dict[str, Any] = {}
    for attr, tlv, pres in sig.message_fields(mtype):
        _n, _p, kind, lo, hi = sig.FIELDS[tlv]
        strat = value(kind, lo, hi)
        if pres in (sig.LIST, sig.LIST1):
            fields[attr] = draw(st.lists(strat, min_size=1 if pres == sig.LIST1 else 0, max_size=6))
        elif pres == sig.REQ or draw(st.booleans()):
            fields[attr] = draw(strat)
    if mtype == sig.AUTH_FAILURE and fields["cause"] == sig.CAUSE_SYNC_FAILURE:
        fields["vid"], fields["auts"] = draw(U32), draw(B16)
    if mtype == sig.DEVICE_CONTROL and ("seq" in fields) != ("proof" in fields):
        fields["seq"], fields["proof"] = draw(U32), draw(B16)
    return sig.SigMsg(mtype, txid=draw(U32), session=draw(U32), down=draw(st.booleans()), **fields)


KEYS = st.builds(sig.SigKey, st.binary(min_size=32, max_size=32), B16)


@settings(max_examples=3_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=messages(), key=KEYS)
def test_round_trip(m: sig.SigMsg, key: sig.SigKey) -> None:
    b = sig.encode(m, key)
    assert len(b) <= sig.MAX_MESSAGE
    got = sig.decode(b, key)
    assert got == m and got.protected
    if not sig.must_protect(m.type):
        got = sig.decode(sig.encode(m))
        assert got == m and not got.protected


@MANY
@given(m=messages(), key=KEYS, cut=st.integers(0, 40), flip=st.integers(0, 7))
def test_authentic_but_damaged_bodies(m: sig.SigMsg, key: sig.SigKey, cut: int, flip: int) -> None:
    """Bodies cut or bit-flipped *before* protection, so the tag verifies and the TLV parser is
    what meets the damage."""
    body = bytearray(sig.encode_body(m))
    if body:
        if cut % 2:
            body = body[: len(body) * cut // 41]
        else:
            body[(cut * 7919) % len(body)] ^= 1 << flip
    wire = sig.frame(m.type, bytes(body), m.txid, m.session, m.down, key)
    only_wire_errors(wire, key)
