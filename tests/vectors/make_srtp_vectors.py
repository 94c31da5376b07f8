"""Make tests/vectors/srtp_libsrtp.json: RTP and RTCP packets protected by libsrtp 2.

The reference tool is libsrtp2 (2.7.0, bundled in pylibsrtp 1.0.0), with the
AES_CM_128_HMAC_SHA1_80 profile and "any SSRC" policies, as OpMob uses them. Run with the
project's CPython:

    .venv/bin/python tests/vectors/make_srtp_vectors.py

The packets come from a seeded generator, so the file is the same on every run;
tests/host/test_srtp_libsrtp.py checks that the committed file still equals what libsrtp gives.

Contents (all hex): ``master_key``, ``master_salt``; ``rtp``: ``[plain, protected]`` pairs in the
order libsrtp's sender saw them, ``protected`` being null where libsrtp refused to send (an index
it had already used, or one older than its 128-packet window); ``rtcp``: ``[plain, protected]``.
The RTP streams: voice across a sequence-number wrap (one stream starts at 65535), CSRCs,
header extensions, padding, loss gaps, reordering, a start at 2^15 (the edge of libsrtp's start-up
estimate) and one stream of erratic jumps and repeats. The RTCP: SR, RR, SDES, BYE and APP "MCPT"
floor messages (3GPP TS 24.380), simple and compound, from four SSRCs.
"""

from __future__ import annotations

import json
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pylibsrtp
from pylibsrtp import Policy, Session

HERE = Path(__file__).resolve().parent
OUT = HERE / "srtp_libsrtp.json"
SEED = 3711

EDGE_LENGTHS = (0, 1, 15, 16, 17, 31, 32, 33, 84, 160, 200)


def _payload_len(rng: random.Random) -> int:
    # Mostly short (keeps the file small) but every AES block boundary case shows up.
    if rng.random() < 0.15:
        return rng.choice(EDGE_LENGTHS)
    return min(200, int(rng.expovariate(1 / 30)))


def _rtp(
    rng: random.Random,
    ssrc: int,
    seq: int,
    ts: int,
    pt: int,
    marker: bool = False,
    csrcs: int = 0,
    ext_words: int | None = None,
    padding: int = 0,
    plen: int | None = None,
) -> bytes:
    b0 = 0x80 | csrcs
    if ext_words is not None:
        b0 |= 0x10
    if padding:
        b0 |= 0x20
    out = struct.pack(">BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    for _ in range(csrcs):
        out += struct.pack(">I", rng.getrandbits(32))
    if ext_words is not None:
        out += struct.pack(">HH", 0xBEDE, ext_words) + rng.randbytes(4 * ext_words)
    out += rng.randbytes(_payload_len(rng) if plen is None else plen)
    if padding:
        out += bytes(padding - 1) + bytes((padding,))
    return out


def rtp_streams(rng: random.Random) -> list[list[bytes]]:
    """Per-stream RTP packets, each list in the order its sender emits them."""
    streams: list[list[bytes]] = []

    # Voice (DVI4, PT 5) starting near the wrap, with losses.
    ssrc, seq, ts, pkts = rng.getrandbits(32), 65380, rng.getrandbits(32), []
    for i in range(420):
        seq += 1 + (rng.random() < 0.03) * rng.randint(1, 3)
        ts += 160
        pkts.append(_rtp(rng, ssrc, seq, ts, 5, marker=i == 0, plen=84 if rng.random() < 0.2 else None))
    streams.append(pkts)

    # Starts exactly at 65535: the second packet already has ROC 1.
    ssrc, seq, ts, pkts = rng.getrandbits(32), 65535, rng.getrandbits(32), []
    for i in range(60):
        pkts.append(_rtp(rng, ssrc, seq + i, ts + 160 * i, 5, marker=i == 0))
    streams.append(pkts)

    # Header shapes: CSRCs, extensions, padding, markers.
    ssrc, seq, ts, pkts = rng.getrandbits(32), rng.randrange(0, 30000), rng.getrandbits(32), []
    for i in range(240):
        pkts.append(
            _rtp(
                rng,
                ssrc,
                seq + i,
                ts + 320 * i,
                96,
                marker=rng.random() < 0.1,
                csrcs=rng.choice((0, 0, 0, 1, 2, 15)),
                ext_words=rng.choice((None, None, None, 0, 1, 3)),
                padding=rng.choice((0, 0, 0, 0, 1, 4)),
            )
        )
    streams.append(pkts)

    # Starts at 2^15, then a jump of 20000 and local reordering.
    ssrc, ts, pkts = rng.getrandbits(32), rng.getrandbits(32), []
    seqs = list(range(32768, 32768 + 120)) + list(range(52768, 52768 + 100))
    for a in range(0, len(seqs) - 1, 7):  # swap neighbours now and then
        if rng.random() < 0.5:
            seqs[a], seqs[a + 1] = seqs[a + 1], seqs[a]
    for s in seqs:
        pkts.append(_rtp(rng, ssrc, s, ts + 160 * s, 0))
    streams.append(pkts)

    # Erratic: repeats, small steps back, jumps near 2^15 either way; libsrtp refuses some.
    ssrc, ts, pkts = rng.getrandbits(32), rng.getrandbits(32), []
    s = rng.randrange(65536)
    for _ in range(220):
        r = rng.random()
        if r < 0.55:
            s += 1
        elif r < 0.7:
            s += rng.randint(-140, 3)
        elif r < 0.85:
            s += rng.randint(-34000, 34000)
        # else: repeat s as is
        s &= 0xFFFF
        pkts.append(_rtp(rng, ssrc, s, ts, 8))
    streams.append(pkts)
    return streams


def _sr(rng: random.Random, ssrc: int, reports: int) -> bytes:
    body = struct.pack(
        ">IIIII", ssrc, rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32), rng.randrange(1 << 20)
    )
    body += struct.pack(">I", rng.randrange(1 << 24))
    return _rtcp_hdr(reports, 200, body + _report_blocks(rng, reports))


