"""Bench rows of the C extension, measured side by side in one run (``make bench``).

- ``srtp.pairs_per_s.{c_ext,pylibsrtp,pure}``: SRTP protect + unprotect pairs per second on one
  core, a 96-byte DVI4 voice packet (12-byte header, 84-byte payload), rounds of the three
  interleaved and the best round of each kept, so a busy shared machine slows all three alike.
  c_ext goes through its batch API (1,000 packets a call: the relay's form); pylibsrtp (libsrtp 2)
  and the pure twin through a per-packet Python loop. Goal: c_ext at least 3x pylibsrtp.
- ``transcode.streams_per_core``: how many DVI4 → Codec2 3200 streams one core keeps in real time
  (50 frames a second each) through ``Transcoder.to_codec2``: every 20 ms tick, one packet of each
  stream in one call, unprotected (accessory key), decoded, encoded and protected (backhaul key).
  Measured as process CPU time per frame, so it is what one core does, not wall time.
- ``quality.{pesq,stoi}.{dvi4,codec2_3200,chain}``: ``opmob_host.quality`` in a fresh process.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

Row = tuple[str, float, str, float | None, str]

SPEECH = Path("/usr/share/codec2/raw")


def _packets(n: int, ssrc: int = 0x1234ABCD) -> list[bytes]:
    payload = (SPEECH / "hts1a.raw").read_bytes()[3200:3284] if (SPEECH / "hts1a.raw").exists() else bytes(84)
    return [struct.pack(">BBHII", 0x80, 5, i & 0xFFFF, 160 * i, ssrc) + payload for i in range(n)]


def _pairs_c(pkts: list[bytes], key: bytes) -> float:
    import opmob_c

    tx, rx = opmob_c.SrtpSession(key[:16], key[16:]), opmob_c.SrtpSession(key[:16], key[16:])
    t0 = time.process_time()
    for i in range(0, len(pkts), 1000):
        out = rx.unprotect_batch(tx.protect_batch(pkts[i : i + 1000]))
    dt = time.process_time() - t0
    if out[-1] != pkts[-1]:
        raise RuntimeError("c_ext round trip failed")
    return len(pkts) / dt


def _pairs_loop(tx: object, rx: object, pkts: list[bytes]) -> float:
    protect: Callable[[bytes], bytes] = tx.protect  # type: ignore[attr-defined]
    unprotect: Callable[[bytes], bytes] = rx.unprotect  # type: ignore[attr-defined]
    t0 = time.process_time()
    for p in pkts:
        out = unprotect(protect(p))
    dt = time.process_time() - t0
    if out != pkts[-1]:
        raise RuntimeError("round trip failed")
    return len(pkts) / dt


def _pairs_pylibsrtp(pkts: list[bytes], key: bytes) -> float:
    from pylibsrtp import Policy, Session

    prof = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=prof))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=prof))
    return _pairs_loop(tx, rx, pkts)


def _pairs_pure(pkts: list[bytes], key: bytes) -> float:
    from opmob.srtp import SrtpSession

    return _pairs_loop(SrtpSession(key[:16], key[16:]), SrtpSession(key[:16], key[16:]), pkts)


def srtp_rows(quick: bool) -> Iterator[Row]:
    key = bytes(range(30))
    n = 5_000 if quick else 40_000
    pkts = _packets(n)
    pure_pkts = pkts[: n // 20]
    best = {"c_ext": 0.0, "pylibsrtp": 0.0, "pure": 0.0}
    for _ in range(2 if quick else 5):
        best["c_ext"] = max(best["c_ext"], _pairs_c(pkts, key))
        best["pylibsrtp"] = max(best["pylibsrtp"], _pairs_pylibsrtp(pkts, key))
        best["pure"] = max(best["pure"], _pairs_pure(pure_pkts, key))
    ratio = best["c_ext"] / best["pylibsrtp"]
    yield (
        "srtp.pairs_per_s.c_ext",
        best["c_ext"],
        "1/s",
        3 * best["pylibsrtp"],
        f"batch API, 1000 packets a call; {ratio:.2f}x pylibsrtp (goal 3x); 96-byte DVI4 packet, CPU time, best of rounds",
    )
    yield (
        "srtp.pairs_per_s.pylibsrtp",
        best["pylibsrtp"],
        "1/s",
        None,
        "libsrtp 2.7 (pylibsrtp), per-packet Python loop, same packets, same run",
    )
    yield (
        "srtp.pairs_per_s.pure",
        best["pure"],
        "1/s",
        None,
        "opmob.srtp twin, per-packet Python loop, same run",
    )
    yield (
        "ratio.srtp.c_ext_over_pylibsrtp",
        ratio,
        "x",
        3.0,
        "srtp.pairs_per_s.c_ext / .pylibsrtp, same run",
    )


def transcode_rows(quick: bool) -> Iterator[Row]:
    import opmob_c
    from opmob import dvi4, rtp
    from opmob.srtp import SrtpSession as PureSession

    streams = 100 if quick else 400
    ticks = 10 if quick else 50
    pcm = (SPEECH / "hts1a.raw").read_bytes() if (SPEECH / "hts1a.raw").exists() else bytes(48000)
    back = bytes(range(100, 130))
    tc = opmob_c.Transcoder(streams)
    rev = opmob_c.Transcoder(streams)
    keys = [bytes([s & 0xFF, s >> 8]) + bytes(range(28)) for s in range(streams)]
    backhaul_tx = opmob_c.SrtpSession(back[:16], back[16:], max_streams=streams)
    backhaul_rx = opmob_c.SrtpSession(back[:16], back[16:], max_streams=streams)
    for s in range(streams):
        k = keys[s]
        tc.open(
            s,
            codec2_ssrc=0x10000 + s,
            dvi4_ssrc=0,
            dvi4_rx=opmob_c.SrtpSession(k[:16], k[16:]),
            codec2_tx=backhaul_tx,
        )
        rev.open(
            s,
            codec2_ssrc=0,
            dvi4_ssrc=0x20000 + s,
            codec2_rx=backhaul_rx,
            dvi4_tx=opmob_c.SrtpSession(k[:16], k[16:]),
        )
    # Accessory traffic prepared beforehand (the accessories' work, not the relay's).
    senders = [PureSession(k[:16], k[16:]) for k in keys]
    encs = [dvi4.Dvi4Encoder() for _ in range(streams)]
    nframes = len(pcm) // 320
    ticks_in: list[list[tuple[int, bytes]]] = []
    for t in range(ticks):
        tick = []
        for s in range(streams):
            f = (t + 7 * s) % nframes
            payload = encs[s].encode(pcm[f * 320 : (f + 1) * 320])
            tick.append(
                (s, senders[s].protect(rtp.encode(rtp.RtpHeader(5, t, 160 * t, 0x30000 + s), payload)))
            )
        ticks_in.append(tick)
    t0 = time.process_time()
    ticks_out = [tc.to_codec2(tick) for tick in ticks_in]
    dt = time.process_time() - t0
    if not all(isinstance(r, list) and len(r) == 1 for out in ticks_out for r in out):
        raise RuntimeError("transcoding bench: a packet was dropped")
    per_frame = dt / (streams * ticks)
    yield (
        "transcode.streams_per_core",
        1 / (50 * per_frame),
        "streams",
        400.0,
        f"DVI4 -> Codec2 3200 through Transcoder.to_codec2, SRTP in and out, {streams} streams a call, "
        f"{per_frame * 1e6:.1f} us CPU per 20 ms frame",
    )
    back_in = [[(s, r[0]) for s, r in enumerate(out)] for out in ticks_out]
    t0 = time.process_time()
    for tick in back_in:
        rev.to_dvi4(tick)
    dt = time.process_time() - t0
    per_frame = dt / (streams * ticks)
    yield (
        "transcode.streams_per_core.to_dvi4",
        1 / (50 * per_frame),
        "streams",
        None,
        f"the reverse, Codec2 3200 -> DVI4 through Transcoder.to_dvi4, {per_frame * 1e6:.1f} us CPU per frame",
    )


def quality_rows() -> Iterator[Row]:
    out = subprocess.run(
        [sys.executable, "-m", "opmob_host.quality"], check=True, capture_output=True, text=True, timeout=600
    )
    q = json.loads(out.stdout)
    where = f"mean over {len(q['files'])} codec2-examples recordings ({q['seconds']:.0f} s)"
    what = {
        "dvi4": "DVI4 alone (accessory link)",
        "codec2_3200": "Codec2 3200 alone (backhaul)",
        "chain": "DVI4 -> Codec2 3200 -> DVI4 through two relays' Transcoders, SRTP on every hop",
    }
    for cond, text in what.items():
        yield (f"quality.pesq.{cond}", q[cond]["pesq"], "MOS-LQO", None, f"PESQ-NB, {text}; {where}")
    for cond, text in what.items():
        yield (f"quality.stoi.{cond}", q[cond]["stoi"], "0..1", None, f"STOI, {text}; {where}")


def run(quick: bool = False) -> Iterator[Row]:
    """The rows; nothing when the extension is not built (one row saying so)."""
    try:
        import opmob_c  # noqa: F401
    except ImportError as e:
        yield ("c_ext.available", 0.0, "bool", 1.0, f"C extension not built ({e}): run make setup")
        return
    yield from srtp_rows(quick)
    yield from transcode_rows(quick)
    yield from quality_rows()
