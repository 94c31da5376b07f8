"""The accessory's voice paths, one 20 ms frame at a time, with no allocation per frame.

Capture (microphone to the network)::

    cap = CapturePath(ssrc=0, seq=rand16, ts=rand32)
    cap.start_burst(now_ms)        # the floor was granted: next frame carries the RTP marker
    pkt = cap.frame(pcm)           # 320 bytes s16le -> a 96-byte RTP packet (DVI4, PT 5)
    n = dev.send_voice_into(now, cap.buf, PACKET_LEN)   # SSRC set, SRTP in place: cap.buf[:n]
    out = dev.send_voice(now, pkt)                      # or: a protected copy, for tests and tools

``frame`` returns a view of the path's own buffer ``cap.buf``, rewritten by the next call: send
it (or copy it) first. ``cap.buf`` has srtp.TAG_LEN bytes of room after the packet, so the
session protects it where it is and the app sends ``cap.buf[:n]`` as it is. Sequence numbers go
up by one per frame and carry on across bursts; the timestamp goes up by 160 per frame and, at a
burst's start, by the time that passed since the previous burst's last frame, as RFC 3550 asks
(a listener's jitter estimate relies on it). The encoder restarts at each burst.

Playback (the network to the speaker)::

    pb = PlaybackPath()                      # a JitterBuffer (one frame to start) and a TonePlayer
    pb.on_voice(now_ms, buf, n)              # the DeviceSession's voice_sink: plain RTP in buf[:n]
    pb.on_voice(now_ms, rtp)                 # or a whole packet (a ("voice", rtp) event)
    kind = pb.next_frame(now_ms, out)        # every 20 ms: 320 bytes for the speaker
    pb.tones.start("talk_permit")            # tones are mixed over the voice (the voice ducked 6 dB)
    pb.select(ssrc)  /  pb.select(None)      # play only this talker (scan lists), or any
    pb.end()                                 # the talker stopped: what is held plays, then silence

``on_voice`` checks the RTP header (version, CSRCs, extension, padding, payload type 5) and hands
the DVI4 payload to the jitter buffer, which copies it into a slot; the packet itself is not kept,
so ``buf`` may be reused as soon as the call returns.
A talker is told apart from another by the SSRC's four bytes, without making an int of them
(a 32-bit int is a heap object on the ESP32). Times are integer milliseconds (see jitter.py).
"""

from opmob.accessory.jitter import JitterBuffer, tdiff
from opmob.accessory.tones import TonePlayer
from opmob.dvi4 import FRAME_PAYLOAD, FRAME_SAMPLES, PAYLOAD_TYPE, Dvi4Encoder
from opmob.srtp import TAG_LEN

RTP_HEADER = 12
PACKET_LEN = RTP_HEADER + FRAME_PAYLOAD  # 96
PCM_BYTES = 2 * FRAME_SAMPLES
FRAME_MS = 20
FRAME_TS = FRAME_SAMPLES
# Playout starts from one frame of buffering: a new path is taken as a quiet LAN until its
# jitter is measured (the jitter buffer grows at once on an underrun, docs/accessory-audio.md).
# The first frame waits at least PLAYOUT_MIN_MS less a frame: the talker's and our own task
# wake-ups wander by a few ms that RFC 3550's J (a mean) does not show, and a frame that misses
# its turn by 1 ms costs the whole burst 20 ms.
PLAYOUT_START_MS = 25
PLAYOUT_MIN_MS = 25


