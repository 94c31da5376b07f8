"""SRTP in place (``SrtpSession.protect_into`` / ``unprotect_into``) and the device's voice path
built on it, on both runtimes: byte-identical to ``protect`` / ``unprotect`` over libsrtp's
vectors, nothing moved on any error, and (MicroPython) no allocation per packet beyond what
hashlib makes: two sha1 objects and two 20-byte digests per HMAC-SHA1, HASHLIB_RESIDUE bytes."""

import gc
import struct

from fwtest import IS_MICROPYTHON, Rng, SkipTest, load_vectors, raises, unhex
from opmob.errors import AuthFailed, Oversized, Replayed, Truncated, UnknownStream, WireError
from opmob.rtp import RtpHeader
from opmob.rtp import encode as rtp_encode
from opmob.srtp import TAG_LEN, SrtpSession
from relaynet import G1, World

MK = unhex("e1f97a0d3e018be0d64fa32c06de4139")
MS = unhex("0ec675ad498afeebb6960b3aabe6")

# Measured on the unix port (docs/accessory-audio.md): per HMAC, hashlib.sha1 objects of 160 bytes
# (inner and outer) and their two digests of 32 bytes each; nothing else.
HASHLIB_RESIDUE = 384
FRAMES = 500


def rtp(seq, ssrc=0x11223344, n=84):
    return rtp_encode(RtpHeader(5, seq & 0xFFFF, seq * 160, ssrc), bytes((seq + i) & 0xFF for i in range(n)))


def protect_in(s, plain, room=TAG_LEN + 7):
    buf = bytearray(len(plain) + room)
    buf[: len(plain)] = plain
    n = s.protect_into(buf, len(plain))
    return bytes(buf[:n])


def unprotect_in(s, prot, room=3):
    buf = bytearray(len(prot) + room)
    buf[: len(prot)] = prot
    n = s.unprotect_into(buf, len(prot))
    return bytes(buf[:n])


def test_into_forms_match_libsrtp_vectors():
    v = load_vectors("srtp_libsrtp.json")
    mk = unhex(v["master_key"])
    ms = unhex(v["master_salt"])
    tx, rx = SrtpSession(mk, ms), SrtpSession(mk, ms)
    tx2, rx2 = SrtpSession(mk, ms), SrtpSession(mk, ms)
    sent = 0
    for plain_hex, prot_hex in v["rtp"]:
        plain = unhex(plain_hex)
        if prot_hex is None:
            raises(Replayed, protect_in, tx, plain)
            raises(Replayed, tx2.protect, plain)
            continue
        prot = unhex(prot_hex)
        assert protect_in(tx, plain) == prot == tx2.protect(plain), plain_hex
        assert unprotect_in(rx, prot) == plain == rx2.unprotect(prot), prot_hex
        sent += 1
    assert sent >= 1000
    for ssrc in (0x11223344, 0xCAFEBABE, 0xDEADBEEF, 0):
        for out in (False, True):
            a = (tx if out else rx).stream_state(ssrc, out)
            b = (tx2 if out else rx2).stream_state(ssrc, out)
            assert a == b, (ssrc, out)
    # Replays of what libsrtp sent are refused alike.
    for _, prot_hex in v["rtp"][::7]:
        if prot_hex is not None:
            prot = unhex(prot_hex)
            e1 = raises(WireError, unprotect_in, rx, prot)
            e2 = raises(WireError, rx2.unprotect, prot)
            assert type(e1) is type(e2)


def test_reusing_one_buffer_across_sizes_and_wrap():
    tx, rx, ref = SrtpSession(MK, MS), SrtpSession(MK, MS), SrtpSession(MK, MS)
    buf = bytearray(300)
    for seq in range(65500, 65500 + 100):
        plain = rtp(seq, n=(84, 84, 20, 160)[seq % 4])
        buf[: len(plain)] = plain
        n = tx.protect_into(buf, len(plain))
        prot = bytes(buf[:n])
        assert prot == ref.protect(plain)
        assert rx.unprotect_into(buf, n) == len(plain) and bytes(buf[: len(plain)]) == plain
    assert rx.stream_state(0x11223344)[:2] == (1, (65500 + 99) & 0xFFFF)


