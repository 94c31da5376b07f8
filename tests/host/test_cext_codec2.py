"""The C extension's Codec2 (libcodec2) against Debian's ``c2enc``/``c2dec`` on real speech
(codec2-examples), every mode the extension offers.

Encoded bits must equal c2enc's exactly. libcodec2's decoder draws on a process-wide random
generator, so decoded audio is compared with c2dec's in a fresh process, decoding the same
frames in the same order (REFERENCE.md); the batch decode is checked against the single decode
the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import opmob_c
import pytest
from opmob.errors import Truncated

SPEECH = Path("/usr/share/codec2/raw")
FILES = ["hts1a.raw", "hts2a.raw", "kristoff.raw", "mmt1.raw", "ve9qrp_10s.raw", "vk5qi.raw"]
MODES = list(opmob_c.CODEC2_MODES)


def c2(tool: str, mode: str, src: Path, dst: Path) -> bytes:
    subprocess.run([tool, mode, str(src), str(dst)], check=True, capture_output=True)
    return dst.read_bytes()


def whole_frames(pcm: bytes, codec: opmob_c.Codec2) -> bytes:
    fb = 2 * codec.samples_per_frame
    return pcm[: len(pcm) // fb * fb]


def test_modes_have_libcodec2s_frame_sizes() -> None:
    want = {"3200": (160, 64), "2400": (160, 48), "1600": (320, 64), "1400": (320, 56), "1300": (320, 52)}
    want |= {"1200": (320, 48), "700C": (320, 28)}
    for mode, (spf, bits) in want.items():
        c = opmob_c.Codec2(mode)
        assert (c.samples_per_frame, c.bits_per_frame, c.bytes_per_frame) == (spf, bits, (bits + 7) // 8)
    assert opmob_c.Codec2(700).mode == "700C"
    for bad in ("450", "3201", "", 0):
        with pytest.raises(ValueError):
            opmob_c.Codec2(bad)


@pytest.mark.parametrize("mode", MODES)
def test_bits_identical_to_c2enc_on_real_speech(mode: str, tmp_path: Path) -> None:
    frames = 0
    for name in FILES:
        ref = c2("c2enc", mode, SPEECH / name, tmp_path / "ref.bit")
        c = opmob_c.Codec2(mode)
        pcm = whole_frames((SPEECH / name).read_bytes(), c)
        # Half the file in one call, the rest frame by frame: one state carries through both.
        fb = 2 * c.samples_per_frame
        cut = len(pcm) // fb // 2 * fb
        got = c.encode(pcm[:cut]) + b"".join(c.encode(pcm[o : o + fb]) for o in range(cut, len(pcm), fb))
        assert len(got) == len(ref) and got == ref, (mode, name)
        frames += len(ref) // c.bytes_per_frame
    assert frames * opmob_c.Codec2(mode).frame_ms >= 30_000  # at least 30 s of speech


@pytest.mark.parametrize("mode", MODES)
def test_batch_encode_many_streams_equals_single(mode: str) -> None:
    names = FILES[:4]
    pcms = [whole_frames((SPEECH / n).read_bytes(), opmob_c.Codec2(mode)) for n in names]
    single = [opmob_c.Codec2(mode) for _ in names]
    batch = [opmob_c.Codec2(mode) for _ in names]
    fb = 2 * single[0].samples_per_frame
    nframes = min(len(p) for p in pcms) // fb
    for f in range(0, nframes, 5):
        items = [p[f * fb : min(f + 5, nframes) * fb] for p in pcms]
        want = [c.encode(x) for c, x in zip(single, items, strict=True)]
        assert opmob_c.codec2_batch(opmob_c.lib.OPMOB_OP_ENCODE, batch, items) == want


DECODE_SCRIPT = """
import sys, opmob_c
mode, path, how = sys.argv[1:4]
c = opmob_c.Codec2(mode)
bits = open(path, "rb").read()
bpf = c.bytes_per_frame
if how == "whole":
    out = c.decode(bits)
elif how == "frames":
    out = b"".join(c.decode(bits[o : o + bpf]) for o in range(0, len(bits), bpf))
else:
    items = [bits[o : o + 7 * bpf] for o in range(0, len(bits), 7 * bpf)]
    out = b"".join(opmob_c.codec2_batch(opmob_c.lib.OPMOB_OP_DECODE, [c], items))
sys.stdout.buffer.write(out)
"""


def fresh_decode(mode: str, bits: Path, how: str) -> bytes:
    return subprocess.run(
        [sys.executable, "-c", DECODE_SCRIPT, mode, str(bits), how], check=True, capture_output=True
    ).stdout


@pytest.mark.parametrize("mode", MODES)
def test_decode_identical_to_c2dec_in_a_fresh_process(mode: str, tmp_path: Path) -> None:
    bits = tmp_path / "x.bit"
    c2("c2enc", mode, SPEECH / "hts2a.raw", bits)
    ref = c2("c2dec", mode, bits, tmp_path / "ref.raw")
    assert fresh_decode(mode, bits, "whole") == ref
    assert fresh_decode(mode, bits, "frames") == ref
    assert fresh_decode(mode, bits, "batch") == ref


def test_bad_lengths() -> None:
    c = opmob_c.Codec2("3200")
    for bad in (b"", bytes(319), bytes(321)):
        with pytest.raises(ValueError):
            c.encode(bad)
    for bad in (b"", bytes(7), bytes(9)):
        with pytest.raises(Truncated):
            c.decode(bad)
    res = opmob_c.codec2_batch(opmob_c.lib.OPMOB_OP_DECODE, [c], [bytes(8), bytes(5), bytes(16)])
    assert isinstance(res[1], Truncated) and len(res[0]) == 320 and len(res[2]) == 640  # type: ignore[arg-type]
    speech = (SPEECH / "hts1a.raw").read_bytes()[3200:3520]
    res = opmob_c.codec2_batch(opmob_c.lib.OPMOB_OP_ENCODE, [opmob_c.Codec2("3200")], [speech, bytes(3)])
    assert res[0] == opmob_c.Codec2("3200").encode(speech)
    assert isinstance(res[1], ValueError)