def _rr(rng: random.Random, ssrc: int, reports: int) -> bytes:
    return _rtcp_hdr(reports, 201, struct.pack(">I", ssrc) + _report_blocks(rng, reports))


def _report_blocks(rng: random.Random, n: int) -> bytes:
    out = b""
    for _ in range(n):
        out += struct.pack(
            ">IIIIII",
            rng.getrandbits(32),
            (rng.randrange(256) << 24) | rng.randrange(1 << 24),
            rng.getrandbits(32),
            rng.randrange(1000),
            rng.getrandbits(32),
            rng.randrange(1 << 16),
        )
    return out


def _sdes(ssrc: int, cname: bytes) -> bytes:
    item = bytes((1, len(cname))) + cname + b"\x00"
    item += bytes(-len(item) % 4)
    return _rtcp_hdr(1, 202, struct.pack(">I", ssrc) + item)


def _bye(ssrc: int) -> bytes:
    return _rtcp_hdr(1, 203, struct.pack(">I", ssrc))


def _field(fid: int, value: bytes) -> bytes:
    f = bytes((fid, len(value))) + value
    return f + bytes(-len(f) % 4)


def _mcpt(rng: random.Random, ssrc: int, user: bytes) -> bytes:
    """A TS 24.380 floor message: APP, name "MCPT", subtype = message type (+0x10 asks an ack)."""
    msg = rng.choice((0, 1, 2, 3, 4, 5, 6, 10))
    fields = b""
    if msg == 0:  # Floor Request
        fields = _field(0, bytes((rng.randrange(256), 0))) + _field(6, user)
    elif msg == 1:  # Floor Granted
        fields = _field(1, struct.pack(">H", 30)) + _field(0, bytes((rng.randrange(256), 0)))
    elif msg == 2:  # Floor Taken
        fields = (
            _field(4, user)
            + _field(5, struct.pack(">H", 1))
            + _field(8, struct.pack(">H", rng.randrange(65536)))
        )
    elif msg in (3, 6):  # Floor Deny, Floor Revoke
        fields = _field(2, struct.pack(">H", rng.choice((1, 2, 3, 4, 6, 255))))
    elif msg == 5:  # Floor Idle
        fields = _field(8, struct.pack(">H", rng.randrange(65536))) + _field(13, struct.pack(">H", 0x8000))
    elif msg == 10:  # Floor Ack
        fields = _field(10, struct.pack(">H", 2)) + _field(12, bytes((rng.choice((0, 1, 2)), 0)))
    subtype = msg | (0x10 if rng.random() < 0.3 and msg != 10 else 0)
    return _rtcp_hdr(subtype, 204, struct.pack(">I", ssrc) + b"MCPT" + fields)