def test_buffer_resized_between_packets():
    # A bytearray that grows and shrinks back has its old length but lives elsewhere: the session
    # must not authenticate through a view of the old storage.
    tx, ref = SrtpSession(MK, MS), SrtpSession(MK, MS)
    buf = bytearray(120)
    for seq in range(20):
        plain = rtp(seq)
        buf[: len(plain)] = plain
        assert bytes(buf[: tx.protect_into(buf, len(plain))]) == ref.protect(plain)
        if seq % 3 == 0:
            buf[:] = bytes(4000)
            buf[:] = bytes(120)


def test_errors_leave_session_and_buffer_untouched():
    tx, rx = SrtpSession(MK, MS), SrtpSession(MK, MS, max_streams=1)
    good = [tx.protect(rtp(s)) for s in range(10)]
    for p in good[:5]:
        rx.unprotect(p)
    before = rx.stream_state(0x11223344)
    bad = []
    forged = bytearray(good[7])
    forged[20] ^= 1
    bad.append((bytes(forged), AuthFailed))
    tag = bytearray(good[8])
    tag[-1] ^= 0x80
    bad.append((bytes(tag), AuthFailed))
    bad.append((good[3], Replayed))
    bad.append((good[2][:15], Truncated))
    bad.append((tx.protect(rtp(1, ssrc=0x55)), UnknownStream))
    for pkt, err in bad:
        buf = bytearray(pkt) + b"\xee\xee"
        copy = bytes(buf)
        raises(err, rx.unprotect_into, buf, len(pkt))
        assert bytes(buf) == copy, err
        assert rx.stream_state(0x11223344) == before and rx.stream_count() == 1
    raises(Oversized, rx.unprotect_into, bytearray(1600), 1501)
    # The sender: a reused index, no room for the tag, an oversized packet.
    state = tx.stream_state(0x11223344, True)
    for plain, room, err in (
        (rtp(4), 20, Replayed),
        (rtp(50), 9, ValueError),
        (rtp(51, n=1100), 20, Oversized),
    ):
        buf = bytearray(len(plain) + room)
        buf[: len(plain)] = plain
        copy = bytes(buf)
        raises(err, tx.protect_into, buf, len(plain))
        assert bytes(buf) == copy and tx.stream_state(0x11223344, True) == state
    # Still in step afterwards.
    for p in good[5:]:
        assert unprotect_in(rx, p) == rtp(good.index(p))


def test_random_input_into_matches_plain_forms():
    r = Rng(1729)
    tx = SrtpSession(MK, MS)
    rx1, rx2 = SrtpSession(MK, MS), SrtpSession(MK, MS)
    good = [tx.protect(rtp(s, ssrc=0x10 + s % 3)) for s in range(40)]
    for _ in range(400):
        p = bytearray(good[r.below(len(good))])
        if r.below(2):
            p[r.below(len(p))] ^= 1 << r.below(8)
        if r.below(4) == 0:
            p = p[: r.below(len(p) + 1)]
        p = bytes(p)
        try:
            a = rx1.unprotect(p)
        except WireError as e:
            a = type(e)
        try:
            b = unprotect_in(rx2, p)
        except WireError as e:
            b = type(e)
        assert a == b, p
    for s in (0x10, 0x11, 0x12):
        assert rx1.stream_state(s) == rx2.stream_state(s)


def _need_micropython():
    if not IS_MICROPYTHON:
        raise SkipTest(
            "allocation is measured on MicroPython only (CPython's numbers say nothing of the ESP32)"
        )


def _per_packet(f, count):
    # Bytes allocated per call of f(i) over ``count`` calls, the collector off.
    gc.collect()
    gc.disable()
    try:
        a = gc.mem_alloc()
        for i in range(count):
            f(i)
        return (gc.mem_alloc() - a) / count
    finally:
        gc.enable()


