# Benchmarks of the firmware core, runnable unchanged under CPython and MicroPython.
#
# CPython imports this module; the MicroPython unix port runs it as a script
# (``micropython bench_core.py [quick]``) and it prints one JSON row per line. Keeping one source
# for both runtimes means the two columns of the bench table measure the same work.
import json
import sys
import time

if False:  # type checkers only: MicroPython has no typing module
    from collections.abc import Callable, Iterator

IS_MICROPYTHON = sys.implementation.name == "micropython"

if IS_MICROPYTHON:

    def _now_us() -> int:
        return time.ticks_us()  # type: ignore[attr-defined]

    def _elapsed_us(t0: int) -> int:
        return time.ticks_diff(time.ticks_us(), t0)  # type: ignore[attr-defined]

else:

    def _now_us() -> int:
        return time.perf_counter_ns() // 1000

    def _elapsed_us(t0: int) -> int:
        return time.perf_counter_ns() // 1000 - t0


def per_call_us(fn: "Callable[[], object]", n: int, repeats: int = 5) -> float:
    """Best of ``repeats`` runs of ``n`` calls: the least disturbed by the shared machine."""
    best = -1.0
    for _ in range(repeats):
        t0 = _now_us()
        for _ in range(n):
            fn()
        dt = _elapsed_us(t0) / n
        if best < 0 or dt < best:
            best = dt
    return best


def _speech_frame() -> bytes:
    try:
        with open("/usr/share/codec2/raw/hts1a.raw", "rb") as f:
            f.read(3200)
            return f.read(320)
    except OSError:
        return bytes(320)


def run(quick: bool = False) -> "Iterator[tuple[str, float, str, float | None, str]]":
    """Yield rows (name, value, unit, goal, note)."""
    from opmob import dvi4, mcpt, rtp, srtp

    scale = 1 if quick else 10
    key, salt = bytes(range(16)), bytes(range(16, 30))
    tx = srtp.SrtpSession(key, salt)
    rx = srtp.SrtpSession(key, salt)
    pcm = _speech_frame()
    enc = dvi4.Dvi4Encoder()
    dec = dvi4.Dvi4Decoder()
    payload_buf = bytearray(dvi4.payload_len(dvi4.FRAME_SAMPLES))
    pcm_buf = bytearray(2 * dvi4.FRAME_SAMPLES)
    payload = bytes(enc.encode(pcm, payload_buf))

    seq = [0]

    def protect() -> bytes:
        seq[0] += 1
        h = rtp.RtpHeader(rtp.PT_DVI4_8K, seq[0] & 0xFFFF, seq[0] * 160, 0x1234ABCD)
        return tx.protect(rtp.encode(h, payload))

    n = 100 * scale
    us = per_call_us(protect, n)
    yield ("rtp_srtp.protect_us", us, "us", None, "RTP header encode + SRTP protect, 80-byte DVI4 payload")

    packets = [protect() for _ in range(n * 5)]
    it = [0]

    def unprotect() -> None:
        i = it[0]
        it[0] = i + 1
        rtp.decode(rx.unprotect(packets[i]))

    us = per_call_us(unprotect, n)
    yield ("rtp_srtp.unprotect_us", us, "us", None, "SRTP unprotect (tag, replay, ROC) + RTP decode")

    yield (
        "dvi4.encode_frame_us",
        per_call_us(lambda: enc.encode(pcm, payload_buf), 20 * scale),
        "us",
        None,
        "160 samples (20 ms) into a caller buffer",
    )
    yield (
        "dvi4.decode_frame_us",
        per_call_us(lambda: dec.decode(payload, pcm_buf), 20 * scale),
        "us",
        None,
        "80+4 bytes into a caller buffer",
    )

    granted = mcpt.FloorMsg(
        mcpt.FLOOR_GRANTED,
        0x11223344,
        ack_req=True,
        duration=30,
        user_id="alice@no",
        ssrc_field=0x55667788,
        queue_size=0,
        indicator=mcpt.IND_NORMAL,
    )
    wire = mcpt.encode(granted)
    yield (
        "mcpt.encode_us",
        per_call_us(lambda: mcpt.encode(granted), 50 * scale),
        "us",
        None,
        "Floor Granted, 5 fields",
    )
    yield (
        "mcpt.decode_us",
        per_call_us(lambda: mcpt.decode(wire), 50 * scale),
        "us",
        None,
        "Floor Granted, 5 fields",
    )

    from opmob import authvec, sig

    keys = authvec.derive(bytes(16), bytes(16), bytes(16))
    dev_tx = sig.keys(keys, False)[0]
    net_rx = sig.keys(keys, True)[1]
    ka = sig.SigMsg(sig.KEEPALIVE, txid=7, session=0x01020304)
    ka_wire = sig.encode(ka, dev_tx)
    yield (
        "sig.encode_protected_us",
        per_call_us(lambda: sig.encode(ka, dev_tx), 50 * scale),
        "us",
        None,
        "KEEPALIVE with HMAC-SHA256-128 tag and AES-CTR",
    )
    yield (
        "sig.decode_protected_us",
        per_call_us(lambda: sig.decode(ka_wire, net_rx), 50 * scale),
        "us",
        None,
        "KEEPALIVE, tag checked",
    )

    from opmob.floor_server import FloorServer

    srv = FloorServer("bench@no")
    for pid in range(10):
        srv.join(0.0, pid, "user%d@no" % pid, 0x1000 + pid)
    req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, 0x1001, priority=5)
    rel = mcpt.FloorMsg(mcpt.FLOOR_RELEASE, 0x1001)
    clock = [1.0]

    def floor_cycle() -> None:
        clock[0] += 0.001
        srv.on_message(clock[0], 1, req)
        srv.on_message(clock[0], 1, rel)

    yield (
        "floor.request_release_cycle_us",
        per_call_us(floor_cycle, 20 * scale),
        "us",
        None,
        "server side: Request -> Granted + 9 Taken, Release -> 10 Idle (messages built, not encoded)",
    )


def main() -> None:
    quick = len(sys.argv) > 1 and sys.argv[1] == "quick"
    for name, value, unit, goal, note in run(quick):
        print(json.dumps({"name": name, "value": value, "unit": unit, "goal": goal, "note": note}))


if IS_MICROPYTHON and __name__ == "__main__":
    main()