def _rtcp_hdr(count: int, pt: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0x80 | count, pt, len(body) // 4) + body


def rtcp_packets(rng: random.Random) -> list[bytes]:
    """RTCP packets from four SSRCs, in send order."""
    members = [
        (rng.getrandbits(32), b"%s@%s" % (name, sysname))
        for name, sysname in ((b"anna", b"no"), (b"bjorn", b"se"), (b"kaisa", b"fi"), (b"relay-7", b"no"))
    ]
    out = []
    for i in range(240):
        ssrc, cname = members[rng.randrange(len(members))]
        kind = rng.randrange(6)
        if kind == 0:
            pkt = _sr(rng, ssrc, rng.randrange(3)) + _sdes(ssrc, cname)
        elif kind == 1:
            pkt = _rr(rng, ssrc, rng.randrange(3))
        elif kind == 2:
            pkt = _rr(rng, ssrc, 0) + _mcpt(rng, ssrc, cname)
        elif kind == 3 and i > 200:
            pkt = _rr(rng, ssrc, 1) + _bye(ssrc)
        else:
            pkt = _mcpt(rng, ssrc, cname)
        out.append(pkt)
    return out


def interleave(rng: random.Random, streams: list[list[bytes]]) -> list[bytes]:
    """One send order over all streams, each stream keeping its own order (as at a relay)."""
    queues = [list(s) for s in streams]
    out = []
    while any(queues):
        weights = [len(q) for q in queues]
        q = rng.choices(queues, weights)[0]
        out.append(q.pop(0))
    return out


def outbound(key: bytes) -> Session:
    return Session(
        Policy(
            key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        )
    )


def inbound(key: bytes) -> Session:
    return Session(
        Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    )


def build() -> dict[str, Any]:
    rng = random.Random(SEED)
    master_key = rng.randbytes(16)
    master_salt = rng.randbytes(14)
    tx = outbound(master_key + master_salt)
    rtp = []
    for plain in interleave(rng, rtp_streams(rng)):
        try:
            prot: str | None = tx.protect(plain).hex()
        except pylibsrtp.Error as e:
            if "replay" not in str(e):
                raise
            prot = None
        rtp.append([plain.hex(), prot])
    rtcp = [[p.hex(), tx.protect_rtcp(p).hex()] for p in rtcp_packets(rng)]
    return {
        "tool": f"libsrtp2 via pylibsrtp {pylibsrtp.__version__}, AES_CM_128_HMAC_SHA1_80, SSRC_ANY_OUTBOUND",
        "master_key": master_key.hex(),
        "master_salt": master_salt.hex(),
        "rtp": rtp,
        "rtcp": rtcp,
    }


def dump(data: dict[str, Any]) -> str:
    """JSON with one packet pair per line: small diffs, readable in review."""
    head = {k: v for k, v in data.items() if k not in ("rtp", "rtcp")}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    for name in ("rtp", "rtcp"):
        lines.append(f'  "{name}": [')
        rows = [json.dumps(pair) for pair in data[name]]
        lines.append(",\n".join("    " + r for r in rows))
        lines.append("  ]," if name == "rtp" else "  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    data = build()
    OUT.write_text(dump(data))
    refused = sum(1 for _, p in data["rtp"] if p is None)
    print(f"wrote {OUT}: {len(data['rtp'])} RTP ({refused} refused by libsrtp), {len(data['rtcp'])} RTCP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