def test_srtp_in_place_allocates_only_hashlib_residue():
    _need_micropython()
    tx, rx = SrtpSession(MK, MS), SrtpSession(MK, MS)
    frames = [rtp(s, ssrc=0x31323334) for s in range(65400, 65400 + FRAMES + 8)]
    buf = bytearray(len(frames[0]) + TAG_LEN)
    rbuf = bytearray(len(buf))
    n = len(frames[0])
    lens = [0]

    def send(i):
        buf[:n] = frames[i]
        lens[0] = tx.protect_into(buf, n)

    def both(i):
        send(i)
        rbuf[:] = buf
        rx.unprotect_into(rbuf, lens[0])

    for i in range(4):  # first packet: streams and views made once
        both(i)
    frames = frames[4:]
    tx_only = _per_packet(send, FRAMES // 2)
    assert tx_only <= HASHLIB_RESIDUE + 1, tx_only
    frames = frames[FRAMES // 2 :]
    total = _per_packet(both, FRAMES // 2)
    assert total <= 2 * HASHLIB_RESIDUE + 1, total
    assert rx.stream_state(0x31323334)[0] == 1  # the run crossed the sequence wrap


def test_device_voice_path_allocates_only_hashlib_residue():
    _need_micropython()
    w = World()
    ann = w.device("ann", [G1])
    bob = w.device("bob", [G1])
    w.request("ann")
    w.clear()
    assert ann.state == "registered" and bob.state == "registered"
    # ann's packets through the relay to bob, collected as the relay sends them, kept from bob.
    baddr = w.addr["bob"]
    got = []

    def is_rtp(dst, data):
        return dst == baddr and data[0] >> 6 == 2 and not 192 <= data[1] <= 223

    w.tap = lambda src, dst, data: got.append(data) if is_rtp(dst, data) else None
    w.lose = lambda src, dst, data: is_rtp(dst, data)
    n = 12 + 84
    buf = bytearray(n + TAG_LEN)
    for _ in range(FRAMES + 4):
        buf[:n] = w.rtp_packet("ann")
        m = ann.send_voice_into(w.now, buf, n)
        assert m == n + TAG_LEN
        w.act("ann", [(ann.relay_addr, bytes(buf[:m]))])
        w.step(20)
    heard = [0, 0]

    def sink(now, b, k):
        heard[0] += 1
        heard[1] = k

    bob.voice_sink = sink
    relay_addr = ann.relay_addr
    fresh = got
    assert len(fresh) >= FRAMES
    bob.on_datagram(w.now, relay_addr, fresh[0])
    fresh = fresh[1 : FRAMES + 1]
    per = _per_packet(lambda i: bob.on_datagram(w.now, relay_addr, fresh[i]), FRAMES)
    # Nothing beyond hashlib: a voice packet given to the sink is answered with a shared empty
    # tuple, not a new list.
    assert per <= HASHLIB_RESIDUE + 1, per
    assert heard == [FRAMES + 1, n] and bob.events == []
    # The sending side alone.
    pkt = w.rtp_packet("ann")
    buf[:n] = pkt

    base = w.rtp_seq["ann"]

    def send(i):
        struct.pack_into(">H", buf, 2, (base + i) & 0xFFFF)
        ann.send_voice_into(w.now, buf, n)

    per = _per_packet(send, FRAMES)
    assert per <= HASHLIB_RESIDUE + 1, per


def test_device_send_voice_into_and_sink_on_both_runtimes():
    w = World()
    ann = w.device("ann", [G1])
    bob = w.device("bob", [G1])
    w.request("ann")
    w.clear()
    got = []
    bob.voice_sink = lambda now, b, k: got.append(bytes(b[:k]))
    sent = []
    buf = bytearray(200)
    for _ in range(5):
        p = w.rtp_packet("ann")
        sent.append(p)
        buf[: len(p)] = p
        m = ann.send_voice_into(w.now, buf, len(p))
        w.act("ann", [(ann.relay_addr, bytes(buf[:m]))])
        w.step(20)
    assert [g[12:] for g in got] == [p[12:] for p in sent]
    assert all(struct.unpack(">I", g[8:12])[0] == ann.ssrc for g in got)
    assert bob.events == [] or all(e[0] != "voice" for e in bob.events)
    assert bob.counters["voice_rx"] == 5
    # The receive buffer starts at a voice packet's size and grows for a larger packet.
    for size in (300, 84):
        p = rtp_encode(RtpHeader(5, w.rtp_seq["ann"], 0, 1), bytes((i * 7) & 0xFF for i in range(size)))
        w.rtp_seq["ann"] += 1
        big = bytearray(len(p) + TAG_LEN)
        big[: len(p)] = p
        m = ann.send_voice_into(w.now, big, len(p))
        w.act("ann", [(ann.relay_addr, bytes(big[:m]))])
        assert got[-1][12:] == p[12:], size
    assert len(got) == 7
    idle = World().device("cat", [G1], start=False)
    assert idle.send_voice_into(0.0, bytearray(200), 96) == 0 and idle.counters["voice_refused"] == 1
