"""The voice chain through two relay cores joined by a link (opmob_host.link_chain), which the
quality figures and the link benchmark run through: it must be the relays' real path, whole."""

from __future__ import annotations

from pathlib import Path

import pytest

opmob_c = pytest.importorskip("opmob_c", reason="the C extension is not built (make setup)")

from opmob_host import link_chain  # noqa: E402

SPEECH = Path("/usr/share/codec2/raw/hts1a.raw")


def _payloads(n: int) -> list[bytes]:
    pcm = SPEECH.read_bytes()
    enc = opmob_c.Dvi4Encoder()
    return [bytes(enc.encode(pcm[o : o + 320])) for o in range(0, 320 * n, 320)]


def test_a_dvi4_link_delivers_the_talkers_payloads_byte_for_byte() -> None:
    sent = _payloads(60)
    chain = link_chain.LinkChain("dvi4")
    assert chain.talk(sent) == sent
    c = chain.relays[link_chain.RELAY_A].status()["links"][0]["counters"]
    assert c["voice_out"] == len(sent), c


@pytest.mark.parametrize(("codec", "payload"), [("codec2_3200", 8), ("codec2_1600", 8)])
def test_a_codec2_link_carries_codec2_and_bob_hears_every_frame(codec: str, payload: int) -> None:
    sent = _payloads(60)
    chain = link_chain.LinkChain(codec)
    heard = chain.talk(sent)
    assert len(heard) == len(sent) and all(len(p) == len(sent[0]) for p in heard)
    assert heard != sent  # transcoded twice: not the same bytes
    a = chain.relays[link_chain.RELAY_A].status()["links"][0]["counters"]
    per = 2 if codec == "codec2_1600" else 1  # 40 ms frames: one link packet per two
    assert a["voice_out"] == len(sent) // per and a["voice_payload_out"] == payload * a["voice_out"], a
    assert a["transcode_errors"] == 0
    assert chain.cpu[link_chain.RELAY_A] > 0 and chain.cpu[link_chain.RELAY_B] > 0


def test_speech_survives_the_chain() -> None:
    """bob's audio is ann's speech (the floors on all nine recordings are in test_cext_quality.py);
    Codec2 keeps no waveform, so PESQ and STOI judge it, not a sample correlation."""
    from opmob_host import quality

    pcm = SPEECH.read_bytes()[: 320 * 150]
    out, _ = link_chain.through_relays(pcm)
    s = quality.score(pcm, out, quality.DELAY["chain"])
    assert s["pesq"] > 2.0 and s["stoi"] > 0.7, s
    assert quality.score(pcm[::-1], out, quality.DELAY["chain"])["stoi"] < 0.3  # and not any speech


def test_the_pure_backend_cannot_build_a_codec2_link() -> None:
    with pytest.raises(ValueError, match="codec2_3200"):
        link_chain.LinkChain("codec2_3200", accel="pure")
