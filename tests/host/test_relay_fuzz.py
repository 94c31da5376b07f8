"""Bad input to the relay and to a device (hypothesis, >= 10,000 cases each).

Whatever arrives, ``on_datagram`` returns a list of ``(addr, bytes)`` and never raises, and every
datagram is counted once: ``rx_datagrams == accepted + sum(drop_*)``. Beyond random and mutated
bytes, the relay is fed *authentic* garbage: signalling bodies, RTCP and RTP of any content
protected with a registered device's real keys, which get past authentication into the handlers,
the floor-control decoder and the floor server.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from opmob import mcpt, rtp, sig
from opmob.ticks import MASK
from relaynet import G1, G2, GP, GSE, RELAY, World

SRC = ("192.0.2.9", 9)
REQUESTS = [t for t in sorted(sig.MESSAGES) if t < 0x80 and t != sig.DEREGISTER]
GROUPS = [G1, G2, GP, GSE, "nope@no", "x@se"]


def _world() -> tuple[World, list[bytes], list[bytes]]:
    w = World(t1=1.0)
    for n in ("ann", "bob", "cat"):
        w.device(n, [G1, G2])
    to_relay: list[bytes] = []
    to_dev: list[bytes] = []

    def tap(src: Any, dst: Any, data: bytes) -> None:
        (to_relay if dst == RELAY else to_dev).append(data)

    w.tap = tap
    w.request("ann")
    w.talk("ann", 3)
    w.request("bob", ind=mcpt.IND_EMERGENCY)
    w.act("cat", w.devs["cat"].emergency(w.now))
    w.run(w.now + 16000)
    w.tap = None
    w.clear()
    return w, to_relay, to_dev


W, TO_RELAY, TO_DEV = _world()


def _check(w: World) -> None:
    c = w.relay.counters
    assert c["rx_datagrams"] == c["accepted"] + w.relay.dropped()
    json.dumps(w.relay.status())


def _mutate(pool: list[bytes], pick: int, pos: int, val: int, how: int) -> bytes:
    p = bytearray(pool[pick % len(pool)])
    if how == 0 and p:
        p[pos % len(p)] = val
    elif how == 1:
        del p[pos % (len(p) + 1) :]
    elif how == 2:
        p += bytes([val]) * (1 + pos % 7)
    elif how == 3 and len(p) > 16:
        p[8 + pos % 8] ^= 1 << (val % 8)
    return bytes(p)


mutated = st.builds(
    _mutate,
    st.just(TO_RELAY),
    st.integers(0, 10_000),
    st.integers(0, 1500),
    st.integers(0, 255),
    st.integers(0, 3),
)
noise = st.one_of(
    st.binary(max_size=1600),
    st.binary(max_size=64).map(lambda b: b"OM\x01" + b),
    st.tuples(st.integers(0x80, 0xBF), st.integers(192, 223), st.binary(max_size=120)).map(
        lambda t: bytes(t[:2]) + t[2]
    ),
)


@fuzz
@given(datagrams=st.lists(st.one_of(noise, mutated), min_size=1, max_size=6), dt=st.floats(0, 2))
def test_relay_survives_any_datagram(datagrams: list[bytes], dt: float) -> None:
    W.now = (W.now + int(dt * 1000)) & MASK
    for d in datagrams:
        out = W.relay.on_datagram(W.now, SRC, d)
        assert isinstance(out, list)
    out = W.relay.poll(W.now)
    assert isinstance(out, list)
    _check(W)


# --- authentic garbage: under a registered device's own keys -------------------------------------


def _dev(name: str) -> Any:
    d = W.devs[name]
    assert d.state == "registered"
    return d


affiliation = st.tuples(st.sampled_from(GROUPS), st.integers(0, 255), st.integers(0, 255))
structured = st.one_of(
    st.builds(lambda a: (sig.AFFILIATE, {"affiliations": a}), st.lists(affiliation, min_size=1, max_size=10)),
    st.builds(
        lambda g: (sig.DEAFFILIATE, {"groups": g}), st.lists(st.sampled_from(GROUPS), min_size=1, max_size=4)
    ),
    st.builds(lambda g: (sig.EMERGENCY_ALERT, {"group": g}), st.sampled_from(GROUPS + [None])),
    st.builds(lambda g: (sig.EMERGENCY_CANCEL, {"group": g}), st.sampled_from(GROUPS + [None])),
    st.builds(
        lambda i: (sig.AFFILIATION_QUERY, {"identity": i}), st.sampled_from(["ann@no", "bob@no", None])
    ),
    st.just((sig.KEEPALIVE, {})),
)


FLOOR_SSRCS = [0, 1, 0xFFFFFFFF] + [int(g["floor_ssrc"]) for g in W.relay.status()["groups"]]
floor_msg = st.builds(
    lambda kind, ack, prio, ind, target, cause, mtype: mcpt.FloorMsg(
        kind,
        ack_req=ack and kind in mcpt.ACK_KINDS,
        priority=prio,
        indicator=ind,
        ssrc_field=target,
        reject_cause=cause,
        msg_type=mtype,
    ),
    st.sampled_from(sorted(mcpt.MESSAGE_NAMES)),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 255)),
    st.one_of(
        st.none(),
        st.sampled_from([mcpt.IND_NORMAL, mcpt.IND_EMERGENCY, mcpt.IND_IMMINENT_PERIL]),
        st.integers(0, 0xFFFF),
    ),
    st.one_of(st.none(), st.sampled_from(FLOOR_SSRCS), st.integers(0, 0xFFFFFFFF)),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    st.one_of(st.none(), st.integers(0, 255)),
)


@fuzz
@given(who=st.sampled_from(["ann", "bob", "cat"]), kind=st.integers(0, 4), data=st.data())
def test_relay_survives_authentic_garbage(who: str, kind: int, data: st.DataObject) -> None:
    d = _dev(who)
    if kind == 0:
        # Any body, framed and protected as the device would: past the tag, into the parser.
        mtype = data.draw(st.sampled_from(REQUESTS))
        body = data.draw(st.binary(max_size=200))
        pkt = sig.frame(mtype, body, txid=d._txns.new_txid(), session=d.session, key=d._tx)
    elif kind == 1:
        t, fields = data.draw(structured)
        pkt = sig.encode(sig.SigMsg(t, txid=d._txns.new_txid(), session=d.session, **fields), d._tx)
    elif kind == 2:
        # Any MCPT content, protected: into the floor-control decoder.
        body = data.draw(st.binary(max_size=200))
        body = b"MCPT" + body + bytes((4 - len(body) % 4) % 4)
        rtcp = struct.pack(">BBHI", 0x80 | (len(body) % 32), 204, len(body) // 4 + 1, d.ssrc) + body
        pkt = d._up.protect_rtcp(rtcp)
    elif kind == 3:
        # Well-formed floor messages of any kind and field, a compound of them: the floor server.
        floor = data.draw(st.lists(floor_msg, min_size=1, max_size=3))
        for f in floor:
            f.ssrc = d.ssrc
        pkt = d._up.protect_rtcp(b"".join(mcpt.encode(f) for f in floor))
    else:
        seq = W.rtp_seq.get(who, 1000) + data.draw(st.integers(1, 1000))
        W.rtp_seq[who] = seq
        hdr = rtp.RtpHeader(
            data.draw(st.integers(0, 127)), seq & 0xFFFF, seq * 160, d.ssrc, marker=bool(seq & 1)
        )
        pkt = d._up.protect(rtp.encode(hdr, data.draw(st.binary(max_size=200))))
    out = W.relay.on_datagram(W.now, W.addr[who], pkt)
    assert isinstance(out, list)
    _check(W)


# --- the device ----------------------------------------------------------------------------------

dev_mutated = st.builds(
    _mutate,
    st.just(TO_DEV),
    st.integers(0, 10_000),
    st.integers(0, 1500),
    st.integers(0, 255),
    st.integers(0, 3),
)


@fuzz
@given(datagrams=st.lists(st.one_of(noise, dev_mutated), min_size=1, max_size=6))
def test_device_survives_any_datagram(datagrams: list[bytes]) -> None:
    d = W.devs["cat"]
    for data in datagrams:
        assert isinstance(d.on_datagram(W.now, RELAY, data), list)
    c = d.counters
    assert c["rx_datagrams"] == c["accepted"] + sum(v for k, v in c.items() if k.startswith("drop_"))
