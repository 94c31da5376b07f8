"""The relay's pipeline call (``opmob_c.Transcoder``) against the composition of the single steps.

The reference below composes the pure-Python twins (``opmob.srtp``, ``opmob.rtp``, ``opmob.dvi4``)
with single ``opmob_c.Codec2`` calls, one packet at a time; the pipeline runs many streams per C
call. For every input both must give the same packets (bytes) or the same error type, and leave
the same per-stream state, across modes (3200, 1600, 700C), interleaved streams with their own
keys, plain sides, loss, replays, damage, wrong payload types and sizes, and closed slots.

libcodec2's decoder draws on a process-wide random generator, so the backhaul → accessory
direction runs the pipeline and the reference each in a fresh process (this file is also the
script they run) with the same decodes in the same order.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import opmob_c
import pytest
from opmob import dvi4, rtp
from opmob import srtp as pure_srtp
from opmob.errors import BadValue, Oversized, Truncated, UnknownStream, WireError

SPEECH = Path("/usr/share/codec2/raw")
FILES = ["hts1a.raw", "hts2a.raw", "kristoff.raw", "mmt1.raw", "vk5qi.raw", "ve9qrp_10s.raw"]
FRAME = 320  # bytes of PCM in 20 ms
C2_PT = 98


class RefSlot:
    """One slot of the pipeline, as the composition of the single steps."""

    def __init__(self, cfg: dict[str, Any], sessions: dict[str, Any]) -> None:
        self.cfg = cfg
        self.s = sessions
        self.enc = opmob_c.Codec2(cfg["mode"])
        self.dec = opmob_c.Codec2(cfg["mode"])
        self.dvi_dec = dvi4.Dvi4Decoder()
        self.dvi_enc = dvi4.Dvi4Encoder(*cfg.get("dvi4_state", (0, 0)))
        self.codec2_seq = cfg.get("codec2_seq", 0)
        self.dvi4_seq = cfg.get("dvi4_seq", 0)
        self.pending = b""
        self.pending_ts = 0
        self.marker = False
        self.gaps = 0

    def to_codec2(self, pkt: bytes) -> list[bytes]:
        if self.s.get("dvi4_rx") is not None:
            pkt = self.s["dvi4_rx"].unprotect(pkt)
        hdr, payload = rtp.decode(pkt)
        if hdr.pt != self.cfg.get("dvi4_pt", 5):
            raise BadValue("payload type")
        pcm = bytes(self.dvi_dec.decode(payload))
        if self.pending and hdr.ts != (self.pending_ts + len(self.pending) // 2) & 0xFFFFFFFF:
            self.gaps += 1
            self.pending = b""
        if not self.pending:
            self.pending_ts, self.marker = hdr.ts, False
        self.marker |= hdr.marker
        self.pending += pcm
        if len(self.pending) < 2 * self.enc.samples_per_frame:
            return []
        bits = self.enc.encode(self.pending)
        self.pending = b""
        out = rtp.encode(
            rtp.RtpHeader(
                self.cfg["codec2_pt"], self.codec2_seq, self.pending_ts, self.cfg["codec2_ssrc"], self.marker
            ),
            bits,
        )
        if self.s.get("codec2_tx") is not None:
            out = self.s["codec2_tx"].protect(out)
        self.codec2_seq = (self.codec2_seq + 1) & 0xFFFF
        return [out]

    def to_dvi4(self, pkt: bytes) -> list[bytes]:
        if self.s.get("codec2_rx") is not None:
            pkt = self.s["codec2_rx"].unprotect(pkt)
        hdr, payload = rtp.decode(pkt)
        if hdr.pt != self.cfg["codec2_pt"]:
            raise BadValue("payload type")
        if len(payload) < self.dec.bytes_per_frame:
            raise Truncated("short")
        if len(payload) > self.dec.bytes_per_frame:
            raise Oversized("long")
        pcm = self.dec.decode(payload)
        outs = []
        for k in range(len(pcm) // FRAME):
            p = bytes(self.dvi_enc.encode(pcm[k * FRAME : (k + 1) * FRAME]))
            h = rtp.RtpHeader(
                self.cfg.get("dvi4_pt", 5),
                self.dvi4_seq,
                (hdr.ts + 160 * k) & 0xFFFFFFFF,
                self.cfg["dvi4_ssrc"],
                hdr.marker if k == 0 else False,
            )
            out = rtp.encode(h, p)
            if self.s.get("dvi4_tx") is not None:
                out = self.s["dvi4_tx"].protect(out)
            self.dvi4_seq = (self.dvi4_seq + 1) & 0xFFFF
            outs.append(out)
        return outs


def result(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except WireError as e:
        return type(e).__name__


def as_plain(r: Any) -> Any:
    return type(r).__name__ if isinstance(r, WireError) else r


# -- traffic -----------------------------------------------------------------------------------------


def keys(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(30) for _ in range(n)]


def slot_cfgs(mode: str, n: int) -> list[dict[str, Any]]:
    rng = random.Random(n)
    return [
        {
            "mode": mode,
            "codec2_pt": C2_PT,
            "codec2_ssrc": rng.getrandbits(32),
            "dvi4_ssrc": rng.getrandbits(32),
            "codec2_seq": rng.choice((0, 65530, rng.randrange(65536))),
            "dvi4_seq": rng.choice((0, 65534, rng.randrange(65536))),
            "dvi4_state": (rng.randrange(-32768, 32768), rng.randrange(89)),
        }
        for _ in range(n)
    ]


def accessory_traffic(seed: int, nslots: int, frames: int) -> list[tuple[int, bytes, bool]]:
    """(slot, plain RTP, damage?) from real speech: each slot its own talker, interleaved, with
    loss gaps, payload type and size errors marked for damage on top."""
    rng = random.Random(seed)
    by_slot: dict[int, list[tuple[int, bytes, bool]]] = {}
    for slot in range(nslots):
        pcm = (SPEECH / FILES[slot % len(FILES)]).read_bytes()
        enc = dvi4.Dvi4Encoder()
        seq, ts, ssrc = rng.randrange(65536), rng.getrandbits(32), rng.getrandbits(32)
        items = by_slot.setdefault(slot, [])
        for f in range(frames):
            block = pcm[(f * FRAME) % (len(pcm) - FRAME) // 4 * 4 :][:FRAME]
            payload = bytes(enc.encode(block))
            pt = 5
            r = rng.random()
            if r < 0.02:
                pt = 0
            elif r < 0.04:
                payload = payload[:-2]
            elif r < 0.05:
                payload += b"\x00\x00"
            h = rtp.RtpHeader(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, marker=f == 0)
            items.append((slot, rtp.encode(h, payload), rng.random() < 0.04))
            step = 1 + (rng.random() < 0.05)  # a lost frame now and then
            seq += step
            ts += 160 * step
    out = []
    while any(by_slot.values()):
        s = rng.choice([k for k, v in by_slot.items() if v])
        out.append(by_slot[s].pop(0))
    return out


def damage(rng: random.Random, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def make_pair(
    mode: str, nslots: int, plain_slot: int | None
) -> tuple[Any, list[RefSlot], list[dict[str, Any]]]:
    """A Transcoder and its reference, the same keys: accessory keys one per slot, one backhaul key."""
    ks = keys(5, nslots + 1)
    back = ks[-1]
    tc = opmob_c.Transcoder(max_streams=nslots + 2)
    refs = []
    cfgs = slot_cfgs(mode, nslots)
    c_back_tx = opmob_c.SrtpSession(back[:16], back[16:])
    p_back_tx = pure_srtp.SrtpSession(back[:16], back[16:])
    c_back_rx = opmob_c.SrtpSession(back[:16], back[16:])
    p_back_rx = pure_srtp.SrtpSession(back[:16], back[16:])
    for slot, cfg in enumerate(cfgs):
        k = ks[slot]
        if slot == plain_slot:
            c_s: dict[str, Any] = {}
            p_s: dict[str, Any] = {}
        else:
            c_s = {
                "dvi4_rx": opmob_c.SrtpSession(k[:16], k[16:]),
                "dvi4_tx": opmob_c.SrtpSession(k[:16], k[16:]),
                "codec2_tx": c_back_tx,
                "codec2_rx": c_back_rx,
            }
            p_s = {
                "dvi4_rx": pure_srtp.SrtpSession(k[:16], k[16:]),
                "dvi4_tx": pure_srtp.SrtpSession(k[:16], k[16:]),
                "codec2_tx": p_back_tx,
                "codec2_rx": p_back_rx,
            }
        tc.open(slot, **cfg, **c_s)
        refs.append(RefSlot(cfg, p_s))
    return tc, refs, cfgs


# -- accessory -> backhaul (one process: no decoder randomness) --------------------------------------


@pytest.mark.parametrize("mode", ["3200", "1600", "700C"])
def test_to_codec2_equals_composition(mode: str) -> None:
    nslots = 6
    tc, refs, _ = make_pair(mode, nslots, plain_slot=2)
    ks = keys(5, nslots + 1)
    senders = {s: pure_srtp.SrtpSession(ks[s][:16], ks[s][16:]) for s in range(nslots)}
    rng = random.Random(1)
    inputs: list[tuple[int, bytes]] = []
    for slot, plain, bad in accessory_traffic(2, nslots, 260):
        pkt = plain if slot == 2 else senders[slot].protect(plain)
        if bad:
            pkt = damage(rng, pkt)
        inputs.append((slot, pkt))
        if rng.random() < 0.02:
            inputs.append((slot, pkt))  # a replay
    inputs.append((nslots, inputs[0][1]))  # a slot never opened
    want = [result(refs[s].to_codec2, p) if s < nslots else "UnknownStream" for s, p in inputs]
    got: list[Any] = []
    i = 0
    while i < len(inputs):
        n = rng.choice((1, 7, 64, 300))
        got += [as_plain(r) for r in tc.to_codec2(inputs[i : i + n])]
        i += n
    assert got == want
    kinds = {w if isinstance(w, str) else len(w) for w in want}
    assert {"AuthFailed", "BadValue", "Truncated", "Oversized", "UnknownStream", 1} <= kinds
    if mode != "3200":
        assert 0 in kinds
    for slot, ref in enumerate(refs):
        info = tc.info(slot)
        assert info["codec2_seq"] == ref.codec2_seq
        assert info["gaps"] == ref.gaps
        assert info["pending_samples"] == len(ref.pending) // 2
        assert (info["dvi4_frames"], info["dvi4_resyncs"]) == (ref.dvi_dec.frames, ref.dvi_dec.resyncs)
    assert sum(len(w) for w in want if isinstance(w, list)) > 300


# -- backhaul -> accessory (each side in a fresh process) --------------------------------------------


def backhaul_traffic(mode: str, nslots: int, frames: int) -> list[tuple[int, bytes]]:
    """(slot, SRTP packet) as a peer relay sends: Codec2 of real speech, one SSRC per slot under the
    backhaul key, interleaved, with damage, replays and wrong payload types and sizes."""
    ks = keys(5, nslots + 1)
    back = ks[-1]
    tx = pure_srtp.SrtpSession(back[:16], back[16:])
    rng = random.Random(3)
    cfgs = slot_cfgs(mode, nslots)
    queues: list[list[tuple[int, bytes]]] = []
    for slot in range(len(cfgs)):
        c = opmob_c.Codec2(mode)
        pcm = (SPEECH / FILES[slot % len(FILES)]).read_bytes()
        fb = 2 * c.samples_per_frame
        bits = c.encode(pcm[: min(frames, len(pcm) // fb) * fb])
        seq, ts = rng.randrange(65536), rng.getrandbits(32)
        q = []
        for f in range(len(bits) // c.bytes_per_frame):
            payload = bits[f * c.bytes_per_frame : (f + 1) * c.bytes_per_frame]
            pt = C2_PT
            r = rng.random()
            if r < 0.02:
                pt = 5
            elif r < 0.04:
                payload = payload[:-1]
            elif r < 0.05:
                payload += b"\x00"
            plain = rtp.encode(
                rtp.RtpHeader(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x5000 + slot, marker=f == 0), payload
            )
            pkt = plain if slot == 2 else tx.protect(plain)
            if rng.random() < 0.03:
                pkt = damage(rng, pkt)
            q.append((slot, pkt))
            if rng.random() < 0.02:
                q.append((slot, pkt))
            seq += 1
            ts += c.samples_per_frame
        queues.append(q)
    out = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
    return out


def run_side(mode: str, side: str) -> dict[str, Any]:
    """One side of the backhaul → accessory comparison, in this (fresh) process."""
    nslots = 5
    tc, refs, cfgs = make_pair(mode, nslots, plain_slot=2)
    inputs = backhaul_traffic(mode, nslots, 400)
    if side == "pipeline":
        rng = random.Random(4)
        res: list[Any] = []
        i = 0
        while i < len(inputs):
            n = rng.choice((1, 5, 50, 200))
            res += [as_plain(r) for r in tc.to_dvi4(inputs[i : i + n])]
            i += n
        state = [[tc.info(s)["dvi4_seq"], list(tc.info(s)["dvi4_state"])] for s in range(nslots)]
    else:
        res = [result(refs[s].to_dvi4, p) for s, p in inputs]
        state = [[r.dvi4_seq, [r.dvi_enc.predicted, r.dvi_enc.index]] for r in refs]
    return {"results": [r if isinstance(r, str) else [p.hex() for p in r] for r in res], "state": state}


def fresh(mode: str, side: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, mode, side],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@pytest.mark.parametrize("mode", ["3200", "1600", "700C"])
def test_to_dvi4_equals_composition_in_fresh_processes(mode: str) -> None:
    a, b = fresh(mode, "pipeline"), fresh(mode, "reference")
    assert a["results"] == b["results"]
    assert a["state"] == b["state"]
    kinds = {r if isinstance(r, str) else len(r) for r in a["results"]}
    assert {"AuthFailed", "Replayed", "BadValue", "Truncated", "Oversized"} <= kinds
    assert (2 if mode != "3200" else 1) in kinds
    assert sum(len(r) for r in a["results"] if isinstance(r, list)) > 800


# -- two relays, end to end ----------------------------------------------------------------------------


def test_two_relays_carry_speech_accessory_to_accessory() -> None:
    """Accessory → relay A (DVI4 → Codec2 3200) → backhaul → relay B (Codec2 → DVI4) → accessory:
    every packet arrives, in order, decodable by the accessory's own (pure) DVI4 and SRTP."""
    rng = random.Random(6)
    acc_a, back, acc_b = (rng.randbytes(30) for _ in range(3))
    a = opmob_c.Transcoder(4)
    b = opmob_c.Transcoder(4)
    a.open(1, codec2_ssrc=0xC0DEC2, dvi4_ssrc=0, dvi4_rx=opmob_c.SrtpSession(acc_a[:16], acc_a[16:]),
           codec2_tx=opmob_c.SrtpSession(back[:16], back[16:]))  # fmt: skip
    b.open(3, codec2_ssrc=0, dvi4_ssrc=0xACCE55, codec2_rx=opmob_c.SrtpSession(back[:16], back[16:]),
           dvi4_tx=opmob_c.SrtpSession(acc_b[:16], acc_b[16:]))  # fmt: skip
    talker = pure_srtp.SrtpSession(acc_a[:16], acc_a[16:])
    listener = pure_srtp.SrtpSession(acc_b[:16], acc_b[16:])
    pcm = (SPEECH / "hts1a.raw").read_bytes()
    enc = dvi4.Dvi4Encoder()
    dec = dvi4.Dvi4Decoder()
    sent = [
        talker.protect(rtp.encode(rtp.RtpHeader(5, 100 + f, 8000 + 160 * f, 0x7A1C, marker=f == 0), enc.encode(pcm[f * FRAME : (f + 1) * FRAME])))
        for f in range(len(pcm) // FRAME)
    ]  # fmt: skip
    got = []
    for i in range(0, len(sent), 40):
        backhaul = [p for r in a.to_codec2([(1, p) for p in sent[i : i + 40]]) for p in r]  # type: ignore[union-attr]
        assert all(len(p) == 12 + 8 + 10 for p in backhaul)
        for r in b.to_dvi4([(3, p) for p in backhaul]):
            assert isinstance(r, list) and len(r) == 1
            hdr, payload = rtp.decode(listener.unprotect(r[0]))
            got.append((hdr, bytes(dec.decode(payload))))
    assert len(got) == len(sent)
    assert [h.seq for h, _ in got] == list(range(len(sent)))
    assert [h.ts for h, _ in got] == [8000 + 160 * f for f in range(len(sent))]
    assert got[0][0].marker and not any(h.marker for h, _ in got[1:])
    assert dec.resyncs == 0
    assert (
        sum(
            abs(int.from_bytes(p[i : i + 2], "little", signed=True))
            for _, p in got
            for i in range(0, 320, 32)
        )
        > 0
    )


def test_transcoder_api_errors() -> None:
    t = opmob_c.Transcoder(2)
    with pytest.raises(ValueError):
        t.open(2, codec2_ssrc=1, dvi4_ssrc=2)
    with pytest.raises(ValueError):
        t.open(0, codec2_ssrc=1, dvi4_ssrc=2, mode="450")
    with pytest.raises(ValueError):
        t.open(0, codec2_ssrc=1, dvi4_ssrc=2, dvi4_state=(0, 89))
    with pytest.raises(TypeError):
        t.open(0, codec2_ssrc=1, dvi4_ssrc=2, dvi4_rx=pure_srtp.SrtpSession(bytes(16), bytes(14)))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        opmob_c.Transcoder(0)
    with pytest.raises(ValueError):
        t.to_codec2([(5, b"")])
    pkt = rtp.encode(rtp.RtpHeader(5, 1, 0, 9), bytes(84))
    assert isinstance(t.to_codec2([(0, pkt)])[0], UnknownStream)
    t.open(0, codec2_ssrc=1, dvi4_ssrc=2, codec2_seq=7)
    assert t.to_codec2([(0, pkt)])[0] == [
        rtp.encode(rtp.RtpHeader(96, 7, 0, 1), opmob_c.Codec2().encode(bytes(320)))
    ]
    assert t.info(0)["codec2_seq"] == 8 and t.info(0)["open"]
    t.close(0)
    assert not t.info(0)["open"]
    assert isinstance(t.to_dvi4([(0, pkt)])[0], UnknownStream)
    assert t.to_codec2([]) == []


if __name__ == "__main__":
    print(json.dumps(run_side(sys.argv[1], sys.argv[2])))
