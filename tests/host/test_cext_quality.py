"""Voice quality on real speech, guarded: PESQ narrow band and STOI for DVI4 alone, Codec2 3200
alone and the whole chain accessory → relay → backhaul → relay → accessory (``opmob_host.quality``,
run in a fresh process so libcodec2's decoder randomness is the same on every run). The chain runs
through two relay cores joined by a Codec2 3200 link (``opmob_host.link_chain``), the path
`opmob relay run` takes: registration, floor, SRTP on every hop.

Measured (codec2-examples, 9 recordings, 51 s; this machine, libcodec2 1.0.5):
    DVI4          PESQ-NB 3.79  STOI 0.960
    Codec2 3200   PESQ-NB 3.09  STOI 0.852
    chain         PESQ-NB 2.56  STOI 0.794
The floors sit a little under those figures: a regression in a codec, in the framing or in the
relays' link path shows up here, a change of a few hundredths from another libcodec2 build does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FLOORS = {
    # condition: (mean PESQ, mean STOI, worst file PESQ, worst file STOI)
    "dvi4": (3.70, 0.95, 3.30, 0.89),
    "codec2_3200": (3.00, 0.83, 2.45, 0.62),
    "chain": (2.45, 0.77, 2.10, 0.60),
}


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "opmob_host.quality"], check=True, capture_output=True, text=True, timeout=600
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@pytest.mark.parametrize("cond", sorted(FLOORS))
def test_quality_stays_above_its_floor(figures: dict[str, Any], cond: str) -> None:
    f = figures[cond]
    pesq, stoi, pesq_min, stoi_min = FLOORS[cond]
    print(
        f"{cond}: PESQ-NB {f['pesq']:.3f} (worst {f['pesq_min']:.3f}), STOI {f['stoi']:.3f} (worst {f['stoi_min']:.3f})"
    )
    assert f["pesq"] >= pesq and f["stoi"] >= stoi, f
    assert f["pesq_min"] >= pesq_min and f["stoi_min"] >= stoi_min, f
    assert figures["seconds"] >= 45 and len(f["per_file"]) == len(figures["files"]) >= 9


def test_chain_is_no_better_than_its_parts(figures: dict[str, Any]) -> None:
    """Transcoding twice cannot beat either codec alone: a chain scoring higher is a broken measurement."""
    assert figures["chain"]["pesq"] <= min(figures["dvi4"]["pesq"], figures["codec2_3200"]["pesq"]) + 0.05


def test_the_measures_tell_bad_audio_from_good() -> None:
    """The scorer itself: a clean copy scores high, noise and a misaligned copy score low."""
    import random

    from opmob_host import quality

    pcm = (Path(quality.SPEECH) / "hts1a.raw").read_bytes()
    rng = random.Random(1)
    noise = bytes(rng.getrandbits(8) for _ in range(len(pcm)))
    good = quality.score(pcm, pcm)
    bad = quality.score(pcm, noise)
    assert good["pesq"] > 4.4 and good["stoi"] > 0.99
    assert bad["pesq"] < 1.5 and bad["stoi"] < 0.5
    late = quality.score(pcm, bytes(640) + pcm)  # 40 ms late, not corrected
    assert late["stoi"] < 0.8 and quality.score(pcm, bytes(640) + pcm, 320)["stoi"] > 0.99
