"""The accessory's audio paths end to end: capture (DVI4 + RTP) -> network -> playback (jitter buffer,
concealment, DVI4, tones), on real speech, with loss, reordering, jitter, duplicates, talker change
and late entry; through the real relay and SRTP; RTP parsing; and no allocation per frame on
MicroPython, on both runtimes."""

import math

from fwtest import IS_MICROPYTHON, Rng, SkipTest, raises, read_speech
from opmob import dvi4, rtp
from opmob.accessory.audio import CapturePath, PlaybackPath
from opmob.accessory.jitter import AUDIO, CONCEALED, SILENCE
from opmob.compat import micropython
from relaynet import G1, World

FRAME = 320


def speech(name="hts1a.raw", frames=None):
    pcm = read_speech(name)
    n = len(pcm) // FRAME
    if frames is not None:
        n = min(n, frames)
    return [pcm[k * FRAME : (k + 1) * FRAME] for k in range(n)]


def s16(buf, i):
    v = buf[2 * i] | (buf[2 * i + 1] << 8)
    return v - 65536 if v >= 32768 else v


def snr_db(pairs):
    """SNR of (reference frame, received frame) pairs, over all of them."""
    sig = 0
    err = 0
    for ref, got in pairs:
        for i in range(FRAME // 2):
            x = s16(ref, i)
            d = x - s16(got, i)
            sig += x * x
            err += d * d
    return 10 * math.log10(sig / max(err, 1))


def capture_all(frames, ssrc, seq, ts, t0=0):
    """Packets of a talk burst: (capture time ms, packet bytes, seq)."""
    cap = CapturePath(ssrc, seq, ts)
    cap.start_burst(t0)
    out = []
    for k, f in enumerate(frames):
        s = cap.seq
        out.append((t0 + 20 * k, bytes(cap.frame(f)), s))
    return out


class Listener:
    """A PlaybackPath popped every 20 ms; records (time, kind, seq played, pcm)."""

    def __init__(self, phase=7, pb=None):
        self.pb = pb if pb is not None else PlaybackPath()
        self.t = phase
        self.out = bytearray(FRAME)
        self.log = []

    def run(self, arrivals, until):
        """``arrivals``: (arrival time ms, packet), any order."""
        # by time, then as given (MicroPython's sort is not stable)
        q = sorted([(a[0], i, a[1]) for i, a in enumerate(arrivals)], key=lambda a: (a[0], a[1]))
        i = 0
        while self.t <= until:
            while i < len(q) and q[i][0] <= self.t:
                self.pb.on_voice(q[i][0], q[i][2])
                i += 1
            kind = self.pb.next_frame(self.t, self.out)
            seq = self.pb.jitter.played_seq if kind == AUDIO else None
            self.log.append((self.t, kind, seq, bytes(self.out)))
            self.t += 20

    def audio(self):
        return [(e[2], e[3]) for e in self.log if e[1] == AUDIO]


# --- capture ----------------------------------------------------------------------------------------


def test_capture_writes_rtp_headers():
    frames = speech(frames=6)
    cap = CapturePath(0xCAFE0001, 65534, 0xFFFFFF60)
    assert cap.seq == 65534 and cap.ts == 0xFFFFFF60
    cap.start_burst(1000)
    hdrs = []
    for f in frames[:4]:
        h, payload = rtp.decode(bytes(cap.frame(f)))
        hdrs.append(h)
        assert len(payload) == dvi4.FRAME_PAYLOAD
    assert [h.seq for h in hdrs] == [65534, 65535, 0, 1]
    assert [h.ts for h in hdrs] == [0xFFFFFF60, 0, 160, 320]
    assert [h.marker for h in hdrs] == [True, False, False, False]
    assert all(h.pt == dvi4.PAYLOAD_TYPE and h.ssrc == 0xCAFE0001 and h.csrcs == () for h in hdrs)
    # the next burst, 1 s after the first began (4 frames = 80 ms sent): the timestamp moves on by
    # the 920 ms of silence, and the marker starts the burst
    cap.start_burst(2000)
    h, _ = rtp.decode(bytes(cap.frame(frames[4])))
    assert h.marker and h.seq == 2 and h.ts == 480 + 920 * 8
    h, _ = rtp.decode(bytes(cap.frame(frames[5])))
    assert not h.marker and h.seq == 3
    assert cap.frames == 6 and cap.bursts == 2
    cap.set_ssrc(0x01020304)
    assert rtp.decode(bytes(cap.frame(frames[0])))[0].ssrc == 0x01020304
    raises(ValueError, cap.frame, frames[0][:318])
    raises(ValueError, cap.set_ssrc, 1 << 32)


def test_capture_payloads_are_the_encoders_and_each_burst_starts_fresh():
    frames = speech(frames=40)[20:40]
    cap = CapturePath()
    for burst in (frames[:10], frames[10:]):
        cap.start_burst(0)
        ref = dvi4.Dvi4Encoder()  # a burst starts from state (0, 0)
        for f in burst:
            pkt = cap.frame(f)
            assert bytes(pkt[12:]) == bytes(ref.encode(f))


def test_capture_output_is_accepted_by_the_device_session():
    w = World()
    d = w.device("ann", [G1])
    w.clear()
    cap = CapturePath()
    cap.start_burst(0)
    pkt = cap.frame(speech(frames=1)[0])
    w.request("ann")
    out = d.send_voice(w.now, pkt)
    assert len(out) == 1 and len(out[0][1]) == len(pkt) + 10  # SRTP tag
    assert d.counters["voice_refused"] == 0


# --- end to end over plain RTP --------------------------------------------------------------------


def reference(packets):
    """seq -> (source pcm, what the decoder makes of its payload)."""
    return dict((p[2], bytes(dvi4.decode_frame(p[1][12:]))) for p in packets)


def test_end_to_end_clean_network_is_the_codec_alone():
    frames = speech()
    pkts = capture_all(frames, 0x1234, 100, 5000)
    lis = Listener()
    lis.run([(p[0] + 12, p[1]) for p in pkts], 20 * len(frames) + 400)
    got = lis.audio()
    assert [g[0] for g in got] == [p[2] for p in pkts]
    ref = reference(pkts)
    for seq, pcm in got:
        assert pcm == ref[seq]
    src = dict((p[2], frames[k]) for k, p in enumerate(pkts))
    snr = snr_db([(src[seq], pcm) for seq, pcm in got])
    # the codec's own figure on this file is 17.2 dB (test_dvi4)
    assert snr > 16.2, snr
    c = lis.pb.jitter.counters
    assert c["lost"] == 0 and c["late"] == 0 and c["concealed"] == 3  # the fade after the end
    # capture of frame k at 20k ms, network 12 ms, played at the pop after: the delay is steady
    delays = [e[0] - (20 * (e[2] - 100)) for e in lis.log if e[1] == AUDIO]
    assert max(delays) - min(delays) <= 20 and max(delays) <= 12 + 40 + 20, (min(delays), max(delays))


def network(pkts, rng, loss_pct, jitter_ms, dup_pct=0, base=15):
    """Arrivals (time, packet) after loss, duplication and a random delay per packet (so the
    order changes where the delay does); also the set of lost sequence numbers."""
    arr = []
    lost = set()
    for t, pkt, seq in pkts:
        if rng.below(100) < loss_pct:
            lost.add(seq)
            continue
        arr.append((t + base + rng.below(jitter_ms + 1), pkt))
        if rng.below(100) < dup_pct:
            arr.append((t + base + rng.below(jitter_ms + 1), pkt))
    return arr, lost


def test_end_to_end_with_loss_reordering_jitter_and_duplicates():
    frames = speech()
    pkts = capture_all(frames, 0x1234, 65000, 0)  # the sequence wraps during the burst
    rng = Rng(2024)
    arr, lost = network(pkts, rng, loss_pct=3, jitter_ms=60, dup_pct=5)
    lis = Listener()
    lis.run(arr, 20 * len(frames) + 600)
    got = lis.audio()
    c = lis.pb.jitter.counters
    ref = reference(pkts)
    src = dict((p[2], frames[k]) for k, p in enumerate(pkts))
    # every frame played is the right frame, in order, decoded exactly
    order = [g[0] for g in got]
    assert all(((order[i + 1] - order[i]) & 0xFFFF) >= 1 for i in range(len(order) - 1))
    for seq, pcm in got:
        assert seq not in lost and pcm == ref[seq]
    assert c["duplicate"] >= 1
    # only lost frames and a few late ones are missing
    missing = len(pkts) - len(got)
    assert missing == len(lost) + c["late"] + c["shrunk"], (missing, len(lost), c)
    assert c["late"] <= 3, c
    # the speech that was played is as good as the codec makes it
    assert snr_db([(src[seq], pcm) for seq, pcm in got]) > 16.2
    # every gap was filled by concealment or silence, never left as stale audio
    kinds = [e[1] for e in lis.log]
    assert kinds.count(CONCEALED) >= 1


def test_talker_change_and_late_entry():
    ann = capture_all(speech("hts1a.raw", 100), 0xA, 10, 0, t0=0)
    bob = capture_all(speech("hts2a.raw", 100), 0xB, 30000, 777, t0=1200)
    # The listener enters late: it hears ann from her 40th frame on (no marker on it).
    arr = [(p[0] + 15, p[1]) for p in ann[40:]]
    # bob pre-empts at 1200 ms; ann's frames sent after that (her tail) reach the listener too
    arr += [(p[0] + 15, p[1]) for p in bob]
    lis = Listener()
    lis.run(arr, 3600)
    c = lis.pb.jitter.counters
    first = [e for e in lis.log if e[1] == AUDIO][0]
    assert first[2] == ann[40][2]
    assert first[0] - (ann[40][0] + 15) <= 40 + 20, first[0]  # late entry: at once (the start delay)
    played = [e[2] for e in lis.log if e[1] == AUDIO]
    bob_seqs = set(p[2] for p in bob)
    k = [i for i, s in enumerate(played) if s in bob_seqs][0]
    assert all(s in bob_seqs for s in played[k:])  # nothing of ann after bob began
    t_bob = [e[0] for e in lis.log if e[1] == AUDIO and e[2] == bob[0][2]][0]
    assert t_bob - (bob[0][0] + 15) <= 60 + 20, t_bob  # bob is heard at once, ann's backlog dropped
    assert c["talker_changes"] == 1 and c["stale_talker"] > 0
    assert played[k:] == [p[2] for p in bob]
    assert lis.pb.talker_ssrc == 0xB


# --- playback details -----------------------------------------------------------------------------


def make_rtp(seq, ts=None, ssrc=0x55, pt=5, csrcs=(), ext=None, padding=0, payload=None):
    if payload is None:
        payload = bytes(dvi4.encode_frame(bytes(FRAME))[0])
    h = rtp.RtpHeader(
        pt,
        seq,
        seq * 160 if ts is None else ts,
        ssrc,
        csrcs=csrcs,
        ext_profile=None if ext is None else 0xBEDE,
        ext=b"" if ext is None else ext,
        padding=padding,
    )
    return rtp.encode(h, payload)


def test_rtp_header_variants_and_bad_packets():
    pb = PlaybackPath()
    assert pb.on_voice(0, make_rtp(1, csrcs=(7, 8), ext=bytes(8), padding=4))
    assert pb.on_voice(20, make_rtp(2))
    assert not pb.on_voice(40, make_rtp(3, pt=0))
    assert not pb.on_voice(40, make_rtp(3)[:11])
    bad = bytearray(make_rtp(3))
    bad[0] = 0x40  # version 1
    assert not pb.on_voice(40, bad)
    bad = bytearray(make_rtp(3, padding=4))
    bad[-1] = 200  # padding longer than the packet
    assert not pb.on_voice(40, bad)
    bad = bytearray(make_rtp(3, ext=bytes(4)))
    bad[15] = 50  # extension runs past the end
    assert not pb.on_voice(40, bad)
    assert not pb.on_voice(40, make_rtp(3, payload=bytes(40)))  # not a 20 ms DVI4 payload
    c = pb.counters
    assert c["voice_in"] == 8 and c["accepted"] == 2 and c["wrong_pt"] == 1 and c["bad_rtp"] == 4
    assert pb.jitter.counters["bad_payload"] == 1
    out = bytearray(FRAME)
    kinds = [pb.next_frame(45 + 20 * k, out) for k in range(3)]
    assert kinds[:2] == [AUDIO, AUDIO], kinds


def test_select_plays_one_talker():
    pb = PlaybackPath()
    pb.select(0x99)
    assert not pb.on_voice(0, make_rtp(1, ssrc=0x55))
    assert pb.on_voice(0, make_rtp(1, ssrc=0x99))
    assert pb.counters["not_selected"] == 1
    pb.select(None)
    assert pb.on_voice(20, make_rtp(2, ssrc=0x99))
    raises(ValueError, pb.select, -1)
    raises(ValueError, PlaybackPath, duck=16)


def test_tones_mix_over_voice_and_over_silence():
    pb = PlaybackPath()
    out = bytearray(FRAME)
    pb.tones.start("talk_permit")
    assert pb.next_frame(0, out) == SILENCE
    assert max(abs(s16(out, i)) for i in range(160)) > 4000  # the tone alone
    # voice with a tone: the voice is ducked by 6 dB under the tone
    frames = speech(frames=60)[40:60]
    pkts = capture_all(frames, 0x77, 0, 0)
    lis = Listener(pb=PlaybackPath())
    ref = Listener(pb=PlaybackPath())
    arr = [(p[0] + 5, p[1]) for p in pkts]
    ref.run(arr, 300)
    lis.pb.tones.start("deny")
    lis.run(arr, 300)
    assert [e[1] for e in lis.log] == [e[1] for e in ref.log]
    from opmob.accessory.tones import TonePlayer

    tp = TonePlayer()
    tp.start("deny")
    tone = bytearray(FRAME)
    for (t, kind, seq, pcm), (_, _, _, plain) in zip(lis.log, ref.log):
        tp.fill(tone)
        for i in range(160):
            v = s16(plain, i)
            half = -((-v) >> 1) if v < 0 else v >> 1
            want = max(-32768, min(32767, half + s16(tone, i)))
            assert s16(pcm, i) == want


# --- through the relay, with SRTP ----------------------------------------------------------------


def test_through_the_relay_with_srtp():
    w = World()
    w.device("ann", [G1])
    bob = w.device("bob", [G1])
    w.clear()
    w.request("ann")
    w.clear()
    frames = speech()
    cap = CapturePath()
    cap.start_burst(0)
    lis = Listener()
    arrivals = []
    for k, f in enumerate(frames):
        t = w.now  # the cores' clock is the audio paths' ms already
        w.act("ann", w.devs["ann"].send_voice(w.now, cap.frame(f)))
        for e in w.events("bob", "voice"):
            arrivals.append((t, e[1]))
        w.step(20)
    lis.run(arrivals, 20 * len(frames) + 400)
    got = lis.audio()
    assert len(got) == len(frames)
    snr = snr_db([(frames[k], got[k][1]) for k in range(len(frames))])
    assert snr > 16.2, snr
    assert bob.counters["voice_rx"] == len(frames)


def test_through_the_relay_in_place_as_the_app_does():
    # The app's wiring: the capture buffer protected where it lies (send_voice_into, the tag in
    # cap.buf's room), the listener's session decrypting into its own buffer for voice_sink,
    # which hands (buf, n) to the playback path.
    w = World()
    ann = w.device("ann", [G1])
    bob = w.device("bob", [G1])
    w.clear()
    w.request("ann")
    w.clear()
    frames = speech(frames=150)
    cap = CapturePath()
    cap.start_burst(0)
    lis = Listener()
    seen = []

    def sink(now, buf, n):
        seen.append((len(buf), n))
        lis.pb.on_voice(t, buf, n)

    bob.voice_sink = sink
    t = 0
    for f in frames:
        view = cap.frame(f)
        assert len(view) == 96 and len(cap.buf) == 96 + 10
        m = ann.send_voice_into(w.now, cap.buf, len(view))
        assert m == 106
        w.act("ann", [(ann.relay_addr, bytes(cap.buf[:m]))])
        w.pump()
        lis.run([], t + 19)
        w.step(20)
        t += 20
    lis.run([], t + 200)
    got = lis.audio()
    assert len(got) == len(frames) and [g[0] for g in got] == list(range(len(frames)))
    assert snr_db([(frames[k], got[k][1]) for k in range(len(frames))]) > 16.2
    assert all(e[0] != "voice" for e in bob.events) and seen[0][1] == 96 and seen[0][0] >= 96


def test_on_voice_reads_only_the_first_n_bytes():
    pkt = bytearray(rtp.encode(rtp.RtpHeader(5, 9, 0, 0x55), bytes(84)))
    pb = PlaybackPath()
    # Padding: the count is the packet's last byte, at n - 1, whatever follows in the buffer.
    padded = bytearray(pkt) + b"\x00\x00\x00\x04" + b"\xff" * 20
    padded[0] |= 0x20
    assert pb.on_voice(0, padded, len(pkt) + 4)
    assert pb.jitter.counters["received"] == 1
    assert not pb.on_voice(0, padded, 11) and pb.counters["bad_rtp"] == 1
    raises(ValueError, pb.on_voice, 0, pkt, len(pkt) + 1)
    assert pb.on_voice(0, pkt + b"junk", -1) is False  # the whole buffer: 4 bytes too many for DVI4
    assert pb.jitter.counters["bad_payload"] == 1


# --- no allocation per frame ------------------------------------------------------------------------


def test_no_allocation_per_frame_in_the_capture_path():
    if not IS_MICROPYTHON:
        raise SkipTest("heap locking is a MicroPython facility; the accessory's path is measured there")
    frames = speech(frames=100)
    cap = CapturePath(0x1234, 0, 0)
    cap.start_burst(0)
    cap.frame(frames[0])
    n = 500
    i = 0
    micropython.heap_lock()
    try:
        while i < n:
            cap.frame(frames[i % 100])
            i += 1
    finally:
        micropython.heap_unlock()
    assert cap.frames == n + 1 and cap.seq == n + 1


def test_no_allocation_per_frame_in_the_playback_path():
    if not IS_MICROPYTHON:
        raise SkipTest("heap locking is a MicroPython facility; the accessory's path is measured there")
    frames = speech(frames=100)
    pkts = capture_all(frames * 3, 0xAB, 65400, 0)  # the sequence wraps
    pkts2 = capture_all(frames * 3, 0xCD, 100, 0)
    rng = Rng(9)
    n = 500
    # the schedule, made before the heap is locked: two talkers, loss, reordering, duplicates
    order = []
    for i in range(n):
        order.append(pkts[i][1] if i < 250 else pkts2[i - 250][1])
    for i in range(5, n - 1, 13):
        order[i], order[i + 1] = order[i + 1], order[i]
    skip = [rng.below(100) < 3 for _ in range(n)]
    pb = PlaybackPath()
    out = bytearray(FRAME)
    kinds = [0, 0, 0]
    i = 0
    t = 0
    micropython.heap_lock()
    try:
        while i < n:
            if not skip[i]:
                pb.on_voice(t, order[i])
            if i % 41 == 0:
                pb.on_voice(t, order[i])
            if i % 100 == 10:
                pb.tones.start("talk_permit")
            k = pb.next_frame(t + 3, out)
            if k == AUDIO:
                kinds[0] += 1
            elif k == CONCEALED:
                kinds[1] += 1
            else:
                kinds[2] += 1
            t += 20
            i += 1
    finally:
        micropython.heap_unlock()
    c = pb.jitter.counters
    assert kinds[0] > 400 and kinds[1] > 0, (kinds, c)
    assert c["talker_changes"] == 1 and pb.counters["accepted"] > 450
