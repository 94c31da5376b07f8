"""Coverage-guided fuzzing of the relay core with atheris (libFuzzer for Python): an extra stage of
``make fuzz`` after the seeded mutation fuzzer (fuzz_relay.py).

    python -m opmob_host.fuzz_relay_atheris -runs=200000 -timeout=5 -artifact_prefix=out/atheris-

The relay's modules (opmob.*) are instrumented, so libFuzzer keeps the inputs that reach new code
and mutates those. Each input is turned into one datagram by its first byte: raw bytes; a datagram
of the captured corpus (fuzz_relay.capture_corpus) overwritten, cut or extended by the input; or the
input as the body of a signalling request, an RTCP packet or an RTP payload protected with an
insider's real session keys (authentic garbage: past the tags, into the parsers and floor servers).
The same relay and devices live across inputs, under a virtual clock, as in fuzz_relay.

Per input, as in fuzz_relay: no exception escapes ``on_datagram``; its output is a list of
(address, bytes) of at most 1500 bytes; ``rx_datagrams`` and ``accepted + drops`` each move by
exactly one. A violation raises, and libFuzzer writes the input to ``<artifact_prefix>crash-...``.
libFuzzer's ``-timeout`` catches a hang.
"""

from __future__ import annotations

import random
import struct
import sys
from typing import Any

import atheris


def main(argv: list[str]) -> None:
    with atheris.instrument_imports(include=["opmob"]):
        import opmob.floor_server
        import opmob.mcpt
        import opmob.relay
        import opmob.relay_media
        import opmob.relay_session
        import opmob.relay_sig
        import opmob.rtp
        import opmob.sig
        import opmob.srtp
        import opmob.txn  # noqa: F401

    from opmob_host.fuzz_relay import INSIDERS, RELAY_ADDR, Cast, _bad_output, _drops, capture_corpus

    cast = Cast(1)
    corpus = [s.data for s in capture_corpus(cast)]
    net = cast.net
    relay = cast.relay
    c = relay.counters
    addrs = list(cast.addr.values()) + [("203.0.113.7", 4000), ("203.0.113.8", 5)]
    rng = random.Random(1)

    def insider() -> Any:
        live = [cast.devs[n] for n in INSIDERS if cast.devs[n].state == "registered"]
        return live[0] if live else None

    def build(fdp: Any) -> bytes:
        from opmob import sig

        how = fdp.ConsumeIntInRange(0, 5)
        if how == 0:
            raw: bytes = fdp.ConsumeBytes(1600)
            return raw
        if how == 1:
            p = bytearray(corpus[fdp.ConsumeIntInRange(0, len(corpus) - 1)])
            at = fdp.ConsumeIntInRange(0, len(p))
            patch = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            p[at : at + len(patch)] = patch
            cut = fdp.ConsumeIntInRange(0, len(p))
            return bytes(p[:cut]) if fdp.ConsumeBool() else bytes(p)
        d = insider()
        if d is None:
            out: bytes = fdp.ConsumeBytes(1600)
            return out
        if how == 2:
            mtype = fdp.ConsumeIntInRange(0, 255)
            body = fdp.ConsumeBytes(1100)
            framed: bytes = sig.frame(mtype, body, txid=d._txns.new_txid(), session=d.session, key=d._tx)
            return framed
        if how == 3:
            body = fdp.ConsumeBytes(400)
            sub = fdp.ConsumeIntInRange(0, 31)
            pt = 204 if fdp.ConsumeBool() else fdp.ConsumeIntInRange(192, 223)
            n = len(body) + 8
            rtcp = struct.pack(">BBHI", 0x80 | sub, pt, (n + 3) // 4 - 1, d.ssrc) + body
            prot: bytes = d._up.protect_rtcp(rtcp)
            return prot
        seq = fdp.ConsumeIntInRange(0, 0xFFFF)
        hdr = struct.pack(
            ">BBHII",
            0x80 | fdp.ConsumeIntInRange(0, 63),
            fdp.ConsumeIntInRange(0, 127),
            seq,
            seq * 160,
            d.ssrc,
        )
        srtp_pkt: bytes = d._up.protect(hdr + fdp.ConsumeBytes(400))
        return srtp_pkt

    def one_input(data: bytes) -> None:
        from opmob.errors import WireError

        fdp = atheris.FuzzedDataProvider(data)
        try:
            dgram = build(fdp)
        except (WireError, ValueError, OverflowError):
            return  # the insider's own encoder refused: not an input the relay can get
        src = addrs[fdp.ConsumeIntInRange(0, len(addrs) - 1)]
        net.run(net.t + int(rng.random() * 4 + 0.5))  # ms
        rx0 = c["rx_datagrams"]
        seen0 = c["accepted"] + _drops(c)
        out = relay.on_datagram(net.now, src, dgram)
        if c["rx_datagrams"] != rx0 + 1 or c["accepted"] + _drops(c) != seen0 + 1:
            raise AssertionError("counters do not account for the datagram " + dgram.hex())
        bad = _bad_output(out)
        if bad is not None:
            raise AssertionError(bad + " for " + dgram.hex())
        net.send(RELAY_ADDR, out)  # also when empty: the relay's deadline may have moved
        if out:
            net.pump()

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
