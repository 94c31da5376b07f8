"""Voice quality of the relay's codecs on real speech: PESQ narrow band (ITU-T P.862, ``pesq``)
and STOI (``pystoi``), for DVI4 alone, Codec2 3200 alone, and the whole chain accessory → relay →
backhaul → relay → accessory: ann's DVI4 RTP through two relay cores joined by a Codec2 3200 link
(``link_chain``: registration, floor, SRTP on every hop, the relays built as ``opmob relay run``
builds them) to bob's DVI4 decoder.

    .venv/bin/python -m opmob_host.quality          # one JSON object on stdout

The speech is Debian's codec2-examples recordings (8 kHz, 16-bit; men and women, clean and
noisy). Codec2 3200 delays its output by one frame (160 samples: where STOI peaks on every file,
and where the speech envelopes line up), which STOI, unlike PESQ, does not search for: that
fixed delay is removed before scoring both measures.
libcodec2's decoder draws on a process-wide random generator, so figures are reproducible only
from a fresh process doing the same decodes in the same order; run this module as a script for
figures that a test compares with a floor.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SPEECH = Path("/usr/share/codec2/raw")
FILES = (
    "hts1a.raw",
    "hts2a.raw",
    "kristoff.raw",
    "mmt1.raw",
    "ve9qrp_10s.raw",
    "vk5qi.raw",
    "cq_ref.raw",
    "morig.raw",
    "forig.raw",
)
FRAME = 320  # bytes: 160 samples, 20 ms
CONDITIONS = ("dvi4", "codec2_3200", "chain")


def _dvi4(pcm: bytes) -> bytes:
    import opmob_c

    enc, dec = opmob_c.Dvi4Encoder(), opmob_c.Dvi4Decoder()
    return b"".join(bytes(dec.decode(enc.encode(pcm[o : o + FRAME]))) for o in range(0, len(pcm), FRAME))


def _codec2(pcm: bytes) -> bytes:
    import opmob_c

    return opmob_c.Codec2("3200").decode(opmob_c.Codec2("3200").encode(pcm))


def _chain(pcm: bytes) -> bytes:
    """Accessory A -> relay A -> backhaul -> relay B -> accessory B through two relay cores."""
    from opmob_host.link_chain import through_relays

    return through_relays(pcm, "codec2_3200")[0]


#: The fixed delay of each condition's output, in samples (DVI4 has none).
DELAY = {"dvi4": 0, "codec2_3200": 160, "chain": 160}


def score(ref_pcm: bytes, deg_pcm: bytes, delay: int = 0) -> dict[str, float]:
    """PESQ-NB and STOI of ``deg_pcm`` against ``ref_pcm`` (s16le, 8 kHz), ``delay`` samples removed."""
    import numpy as np
    from pesq import pesq
    from pystoi import stoi

    ref = np.frombuffer(ref_pcm, dtype="<i2").astype(np.float64)
    deg = np.frombuffer(deg_pcm, dtype="<i2").astype(np.float64)
    n = min(len(ref), len(deg) - delay)
    r, d = ref[:n], deg[delay : delay + n]
    return {"pesq": float(pesq(8000, r, d, "nb")), "stoi": float(stoi(r, d, 8000))}


def measure(files: tuple[str, ...] = FILES) -> dict[str, Any]:
    """Per condition: mean and minimum PESQ-NB and STOI over the files, and per file."""
    paths = [SPEECH / f for f in files]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"speech files missing (Debian package codec2-examples): {missing}")
    per: dict[str, dict[str, dict[str, float]]] = {c: {} for c in CONDITIONS}
    seconds = 0.0
    for p in paths:
        pcm = p.read_bytes()
        pcm = pcm[: len(pcm) // (2 * FRAME) * (2 * FRAME)]  # whole 40 ms: every mode's frames
        seconds += len(pcm) / 16000
        for cond, fn in (("dvi4", _dvi4), ("codec2_3200", _codec2), ("chain", _chain)):
            per[cond][p.name] = score(pcm, fn(pcm), DELAY[cond])
    out: dict[str, Any] = {"files": list(files), "seconds": seconds}
    for cond in CONDITIONS:
        vals = list(per[cond].values())
        out[cond] = {
            "pesq": sum(v["pesq"] for v in vals) / len(vals),
            "stoi": sum(v["stoi"] for v in vals) / len(vals),
            "pesq_min": min(v["pesq"] for v in vals),
            "stoi_min": min(v["stoi"] for v in vals),
            "per_file": per[cond],
        }
    return out


def main() -> int:
    print(json.dumps(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
