"""The C extension's DVI4 (``opmob_c``) against the firmware twin (``opmob.dvi4``) and ``audioop``:
real speech frame by frame, every state and code octet, arbitrary blocks and states, every error
and the decoder's counters, caller buffers, and the batch forms against the single calls."""

from __future__ import annotations

import random
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import opmob_c
import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from opmob import dvi4
from opmob.errors import BadValue, Oversized, Truncated, WireError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SPEECH = Path("/usr/share/codec2/raw")
SPEECH_FILES = [
    "hts1a.raw",
    "hts2a.raw",
    "kristoff.raw",
    "mmt1.raw",
    "ve9qrp_10s.raw",
    "g3plx.raw",
    "vk5qi.raw",
]
FRAME = 2 * dvi4.FRAME_SAMPLES

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="audioop codes native-endian samples")


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return bytes(fn(*args))
    except WireError as e:
        return type(e)


@pytest.mark.parametrize("name", SPEECH_FILES)
def test_speech_file_equals_twin_and_audioop(name: str) -> None:
    pcm = (SPEECH / name).read_bytes()
    pcm = pcm[: len(pcm) // 4 * 4]
    ce, pe = opmob_c.Dvi4Encoder(), dvi4.Dvi4Encoder()
    cd, pd = opmob_c.Dvi4Decoder(), dvi4.Dvi4Decoder()
    state: tuple[int, int] | None = None
    frames = []
    for lo in range(0, len(pcm) - FRAME + 1, FRAME):
        block = pcm[lo : lo + FRAME]
        start = state or (0, 0)
        codes, state = audioop.lin2adpcm(block, 2, state)
        payload = ce.encode(block)
        assert payload == pe.encode(block) == struct.pack(">hBB", *start, 0) + codes
        assert (ce.predicted, ce.index) == (pe.predicted, pe.index) == state
        assert cd.decode(payload) == pd.decode(payload) == audioop.adpcm2lin(codes, 2, start)[0]
        assert (cd.predicted, cd.index, cd.frames) == (pd.predicted, pd.index, pd.frames)
        frames.append((block, bytes(payload)))
    assert len(frames) >= 150 and cd.resyncs == 0
    # The batch forms: the whole file in one call, one encoder; then every frame its own decoder.
    be = opmob_c.Dvi4Encoder()
    assert be.encode_batch([b for b, _ in frames]) == [p for _, p in frames]
    assert (be.predicted, be.index) == (ce.predicted, ce.index)
    decs = [opmob_c.Dvi4Decoder() for _ in frames]
    assert opmob_c.dvi4_decode_batch(decs, [p for _, p in frames]) == [
        bytes(dvi4.decode_frame(p)) for _, p in frames
    ]


def test_every_state_and_code_octet_decodes_like_the_twin() -> None:
    """All 89 step indices x 256 octets x predicted values: one C batch call, one twin loop."""
    payloads = []
    for predicted in (-32768, -20000, -1, 0, 1, 12345, 32767):
        for index in range(dvi4.MAX_INDEX + 1):
            hdr = struct.pack(">hBB", predicted, index, 0)
            payloads.extend(hdr + bytes((octet,)) for octet in range(256))
    got = opmob_c.dvi4_decode_batch([None], payloads)
    assert got == [bytes(dvi4.decode_frame(p)) for p in payloads]
    for p in payloads[::97]:
        want, wstate = audioop.adpcm2lin(p[4:], 2, struct.unpack(">hB", p[:3]))
        d = opmob_c.Dvi4Decoder(samples=2)
        assert bytes(d.decode(p)) == want and (d.predicted, d.index) == wstate


def scaled_pcm(raw: bytes, shift: int) -> bytes:
    import array

    a = array.array("h", raw[: len(raw) // 4 * 4])
    return array.array("h", (v >> shift for v in a)).tobytes()


pcm_blocks = st.one_of(
    st.builds(scaled_pcm, st.binary(min_size=4, max_size=2 * dvi4.MAX_SAMPLES), st.integers(0, 15)),
    st.lists(st.sampled_from([-32768, -32767, -1, 0, 1, 32766, 32767]), min_size=1, max_size=32).map(
        lambda v: struct.pack(f"<{2 * len(v)}h", *(v + v[::-1]))
    ),
)
states = st.tuples(
    st.one_of(st.integers(-32768, 32767), st.sampled_from([-32768, 0, 32767])), st.integers(0, 88)
)


@fuzz
@given(pcm=pcm_blocks, state=states)
def test_any_block_and_state_equal_twin_and_audioop(pcm: bytes, state: tuple[int, int]) -> None:
    payload, end = opmob_c.encode_frame(pcm, state)
    assert (bytes(payload), end) == (lambda r: (bytes(r[0]), r[1]))(dvi4.encode_frame(pcm, state))
    codes, aend = audioop.lin2adpcm(pcm, 2, state)
    assert bytes(payload[4:]) == codes and end == aend
    assert bytes(opmob_c.decode_frame(payload)) == audioop.adpcm2lin(codes, 2, state)[0]


def decoders() -> list[tuple[Any, Any]]:
    return [(opmob_c.Dvi4Decoder(s), dvi4.Dvi4Decoder(s)) for s in (dvi4.FRAME_SAMPLES, None, 2, 960)]


def check_same(pairs: list[tuple[Any, Any]], data: bytes) -> None:
    for c, p in pairs:
        assert outcome(c.decode, data) == outcome(p.decode, data)
        assert (c.predicted, c.index, c.frames, c.resyncs, c.reserved_nonzero) == (
            p.predicted,
            p.index,
            p.frames,
            p.resyncs,
            p.reserved_nonzero,
        )
    assert outcome(opmob_c.decode_frame, data) == outcome(dvi4.decode_frame, data)


@fuzz
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(min_size=84, max_size=84),
        st.tuples(
            st.binary(min_size=2, max_size=2),
            st.integers(0, 255),
            st.integers(0, 255),
            st.binary(max_size=500),
        ).map(lambda t: t[0] + bytes((t[1], t[2])) + t[3]),
    )
)
def test_bad_payloads_same_errors_and_counters_as_twin(data: bytes) -> None:
    check_same(decoders(), data)


def test_counters_resyncs_and_reserved_equal_the_twin() -> None:
    rng = random.Random(3)
    pairs = decoders()[:2]
    enc = dvi4.Dvi4Encoder()
    pcm = (SPEECH / "hts1a.raw").read_bytes()
    for _ in range(400):
        lo = rng.randrange(0, len(pcm) - FRAME, 2) // 4 * 4
        p = bytearray(enc.encode(pcm[lo : lo + FRAME]))
        r = rng.random()
        if r < 0.1:
            p[3] = rng.randrange(1, 256)
        elif r < 0.15:
            p[2] = rng.randrange(89, 256)
        elif r < 0.2:
            p = p[: rng.randrange(len(p))]
        elif r < 0.25:
            p += b"\x00\x00"
        check_same(pairs, bytes(p))
    c = pairs[0][0]
    assert c.resyncs > 20 and c.reserved_nonzero > 10 and c.frames > 250


def test_errors_by_type() -> None:
    d = opmob_c.Dvi4Decoder()
    with pytest.raises(Truncated):
        d.decode(bytes(83))
    with pytest.raises(Oversized):
        d.decode(bytes(85))
    with pytest.raises(BadValue):
        d.decode(b"\x00\x00\x59\x00" + bytes(80))
    with pytest.raises(Truncated):
        opmob_c.decode_frame(bytes(4))
    with pytest.raises(Oversized):
        opmob_c.decode_frame(bytes(4 + 481))
    assert d.frames == 0
    for bad in (b"", bytes(2), bytes(6), bytes(2 * 962)):
        with pytest.raises(ValueError):
            opmob_c.Dvi4Encoder().encode(bad)
        with pytest.raises(ValueError):
            dvi4.Dvi4Encoder().encode(bad)
    for state in ((32768, 0), (0, 89), (-32769, 0), (0, -1)):
        with pytest.raises(ValueError):
            opmob_c.encode_frame(bytes(4), state)
        with pytest.raises(ValueError):
            opmob_c.Dvi4Encoder(*state)
    for samples in (0, 1, 3, 962):
        with pytest.raises(ValueError):
            opmob_c.Dvi4Decoder(samples)


def test_caller_buffers_as_the_twin() -> None:
    pcm = (SPEECH / "hts1a.raw").read_bytes()[3200:3520]
    out = bytearray(100)
    assert opmob_c.Dvi4Encoder().encode(pcm, out) is out
    assert out[:84] == dvi4.Dvi4Encoder().encode(pcm) and out[84:] == bytes(16)
    pcm_out = bytearray(400)
    assert opmob_c.Dvi4Decoder().decode(bytes(out[:84]), pcm_out) is pcm_out
    assert pcm_out[:320] == dvi4.decode_frame(out[:84])
    with pytest.raises(ValueError):
        opmob_c.Dvi4Encoder().encode(pcm, bytearray(83))
    with pytest.raises(ValueError):
        opmob_c.Dvi4Decoder().decode(bytes(out[:84]), bytearray(319))
    with pytest.raises(TypeError):
        opmob_c.Dvi4Encoder().encode(pcm, bytes(84))
    # A bad payload is reported before a bad buffer, as in the twin.
    with pytest.raises(Truncated):
        opmob_c.Dvi4Decoder().decode(bytes(10), bytes(1))
    mv = memoryview(bytearray(400))[10:]
    assert opmob_c.decode_frame(bytes(out[:84]), mv) is mv


def test_batch_encode_many_streams_equals_single() -> None:
    rng = random.Random(8)
    pcm = (SPEECH / "kristoff.raw").read_bytes()
    streams = [(rng.randrange(-32768, 32768), rng.randrange(89)) for _ in range(30)]
    c_encs = [opmob_c.Dvi4Encoder(*s) for s in streams]
    p_encs = [dvi4.Dvi4Encoder(*s) for s in streams]
    for _ in range(10):
        blocks = [pcm[o : o + FRAME] for o in (rng.randrange(0, len(pcm) - FRAME) // 4 * 4 for _ in streams)]
        assert opmob_c.dvi4_encode_batch(c_encs, blocks) == [
            bytes(e.encode(b)) for e, b in zip(p_encs, blocks, strict=True)
        ]
    assert [(e.predicted, e.index) for e in c_encs] == [(e.predicted, e.index) for e in p_encs]
    # A bad block anywhere: ValueError and no encoder moved.
    before = [(e.predicted, e.index) for e in c_encs]
    with pytest.raises(ValueError):
        opmob_c.dvi4_encode_batch(c_encs, blocks[:-1] + [bytes(6)])
    assert [(e.predicted, e.index) for e in c_encs] == before


def test_batch_decode_with_errors_equals_single() -> None:
    rng = random.Random(9)
    enc = dvi4.Dvi4Encoder()
    pcm = (SPEECH / "mmt1.raw").read_bytes()
    payloads = []
    for o in range(0, 200 * FRAME, FRAME):
        p = bytearray(enc.encode(pcm[o : o + FRAME]))
        if rng.random() < 0.2:
            p = p[: rng.randrange(len(p) + 1)] if rng.random() < 0.5 else p + b"\x01"
        if rng.random() < 0.05:
            p[2:3] = b"\xff"
        payloads.append(bytes(p))
    single, batch = opmob_c.Dvi4Decoder(), opmob_c.Dvi4Decoder()
    want = [outcome(single.decode, p) for p in payloads]
    got = [x if isinstance(x, bytes) else type(x) for x in batch.decode_batch(payloads)]
    assert got == want
    assert {Truncated, Oversized, BadValue} <= set(want)
    assert (batch.frames, batch.resyncs, batch.predicted, batch.index) == (
        single.frames,
        single.resyncs,
        single.predicted,
        single.index,
    )
