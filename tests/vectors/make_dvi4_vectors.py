"""(Re)generate the DVI4 test vectors with Python's ``audioop`` (a reference we did not write).

    .venv/bin/python tests/vectors/make_dvi4_vectors.py          # write the files
    .venv/bin/python tests/vectors/make_dvi4_vectors.py --check  # compare, write nothing

Each 20 ms frame is coded by ``audioop.lin2adpcm`` starting from the state audioop carried out of
the previous frame; the payload is that start state as the RFC 3551 header (predicted int16
big-endian, step index, reserved 0) followed by audioop's code octets. The expected PCM of a frame
is ``audioop.adpcm2lin`` of those octets from the same start state, as a receiver that takes its
state from the header decodes it.

Files:
- ``dvi4_hts1a.payloads``: every frame's payload (84 bytes each), concatenated;
- ``dvi4_hts1a.pcm``: every frame's decoded PCM (320 bytes, s16le), concatenated;
- ``dvi4_vectors.json``: the source speech file and its SHA-256, the state audioop carried at
  each frame boundary, the SHA-256 of both binary files, and a small synthetic set ("edges") that
  drives the codec into its clamps (step index 0 and 88, predictor at both int16 limits).

audioop works on native-endian samples; the vectors are built on a little-endian host, where that
is the s16le of the I2S bus and of the speech files.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # Deprecated since 3.11 and gone in 3.13; it is still the reference this project checks against.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

HERE = Path(__file__).resolve().parent
SPEECH_DIR = Path("/usr/share/codec2/raw")
SOURCE = "hts1a.raw"
FRAME_SAMPLES = 160
FRAME_BYTES = 2 * FRAME_SAMPLES

if sys.byteorder != "little":  # pragma: no cover - every host this project supports is little-endian
    raise SystemExit("audioop codes native-endian samples: run on a little-endian host")


def header(state: tuple[int, int] | None) -> bytes:
    predicted, index = state if state is not None else (0, 0)
    return struct.pack(">hBB", predicted, index, 0)


def code_frames(
    pcm: bytes, frame_bytes: int = FRAME_BYTES
) -> tuple[list[bytes], list[bytes], list[list[int]]]:
    """(payloads, decoded PCM, states at every frame boundary) for whole frames of ``pcm``."""
    payloads, decoded, states = [], [], [[0, 0]]
    state = None
    for off in range(0, len(pcm) - frame_bytes + 1, frame_bytes):
        codes, end = audioop.lin2adpcm(pcm[off : off + frame_bytes], 2, state)
        payloads.append(header(state) + codes)
        decoded.append(audioop.adpcm2lin(codes, 2, state)[0])
        state = end
        states.append(list(end))
    return payloads, decoded, states


def edge_signal() -> bytes:
    """Eight frames that hit every clamp: full-scale 4 kHz square (index climbs to 88 and the
    predictor overshoots both int16 limits), silence (index decays to 0), DC at both limits, a
    full-range ramp, and low-level noise from a fixed xorshift."""
    n = FRAME_SAMPLES
    samples: list[int] = []
    samples += [32767 if i & 1 else -32768 for i in range(2 * n)]
    samples += [0] * (2 * n)
    samples += [32767] * (n // 2) + [-32768] * (n // 2)
    samples += [-32768 + (65535 * i) // (n - 1) for i in range(n)]
    s = 2463534242
    noise = []
    for _ in range(2 * n):
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        noise.append((s & 0x3FF) - 512)
    samples += noise
    return struct.pack(f"<{len(samples)}h", *samples)


def build() -> dict[str, bytes]:
    """Every vector file's name and exact content, from audioop as it is installed now."""
    pcm = (SPEECH_DIR / SOURCE).read_bytes()
    payloads, decoded, states = code_frames(pcm)
    payload_blob = b"".join(payloads)
    pcm_blob = b"".join(decoded)
    edge_pcm = edge_signal()
    e_payloads, e_decoded, e_states = code_frames(edge_pcm)
    meta = {
        "about": "DVI4 (RFC 3551) 20 ms frames coded by audioop; see make_dvi4_vectors.py",
        "source": SOURCE,
        "source_sha256": hashlib.sha256(pcm).hexdigest(),
        "frame_samples": FRAME_SAMPLES,
        "frames": len(payloads),
        "states": states,
        "payloads_file": "dvi4_hts1a.payloads",
        "payloads_sha256": hashlib.sha256(payload_blob).hexdigest(),
        "pcm_file": "dvi4_hts1a.pcm",
        "pcm_sha256": hashlib.sha256(pcm_blob).hexdigest(),
        "edges": {
            "input": edge_pcm.hex(),
            "states": e_states,
            "payloads": [p.hex() for p in e_payloads],
            "pcm": [d.hex() for d in e_decoded],
        },
    }
    return {
        "dvi4_vectors.json": (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode(),
        "dvi4_hts1a.payloads": payload_blob,
        "dvi4_hts1a.pcm": pcm_blob,
    }


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [name for name, data in files.items() if (HERE / name).read_bytes() != data]
        for name in stale:
            print(f"stale: {name}")
        return 1 if stale else 0
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"wrote {name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