class CapturePath:
    """PCM frames to RTP packets of DVI4 (see the module docstring)."""

    def __init__(self, ssrc=0, seq=0, ts=0):
        self.buf = self._pkt = bytearray(PACKET_LEN + TAG_LEN)
        self._view = memoryview(self._pkt)[:PACKET_LEN]
        self._payload = memoryview(self._pkt)[RTP_HEADER:PACKET_LEN]
        self._pkt[0] = 0x80  # version 2, no padding, extension or CSRC
        self._pkt[1] = PAYLOAD_TYPE
        self._enc = Dvi4Encoder()
        self.set_ssrc(ssrc)
        self._seq = seq & 0xFFFF
        self._ts_hi = (ts >> 16) & 0xFFFF
        self._ts_lo = ts & 0xFFFF
        self._marker = True
        self._burst_ms = None
        self._burst_frames = 0
        self.frames = 0
        self.bursts = 0

    @property
    def seq(self):
        """The sequence number the next frame will carry."""
        return self._seq

    @property
    def ts(self):
        """The timestamp the next frame will carry."""
        return (self._ts_hi << 16) | self._ts_lo

    def set_ssrc(self, ssrc):
        """The SSRC written into the header (DeviceSession.send_voice[_into] writes its own anyway)."""
        if not isinstance(ssrc, int) or not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc must be a 32-bit integer")
        p = self._pkt
        p[8] = (ssrc >> 24) & 0xFF
        p[9] = (ssrc >> 16) & 0xFF
        p[10] = (ssrc >> 8) & 0xFF
        p[11] = ssrc & 0xFF

    def new_stream(self, seq):
        """A new SRTP context (each registration brings its own SSRC and keys): the sequence
        numbers start again from ``seq`` (RFC 3550: a random start per SSRC)."""
        self._seq = seq & 0xFFFF
        self._marker = True

    def _add_ts(self, n):
        lo = self._ts_lo + (n & 0xFFFF)
        self._ts_hi = (self._ts_hi + ((n >> 16) & 0xFFFF) + (lo >> 16)) & 0xFFFF
        self._ts_lo = lo & 0xFFFF

    def start_burst(self, now_ms):
        """A talk burst begins (the floor was granted) at ``now_ms``."""
        if self._burst_ms is not None:
            gap = tdiff(now_ms, self._burst_ms) - self._burst_frames * FRAME_MS
            if gap > 0:
                self._add_ts(gap * (FRAME_TS // FRAME_MS))
        self._burst_ms = now_ms
        self._burst_frames = 0
        self._marker = True
        self._enc.reset()
        self.bursts += 1

    def frame(self, pcm):
        """One 20 ms frame (320 bytes of s16le) to an RTP packet: a view of ``buf[:PACKET_LEN]``,
        valid until the next call."""
        if len(pcm) != PCM_BYTES:
            raise ValueError("capture frame must be %d bytes of s16le PCM" % PCM_BYTES)
        self._enc.encode(pcm, self._payload)
        p = self._pkt
        p[1] = PAYLOAD_TYPE | 0x80 if self._marker else PAYLOAD_TYPE
        self._marker = False
        seq = self._seq
        p[2] = seq >> 8
        p[3] = seq & 0xFF
        hi = self._ts_hi
        lo = self._ts_lo
        p[4] = hi >> 8
        p[5] = hi & 0xFF
        p[6] = lo >> 8
        p[7] = lo & 0xFF
        self._seq = (seq + 1) & 0xFFFF
        lo += FRAME_TS
        if lo > 0xFFFF:
            lo -= 0x10000
            self._ts_hi = (hi + 1) & 0xFFFF
        self._ts_lo = lo
        self._burst_frames += 1
        self.frames += 1
        return self._view


def _same4(buf, off, ref):
    return buf[off] == ref[0] and buf[off + 1] == ref[1] and buf[off + 2] == ref[2] and buf[off + 3] == ref[3]


def _put4(ref, buf, off):
    ref[0] = buf[off]
    ref[1] = buf[off + 1]
    ref[2] = buf[off + 2]
    ref[3] = buf[off + 3]


COUNTERS = ("voice_in", "accepted", "bad_rtp", "wrong_pt", "not_selected")


class PlaybackPath:
    """Plain RTP from the session to speaker frames (see the module docstring).

    ``duck``: halvings (6 dB each) of the voice while a tone plays over it.
    """

    def __init__(self, jitter=None, tones=None, duck=1):
        self.jitter = (
            jitter if jitter is not None else JitterBuffer(start_ms=PLAYOUT_START_MS, min_ms=PLAYOUT_MIN_MS)
        )
        self.tones = tones if tones is not None else TonePlayer()
        if not isinstance(duck, int) or not 0 <= duck <= 15:
            raise ValueError("duck must be 0..15 halvings")
        self.duck = duck
        # The two talkers heard most recently, by SSRC bytes, and the stream number given to each
        # (the jitter buffer tells talkers apart by that number).
        self._cur = bytearray(4)
        self._prev = bytearray(4)
        self._cur_id = 0
        self._prev_id = 0
        self._next_id = 1
        self._sel = bytearray(4)
        self._selected = False
        c = {}
        for k in COUNTERS:
            c[k] = 0
        self.counters = c

    def select(self, ssrc):
        """Play only the talker with this SSRC (the holder of the group that wins in a scan list);
        None plays any talker."""
        if ssrc is None:
            self._selected = False
            return
        if not isinstance(ssrc, int) or not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc must be a 32-bit integer or None")
        s = self._sel
        s[0] = (ssrc >> 24) & 0xFF
        s[1] = (ssrc >> 16) & 0xFF
        s[2] = (ssrc >> 8) & 0xFF
        s[3] = ssrc & 0xFF
        self._selected = True

    @property
    def talker_ssrc(self):
        """The SSRC of the talker heard last, or None."""
        if not self._cur_id:
            return None
        c = self._cur
        return (c[0] << 24) | (c[1] << 16) | (c[2] << 8) | c[3]

    def _stream_id(self, rtp):
        if self._cur_id and _same4(rtp, 8, self._cur):
            return self._cur_id
        if self._prev_id and _same4(rtp, 8, self._prev):
            # Swap: the two most recently heard keep their numbers.
            a = self._cur
            self._cur = self._prev
            self._prev = a
            i = self._cur_id
            self._cur_id = self._prev_id
            self._prev_id = i
            return self._cur_id
        a = self._prev
        self._prev = self._cur
        self._prev_id = self._cur_id
        _put4(a, rtp, 8)
        self._cur = a
        self._cur_id = self._next_id
        self._next_id = (self._next_id % 0x3FFFFFFF) + 1
        return self._cur_id

    def on_voice(self, now_ms, rtp, n=-1):
        """One plain RTP packet heard, ``rtp[:n]`` (all of ``rtp`` when ``n`` is left out). False
        when it was not taken (see ``counters`` and the jitter buffer's)."""
        c = self.counters
        c["voice_in"] += 1
        if n < 0:
            n = len(rtp)
        elif n > len(rtp):
            raise ValueError("on_voice: n is beyond the buffer")
        if n < RTP_HEADER or rtp[0] >> 6 != 2:
            c["bad_rtp"] += 1
            return False
        b0 = rtp[0]
        hlen = RTP_HEADER + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            if n < hlen + 4:
                c["bad_rtp"] += 1
                return False
            hlen += 4 + 4 * ((rtp[hlen + 2] << 8) | rtp[hlen + 3])
        end = n
        if b0 & 0x20:
            pad = rtp[n - 1]
            if pad == 0 or hlen + pad > n:
                c["bad_rtp"] += 1
                return False
            end = n - pad
        if hlen > end:
            c["bad_rtp"] += 1
            return False
        if rtp[1] & 0x7F != PAYLOAD_TYPE:
            c["wrong_pt"] += 1
            return False
        if self._selected and not _same4(rtp, 8, self._sel):
            c["not_selected"] += 1
            return False
        sid = self._stream_id(rtp)
        seq = (rtp[2] << 8) | rtp[3]
        ts = ((rtp[4] & 0x3F) << 24) | (rtp[5] << 16) | (rtp[6] << 8) | rtp[7]
        if self.jitter.push(now_ms, seq, ts, sid, rtp, hlen, end, rtp[1] & 0x80 != 0):
            c["accepted"] += 1
            return True
        return False

    def end(self):
        """The talker has stopped (Floor Idle, the floor taken by another, T103): the stream
        plays out what is held, then silence, never a concealment past its last frame."""
        self.jitter.end()

    def next_frame(self, now_ms, out):
        """The next 20 ms for the speaker into ``out`` (320 bytes): the jitter buffer's frame
        with the current tone mixed in. Returns the jitter buffer's kind of frame."""
        kind = self.jitter.pop(now_ms, out)
        self.tones.mix(out, self.duck)
        return kind
