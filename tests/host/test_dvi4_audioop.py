"""DVI4 conformance against Python's ``audioop`` (the IMA ADPCM reference this project did not
write): whole real speech files frame by frame, every step index and code octet, arbitrary block
sizes and states, the committed vectors, and bad input from hypothesis."""

from __future__ import annotations

import array
import importlib.util
import struct
import sys
import warnings
from pathlib import Path

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from opmob import dvi4
from opmob.errors import WireError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ROOT = Path(__file__).resolve().parents[2]
SPEECH = Path("/usr/share/codec2/raw")
# Men and women, clean and noisy, one clipped to full scale (ve9qrp_10s, g3plx reach ±32767/32768).
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


def load_vector_script():
    spec = importlib.util.spec_from_file_location(
        "make_dvi4_vectors", ROOT / "tests/vectors/make_dvi4_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def header(state: tuple[int, int]) -> bytes:
    return struct.pack(">hBB", state[0], state[1], 0)


def test_nibble_order_is_rfc_3551_and_audioop_agrees() -> None:
    # From (0, 0): a full-scale positive sample codes 0x7, then a full-scale negative one 0xF.
    # RFC 3551 puts the first sample in the high nibble: 0x7F (IMA WAV order would give 0xF7).
    pcm = struct.pack("<hh", 32767, -32768)
    codes, _ = audioop.lin2adpcm(pcm, 2, None)
    assert codes == b"\x7f"
    assert bytes(dvi4.Dvi4Encoder().encode(pcm)) == b"\x00\x00\x00\x00\x7f"


@pytest.mark.parametrize("name", SPEECH_FILES)
def test_whole_speech_file_frame_by_frame_equals_audioop(name: str) -> None:
    pcm = (SPEECH / name).read_bytes()
    enc = dvi4.Dvi4Encoder()
    dec = dvi4.Dvi4Decoder()
    tail_dec = dvi4.Dvi4Decoder(samples=None)
    state: tuple[int, int] | None = None
    frames = 0
    # Whole frames, then the tail as one shorter block (an even sample count, as DVI4 needs).
    end = len(pcm) // 4 * 4
    offsets = list(range(0, end - FRAME + 1, FRAME))
    bounds = [(o, o + FRAME) for o in offsets]
    if end > len(offsets) * FRAME:
        bounds.append((len(offsets) * FRAME, end))
    for lo, hi in bounds:
        block = pcm[lo:hi]
        start = state if state is not None else (0, 0)
        codes, state = audioop.lin2adpcm(block, 2, state)
        payload = enc.encode(block)
        assert bytes(payload) == header(start) + codes, (name, lo)
        assert (enc.predicted, enc.index) == state
        want, dstate = audioop.adpcm2lin(codes, 2, start)
        d = dec if hi - lo == FRAME else tail_dec
        assert bytes(d.decode(payload)) == want, (name, lo)
        assert (d.predicted, d.index) == dstate == state
        frames += 1
    assert frames >= 150
    assert dec.resyncs == 0 and dec.reserved_nonzero == 0


def test_every_step_index_and_code_octet_decodes_like_audioop() -> None:
    for predicted in (-32768, -20000, -1, 0, 1, 12345, 32767):
        for index in range(dvi4.MAX_INDEX + 1):
            hdr = header((predicted, index))
            for octet in range(256):
                code = bytes((octet,))
                want, wstate = audioop.adpcm2lin(code, 2, (predicted, index))
                dec = dvi4.Dvi4Decoder(samples=2)
                assert bytes(dec.decode(hdr + code)) == want, (predicted, index, octet)
                assert (dec.predicted, dec.index) == wstate


def test_step_table_equals_audioops() -> None:
    # audioop decodes code 0x7 from (0, i) to step(i) >> 3 + step + step >> 1 + step >> 2, which is
    # strictly increasing in step, so matching it at every index pins every table entry.
    for i, step in enumerate(dvi4.STEP_SIZES):
        got = struct.unpack("<h", audioop.adpcm2lin(b"\x70", 2, (0, i))[0][:2])[0]
        assert got == min(32767, (step >> 3) + step + (step >> 1) + (step >> 2)), i


def scaled_pcm(raw: bytes, shift: int) -> bytes:
    """Whole sample pairs of ``raw`` as s16le, each sample arithmetic-shifted right by ``shift``
    so levels from full-scale noise down to a few LSBs are all drawn."""
    raw = raw[: len(raw) // 4 * 4]
    a = array.array("h", raw)
    return array.array("h", (v >> shift for v in a)).tobytes()


# Bytes, not lists of integers: hypothesis draws a 1,920-byte blob in one step. Short runs of the
# extreme values are added so the clamps are hit from every state.
pcm_blocks = st.one_of(
    st.builds(scaled_pcm, st.binary(min_size=4, max_size=2 * dvi4.MAX_SAMPLES), st.integers(0, 15)),
    st.lists(st.sampled_from([-32768, -32767, -1, 0, 1, 32766, 32767]), min_size=1, max_size=32).map(
        lambda v: struct.pack(f"<{2 * len(v)}h", *(v + v[::-1]))
    ),
)
states = st.tuples(
    st.one_of(st.integers(-32768, 32767), st.sampled_from([-32768, 0, 32767])),
    st.integers(0, dvi4.MAX_INDEX),
)


@fuzz
@given(pcm=pcm_blocks, state=states)
def test_any_block_and_state_encodes_and_decodes_like_audioop(pcm: bytes, state: tuple[int, int]) -> None:
    codes, end = audioop.lin2adpcm(pcm, 2, state)
    payload, got_end = dvi4.encode_frame(pcm, state)
    assert bytes(payload) == header(state) + codes
    assert got_end == end
    assert bytes(dvi4.decode_frame(payload)) == audioop.adpcm2lin(codes, 2, state)[0]


def check_decode(decoder: dvi4.Dvi4Decoder, data: bytes) -> None:
    try:
        out = decoder.decode(data)
    except WireError:
        return
    # Anything accepted decodes exactly as audioop does from the header's state.
    predicted, index = struct.unpack(">hB", data[:3])
    assert bytes(out) == audioop.adpcm2lin(data[4:], 2, (predicted, index))[0]


@fuzz
@given(data=st.one_of(st.binary(max_size=600), st.binary(min_size=84, max_size=84)))
def test_decode_random_bytes_returns_or_raises_wire_error(data: bytes) -> None:
    check_decode(dvi4.Dvi4Decoder(), data)
    check_decode(dvi4.Dvi4Decoder(samples=None), data)
    try:
        dvi4.decode_frame(data)
    except WireError:
        pass


@fuzz
@given(
    data=st.tuples(
        st.binary(min_size=2, max_size=2), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=500)
    ).map(lambda t: t[0] + bytes((t[1], t[2])) + t[3])
)
def test_decode_wellformed_headers_returns_or_raises_wire_error(data: bytes) -> None:
    # Headers with every index and reserved value, so the accepted path is well exercised too.
    check_decode(dvi4.Dvi4Decoder(), data)
    check_decode(dvi4.Dvi4Decoder(samples=None), data)


def test_committed_vectors_equal_audioop_now() -> None:
    mod = load_vector_script()
    files = mod.build()
    assert set(files) == {"dvi4_vectors.json", "dvi4_hts1a.payloads", "dvi4_hts1a.pcm"}
    for name, data in files.items():
        assert (ROOT / "tests/vectors" / name).read_bytes() == data, f"{name} is stale: rerun the script"
