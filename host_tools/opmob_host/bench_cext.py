"""Bench rows of the C extension, measured side by side in one run (``make bench``).

- ``srtp.pairs_per_s.{c_ext,pylibsrtp,pure}``: SRTP protect + unprotect pairs per second on one
  core, a 96-byte DVI4 voice packet (12-byte header, 84-byte payload), rounds of the three
  interleaved and the best round of each kept, so a busy shared machine slows all three alike.
  c_ext goes through its batch API (1,000 packets a call: the relay's form); pylibsrtp (libsrtp 2)
  and the pure twin through a per-packet Python loop. Goal: c_ext at least 3x pylibsrtp.
  ``srtp.pairs_per_s.{c_ext_gcm,pylibsrtp_gcm}``: the same two measurements with the
  AEAD_AES_128_GCM profile, in the same rounds.
- ``transcode.streams_per_core``: how many DVI4 → Codec2 3200 streams one core keeps in real time
  (50 frames a second each) through ``Transcoder.to_codec2``: every 20 ms tick, one packet of each
  stream in one call, unprotected (accessory key), decoded, encoded and protected (backhaul key).
  Measured as process CPU time per frame, so it is what one core does, not wall time.
- ``relay.cpu_per_packet_us.{c_ext,pure}``: CPU time per talker voice packet through the relay
  core's per-packet path, ``Relay.on_datagram`` in process (no sockets): demultiplex, unprotect with
  the talker's uplink context, floor gate, re-protect for each of 10 listeners with their downlink
  contexts (10 datagrams out). Two relays built alike (same seeds, keys and SRTP packets in), one
  with ``opmob_c.SrtpSession`` injected (``Relay(srtp=...)``, the form ``opmob relay run`` uses),
  one with the pure twin; rounds interleaved, best round of each kept, and the two relays' output
  datagrams compared byte for byte. ``relay.cpu_per_packet_us.c_ext_batch``: the C session with
  the fan-out always in one ``protect_batch`` call (``Relay(fanout=...)``); for 10 listeners it is
  about even with per-listener calls, so ``opmob relay run`` batches from ``BATCH_FROM`` on.
- ``relay.link_cpu_per_packet_us.{codec2_3200,codec2_1600,dvi4}``: CPU time both relays spend per
  talker packet on the path a relay-to-relay link really takes (``link_chain``: two relay cores,
  ``Relay.on_datagram`` on each, the transcoding one packet at a time through ``LinkTranscoder``).
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
from typing import Any

Row = tuple[str, float, str, float | None, str]

SPEECH = Path("/usr/share/codec2/raw")


def _packets(n: int, ssrc: int = 0x1234ABCD) -> list[bytes]:
    payload = (SPEECH / "hts1a.raw").read_bytes()[3200:3284] if (SPEECH / "hts1a.raw").exists() else bytes(84)
    return [struct.pack(">BBHII", 0x80, 5, i & 0xFFFF, 160 * i, ssrc) + payload for i in range(n)]


def _pairs_c(pkts: list[bytes], key: bytes, gcm: bool = False) -> float:
    import opmob_c

    if gcm:
        prof, ms = opmob_c.PROFILE_AEAD_AES_128_GCM, key[16:28]
    else:
        prof, ms = opmob_c.PROFILE_AES_CM_128_HMAC_SHA1_80, key[16:]
    tx, rx = opmob_c.SrtpSession(key[:16], ms, profile=prof), opmob_c.SrtpSession(key[:16], ms, profile=prof)
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


def _pairs_pylibsrtp(pkts: list[bytes], key: bytes, gcm: bool = False) -> float:
    from pylibsrtp import Policy, Session

    if gcm:
        prof, key = Policy.SRTP_PROFILE_AEAD_AES_128_GCM, key[:28]
    else:
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
    best = {"c_ext": 0.0, "pylibsrtp": 0.0, "pure": 0.0, "c_ext_gcm": 0.0, "pylibsrtp_gcm": 0.0}
    for _ in range(2 if quick else 5):
        best["c_ext"] = max(best["c_ext"], _pairs_c(pkts, key))
        best["pylibsrtp"] = max(best["pylibsrtp"], _pairs_pylibsrtp(pkts, key))
        best["pure"] = max(best["pure"], _pairs_pure(pure_pkts, key))
        best["c_ext_gcm"] = max(best["c_ext_gcm"], _pairs_c(pkts, key, gcm=True))
        best["pylibsrtp_gcm"] = max(best["pylibsrtp_gcm"], _pairs_pylibsrtp(pkts, key, gcm=True))
    ratio = best["c_ext"] / best["pylibsrtp"]
    ratio_gcm = best["c_ext_gcm"] / best["pylibsrtp_gcm"]
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
        "srtp.pairs_per_s.c_ext_gcm",
        best["c_ext_gcm"],
        "1/s",
        None,
        f"AEAD_AES_128_GCM, batch API as c_ext; {ratio_gcm:.2f}x pylibsrtp_gcm; same packets, same run",
    )
    yield (
        "srtp.pairs_per_s.pylibsrtp_gcm",
        best["pylibsrtp_gcm"],
        "1/s",
        None,
        "AEAD_AES_128_GCM, libsrtp 2.7 (pylibsrtp), per-packet Python loop, same packets, same run",
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


RELAY_ADDR = ("10.0.0.1", 7700)
LISTENERS = 10


class RelayFanout:
    """One relay core and 1 + ``listeners`` registered devices in one group, in memory; the first
    device ("d0") holds the floor. ``srtp``/``fanout`` go to ``Relay``. Built from fixed seeds:
    two instances made with different SRTP classes must send the same bytes."""

    GROUP = "bench@no"

    def __init__(self, srtp: Any = None, fanout: Any = None, listeners: int = LISTENERS) -> None:
        from opmob import mcpt
        from opmob.device import DeviceSession
        from opmob.registry import Registry
        from opmob.relay import Relay
        from opmob.relay_config import RelayConfig

        from opmob_host.bench_core import Rand, one_group_store

        names = [f"d{i}" for i in range(listeners + 1)]
        store = one_group_store(names, self.GROUP)
        # A burst as long as the bench wants: the longest burst (t2) and the silent listeners'
        # keep-alive well beyond it.
        cfg = RelayConfig.from_dict(
            {
                "relay": {"identity": "relay-1@no"},
                "registry": {"path": "unused"},
                "timers": {"keepalive": 65535, "expiry": 10 * 65535},
                "floor": {"t2": 65535},
            }
        )
        self.now = 0  # the cores' clock: int ms (a bench never nears the 2^30 wrap)
        self.relay = Relay(cfg, Registry(store, "no"), store, Rand(7), self.now, srtp=srtp, fanout=fanout)
        self.addr: dict[str, tuple[str, int]] = {}
        self.devs: dict[str, Any] = {}
        self.queue: list[tuple[Any, Any, bytes]] = []
        for i, n in enumerate(names):
            a = (f"10.0.1.{i + 2}", 5000)
            d = DeviceSession(
                n + "@no", bytes(15) + bytes((i + 1,)), RELAY_ADDR, Rand(100 + i), groups=[self.GROUP]
            )
            self.addr[n] = a
            self.devs[n] = d
            self._send(a, d.start(self.now))
        self._pump()
        for d in self.devs.values():
            if d.state != "registered":
                raise RuntimeError(f"relay bench: a device did not register ({d.state})")
        self.talker = self.devs["d0"]
        self._send(self.addr["d0"], self.talker.send_floor(self.now, mcpt.FloorMsg(mcpt.FLOOR_REQUEST)))
        self._pump()
        self.seq = 0

    def _send(self, src: Any, outs: list[tuple[Any, bytes]]) -> None:
        for dst, data in outs:
            self.queue.append((src, dst, data))

    def _pump(self) -> None:
        by_addr = {a: n for n, a in self.addr.items()}
        while self.queue:
            src, dst, data = self.queue.pop(0)
            if dst == RELAY_ADDR:
                self._send(RELAY_ADDR, self.relay.on_datagram(self.now, src, data))
            elif dst in by_addr:
                n = by_addr[dst]
                self._send(dst, self.devs[n].on_datagram(self.now, src, data))

    def talker_packets(self, n: int) -> list[bytes]:
        """``n`` SRTP voice packets from the talker (the device's work, done before timing)."""
        out = []
        payload = _packets(1)[0][12:]
        for _ in range(n):
            self.seq += 1
            rtp = struct.pack(">BBHII", 0x80, 5, self.seq & 0xFFFF, 160 * self.seq, 0) + payload
            ((_, data),) = self.talker.send_voice(self.now, rtp)
            out.append(data)
        return out

    def feed(self, packets: list[bytes], dt: int = 20) -> tuple[float, list[list[tuple[Any, bytes]]]]:
        """Each packet through ``Relay.on_datagram`` (``dt`` ms apart): CPU seconds, outputs."""
        on = self.relay.on_datagram
        src = self.addr["d0"]
        now = self.now
        outs = []
        t0 = time.process_time()
        for p in packets:
            now += dt
            outs.append(on(now, src, p))
        cpu = time.process_time() - t0
        self.now = now
        return cpu, outs


def relay_rows(quick: bool) -> Iterator[Row]:
    from opmob.srtp import SrtpSession as PureSession

    from opmob_host import accel
    from opmob_host.relay_cmd import BATCH_FROM, fanout_for

    c = accel.select("c")
    variants = {
        "pure": RelayFanout(PureSession),
        "c_ext": RelayFanout(c.SrtpSession, fanout=fanout_for(c)),
        "c_ext_batch": RelayFanout(c.SrtpSession, fanout=c.protect_batch),
    }
    n = 200 if quick else 1000
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(3 if quick else 7):
        pkts = variants["pure"].talker_packets(n)
        for v in ("c_ext", "c_ext_batch"):
            if variants[v].talker_packets(n) != pkts:
                raise RuntimeError("relay bench: the relays were not built alike")
        outs = {}
        for name, w in variants.items():
            cpu, outs[name] = w.feed(pkts)
            best[name] = min(best[name], cpu / n)
        if not outs["pure"] == outs["c_ext"] == outs["c_ext_batch"]:
            raise RuntimeError("relay bench: C and pure relays sent different datagrams")
        if any(len(o) != LISTENERS for o in outs["pure"]):
            raise RuntimeError("relay bench: a packet was not fanned out to every listener")
    what = (
        f"Relay.on_datagram per talker SRTP packet: unprotect, floor gate, re-protect for {LISTENERS} "
        "listeners; CPU time, best of rounds; same packets in and same bytes out for all three rows"
    )
    speed = best["pure"] / best["c_ext"]
    yield (
        "relay.cpu_per_packet_us.c_ext",
        best["c_ext"] * 1e6,
        "us",
        None,
        f"opmob_c.SrtpSession injected as `opmob relay run` does with accel c (per-listener protect "
        f"below {BATCH_FROM} listeners, one batch call from there); {speed:.1f}x faster than pure; {what}",
    )
    yield ("relay.cpu_per_packet_us.pure", best["pure"] * 1e6, "us", None, f"opmob.srtp twin; {what}")
    yield (
        "relay.cpu_per_packet_us.c_ext_batch",
        best["c_ext_batch"] * 1e6,
        "us",
        None,
        f"as c_ext but the fan-out always in one opmob_c protect_batch call (Relay(fanout=...)); {what}",
    )


def link_rows(quick: bool) -> Iterator[Row]:
    """``relay.link_cpu_per_packet_us.<codec>``: the CPU both relays spend per talker packet on
    the link path, best of a few bursts of real speech, each on a fresh pair of relays."""
    import opmob_c

    from opmob_host.link_chain import FRAME_BYTES, RELAY_A, RELAY_B, LinkChain

    pcm = (SPEECH / "hts1a.raw").read_bytes()
    frames = [pcm[o : o + FRAME_BYTES] for o in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    frames = frames[: 100 if quick else 150]
    enc = opmob_c.Dvi4Encoder()
    payloads = [bytes(enc.encode(f)) for f in frames]
    for codec in ("codec2_3200", "codec2_1600", "dvi4"):
        best_a = best_b = float("inf")
        for _ in range(3 if quick else 5):
            chain = LinkChain(codec)
            heard = chain.talk(payloads)
            if len(heard) != len(payloads):
                raise RuntimeError(f"link bench ({codec}): {len(heard)} of {len(payloads)} packets heard")
            best_a = min(best_a, chain.cpu[RELAY_A] / len(payloads))
            best_b = min(best_b, chain.cpu[RELAY_B] / len(payloads))
        work = ("DVI4 forwarded as is", "as is") if codec == "dvi4" else ("to Codec2", "back to DVI4")
        yield (
            f"relay.link_cpu_per_packet_us.{codec}",
            (best_a + best_b) * 1e6,
            "us",
            None,
            f"both relays per 20 ms talker packet over a {codec} link (link_chain, C extension): "
            f"relay A {best_a * 1e6:.1f} us (unprotect, floor gate, {work[0]}, protect for the link), "
            f"relay B {best_b * 1e6:.1f} us (unprotect, {work[1]}, re-protect for 1 listener); "
            f"best of rounds, {len(payloads)} packets of real speech each",
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
        "chain": "DVI4 -> Codec2 3200 -> DVI4 through two relay cores and their link (link_chain), SRTP on every hop",
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
    yield from relay_rows(quick)
    yield from link_rows(quick)
    yield from quality_rows()
