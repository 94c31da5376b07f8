"""Adaptive jitter buffer for 20 ms DVI4 frames (RTP payload type 5), sans-I/O.

    jb = JitterBuffer(start_ms=40, min_ms=20, max_ms=200)
    jb.push(now_ms, seq, ts, ssrc, payload, start=0, end=-1, marker=False) -> bool   # a frame arrived
    jb.pop(now_ms, out) -> "audio" | "concealed" | "silence"          # every 20 ms: 320 bytes of PCM
    jb.end()                        # the talker has stopped: play what is held, then silence
    jb.skip_late(ms)                # the speaker fell ms behind: drop what the gap stood for
    jb.reset()
    jb.state ("idle" | "buffering" | "playing"), jb.target_ms, jb.jitter_ms, jb.depth, jb.depth_ms,
    jb.wait_ms, jb.played_seq, jb.counters

Time is **integer milliseconds** (``time.ticks_ms()`` on a device; any monotonic count will do):
on MicroPython a float result is a heap object, and the playback task must not allocate. Time
and RTP timestamp differences are taken modulo 2^30, so a clock that wraps there (ESP32's
``ticks_ms``) is fine. ``ssrc`` is any int that names the stream (PlaybackPath passes a small
stream number: a 32-bit SSRC is a heap object on a 32-bit port). ``payload[start:end]`` is one DVI4
payload of 84 bytes; it is copied into one of 16 preallocated slots, so nothing is allocated per
frame. ``out`` takes 160 samples of s16le PCM (320 bytes, or more; the rest is left alone).

How it works (docs/accessory-audio.md has the whole story):

- **Pull model.** The speaker's clock calls ``pop`` every 20 ms and it plays the next sequence
  number; arrival times only steer how many frames are held. Sender and speaker clocks may drift
  apart: the buffer absorbs it as it absorbs jitter.
- **Jitter** is RFC 3550's interarrival estimator (A.8, integer form, gain 1/16) over the
  transit time ``arrival - timestamp``. The **target** is ``20 ms + k * J`` (k = 4), kept within
  ``min_ms..max_ms`` and not below the underrun floor; it starts at ``start_ms`` (J starts where
  the formula gives that). J and the floor are kept from stream to stream (the same path).
- **Start**: a stream's first frame waits for the **jitter allowance** (the target less one
  frame), or until the frames held cover it, then plays: with a one-frame target, at the first
  pop after it came.
- **Grows at once, shrinks slowly**: an underrun raises the floor under the target to the target
  plus how late the frame came (a frame at most), so the next burst starts that much deeper; the
  floor falls 1 ms per 2 frames heard. A **new talker** (another ``ssrc``) flushes the old
  one's frames at once and starts buffering its own: no waiting for the old talker's audio to drain
  nor for a marker bit, so a late entrant's first packet starts the stream.
- **The playout point holds for a burst.** Once a stream plays, one frame is played per pop
  whatever the measured jitter does: a frame is never inserted or dropped in the middle of speech
  because J moved (a busy sender's scheduler, the speaker tick's phase), since each such change
  shifts the rest of the burst by 20 ms. A new target takes effect at the **next burst's start**
  (good practice per WebRTC NetEq, RFC 3550 and ITU-T G.1020: adapt at talk-spurt boundaries,
  or mid-spurt only with time-scale modification, which DVI4 here has not). Mid-burst the point
  moves only when it must: a packet **later than the buffer holds** (counted ``late``) while the
  smoothed depth (frames held at each pop, gain 1/8) is below the target inserts one frame, at
  once (silence when quiet, else a concealment frame next to the one that stood in for the late
  packet); an **underrun** waits for the late frame (below); and a buffer **more than two
  frames deeper than the target** (after an underrun, or a burst that began deep) drops quiet
  frames (DVI4 step index <= 24, reached only between words) until it is not. At most one change
  every 160 ms.
- **Underrun** (nothing left to play): the sequence number waits, so a late frame still plays;
  each such pop adds 20 ms to the delay (and raises the floor, above), given back at quiet
  moments if the buffer is then more
  than two frames deeper than the target, else at the next burst's start. If what then
  arrives is a later frame (those waited for were lost, not late), the lost frames the waiting
  pops stood in for are skipped, so a loss does not add delay. A stream with nothing to play for
  ``max_ms`` has ended (a talk burst's end): the next packet starts buffering anew.
- **End of a stream.** A burst's end looks like a loss to the buffer alone, which would follow its
  last frame with the fading repeats (60 ms of stutter after a word cut off). So the floor tells
  it: ``end()`` (the app calls it when the talker stops: Floor Idle, the floor taken by another,
  T103) lets the frames held play, then gives silence and ends the stream at once, never a
  concealment past the last frame; a stream still buffering (a burst shorter than the target)
  starts playing at once. Frames of the ended burst still on their way play in their turn; a
  packet with the RTP marker (the same talker's next burst) carries the stream on as before.
- **Loss** (the next frame missing while later ones are here): concealed, and its number passes.
  **Concealment** repeats the last frame played, 6 dB quieter for each frame in a row (−6, −12, −18 dB),
  then gives silence; a new talker's stream never conceals with the previous talker's voice.
- **Late** packets (their number has already been played or concealed), **duplicates**, bad
  payloads and packets from the talker just replaced (while the new one speaks) are counted and
  dropped. A packet more than 16 frames ahead drops the oldest frames to make room (``overflow``); a
  jump of 500 frames (10 s) or more either way is a new stream (``resync``). Sequence numbers wrap at 2^16.
"""

from array import array

from opmob.compat import const, micropython, ptr8
from opmob.dvi4 import FRAME_PAYLOAD, FRAME_SAMPLES, MAX_INDEX, Dvi4Decoder
from opmob.ticks import tadd, tdiff  # noqa: F401  (re-exported: audio paths import them from here)

FRAME_MS = const(20)
FRAME_TS = const(160)  # RTP timestamp units per frame (8 kHz)
TS_PER_MS = const(8)
SLOTS = const(16)  # a power of two, more than max_ms / 20 plus room for reordering
_SLOT_MASK = const(15)
PCM_BYTES = const(320)
QUIET_INDEX = const(24)  # DVI4 step index at or below which a frame is quiet (about -45 dBFS)
RESYNC_FRAMES = const(500)  # a sequence jump this large (10 s) starts a new stream
_MAX_D = const(8000)  # transit differences are clipped at 1 s: one outlier must not ruin J
K_JITTER = const(4)
SETTLE_POPS = const(8)  # after a frame is dropped or inserted, the next change waits 160 ms
SKIP_POPS = const(50)  # skip_late's frames go at quiet moments within a second, or not at all
FLOOR_DECAY_FRAMES = const(2)  # an underrun's floor under the target falls 1 ms per 2 frames heard

_T_MASK = const(0x3FFFFFFF)  # times and timestamps modulo 2^30
_T_HALF = const(0x20000000)
_ARRIVAL_MASK = const(0x7FFFFFF)  # arrival ms modulo 2^27, so that ms * 8 stays below 2^30

IDLE = "idle"
BUFFERING = "buffering"
PLAYING = "playing"
AUDIO = "audio"
CONCEALED = "concealed"
SILENCE = "silence"

COUNTERS = (
    "received",  # frames accepted into the buffer
    "played",  # frames decoded and played
    "concealed",  # pops answered with an attenuated repeat
    "silence",  # pops answered with silence (idle, buffering, stretch, concealment exhausted)
    "lost",  # frames missing at their turn while later ones were here
    "underruns",  # stalls (nothing at all to play) ended by the late frame itself
    "late",  # arrived after their turn
    "duplicate",
    "bad_payload",  # not an 84-byte DVI4 payload with a valid step index
    "overflow",  # held frames dropped to make room for one too far ahead
    "resync",  # sequence jumps that started a new stream
    "talker_changes",
    "flushed",  # frames of a replaced talker (or a resync) dropped unplayed
    "stale_talker",  # packets of the talker just replaced, dropped
    "stretched",  # frames inserted to deepen the buffer (silence when quiet, else a concealment)
    "shrunk",  # frames dropped to make the buffer shallower
    "streams",  # streams started (first packet, new talker, after an end or a resync)
    "ended",  # streams ended by end() (the floor said the talker stopped) once drained
    "skipped",  # frames dropped because the speaker fell behind (skip_late)
)


def sdiff(a, b):
    """a - b for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


@micropython.viper
def _copy(dst, doff: int, src, soff: int, n: int):
    d = ptr8(dst)
    s = ptr8(src)
    i = 0
    while i < n:
        d[doff + i] = s[soff + i]
        i += 1


@micropython.viper
def _zero(buf, n: int):
    d = ptr8(buf)
    i = 0
    while i < n:
        d[i] = 0
        i += 1


@micropython.viper
def _attenuate(dst, src, nsamples: int, shift: int):
    # dst = src / 2^shift for s16le samples (the magnitude is shifted, never a negative value)
    d = ptr8(dst)
    s = ptr8(src)
    p = 0
    end = nsamples * 2
    while p < end:
        v = s[p] | (s[p + 1] << 8)
        if v >= 32768:
            v = 0 - ((65536 - v) >> shift)
        else:
            v = v >> shift
        d[p] = v & 0xFF
        d[p + 1] = (v >> 8) & 0xFF
        p += 2


class JitterBuffer:
    """See the module docstring. ``conceal_frames``: attenuated repeats before silence."""

    def __init__(self, start_ms=40, min_ms=20, max_ms=200, conceal_frames=3):
        for name, v in (("start_ms", start_ms), ("min_ms", min_ms), ("max_ms", max_ms)):
            if not isinstance(v, int):
                raise ValueError("%s must be an integer number of milliseconds" % name)
        if not FRAME_MS <= min_ms <= start_ms <= max_ms <= (SLOTS - 2) * FRAME_MS:
            raise ValueError("need 20 <= min_ms <= start_ms <= max_ms <= %d" % ((SLOTS - 2) * FRAME_MS))
        if not isinstance(conceal_frames, int) or not 0 <= conceal_frames <= 8:
            raise ValueError("conceal_frames must be 0..8")
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.start_ms = start_ms
        self.conceal_frames = conceal_frames
        self._buf = [bytearray(FRAME_PAYLOAD) for _ in range(SLOTS)]
        self._sq = array("i", [-1] * SLOTS)  # sequence number held by each slot, -1: empty
        self._arr = array("i", [0] * SLOTS)  # its arrival time (ms modulo 2^30)
        self._last = bytearray(PCM_BYTES)  # the last frame played, for concealment
        self._dec = Dvi4Decoder()
        c = {}
        for k in COUNTERS:
            c[k] = 0
        self.counters = c
        self.reset()

    def reset(self):
        """Forget every stream and the jitter estimate (counters are kept)."""
        for i in range(SLOTS):
            self._sq[i] = -1
        self.state = IDLE
        self._ssrc = None
        self._prev_ssrc = None
        self._next = 0  # the sequence number to play next
        self._high = 0  # the highest sequence number held or played in this stream
        self._first_rx = 0
        self._last_rx = 0
        self._transit = 0
        self._have_transit = False
        # RFC 3550's J times 16, in timestamp units, started where the target is start_ms.
        self._j16 = ((self.start_ms - FRAME_MS) * TS_PER_MS * 16) // K_JITTER
        self._target_ms = self.start_ms
        self._floor_ms = 0  # what underruns asked for: raised at once, given back slowly
        self._floor_n = 0
        self._avg16 = 0  # smoothed depth in frames, times 16
        self._wait16 = 0  # smoothed time a played frame waited here, ms times 16
        self._stall = 0
        self._stall_at = 0
        self._behind = 0  # frames the speaker fell behind by, to drop as they come (skip_late)
        self._behind_pops = 0
        self._settle = 0  # pops left before the depth may be changed again
        self._grow = False  # a late packet asked for one frame more
        self._conceal_n = 0
        self._have_last = False
        self._ended = False  # the talker has stopped (end()): no concealment past what is held
        self.played_seq = None  # sequence number of the last frame played

    # --- read-only views ------------------------------------------------------------------------

    @property
    def target_ms(self):
        return self._target_ms

    @property
    def jitter_ms(self):
        """RFC 3550 interarrival jitter, in milliseconds."""
        return self._j16 / (16 * TS_PER_MS)

    @property
    def depth(self):
        """Frames from the next to play up to the newest held (lost ones included)."""
        if self.state == IDLE:
            return 0
        d = sdiff(self._high, self._next)
        return d + 1 if d >= 0 else 0

    @property
    def depth_ms(self):
        """The smoothed depth while playing, in milliseconds."""
        return self._avg16 * FRAME_MS // 16

    @property
    def wait_ms(self):
        """Smoothed time a played frame spent in the buffer, in milliseconds."""
        return self._wait16 // 16

    @property
    def ssrc(self):
        return self._ssrc

    def _target_frames(self):
        return (self._target_ms + FRAME_MS - 1) // FRAME_MS

    # --- arrivals -----------------------------------------------------------------------------------

    def end(self):
        """The talker has stopped (the floor says so): the frames held still play, then silence
        and the stream ends; no concealment past its last frame."""
        if self.state != IDLE:
            self._ended = True

    def skip_late(self, ms):
        """The speaker fell ``ms`` behind (its DMA ran dry: the playback task woke late), so
        every frame from now on plays that much later than the network asked for. As many
        frames go, down to the target's depth, at quiet moments (between words: no speech is
        cut; the packets may also still be in the socket, late like the task), within a
        second; so the delay does not keep the lateness for the rest of the burst."""
        if self.state == PLAYING and ms >= FRAME_MS:
            n = self._behind + ms // FRAME_MS
            m = self.max_ms // FRAME_MS
            self._behind = n if n < m else m
            self._behind_pops = SKIP_POPS

    def _catch_up(self, span):
        # Drop what skip_late asked for, while more than the target's depth is held.
        keep = self._target_frames()
        n = 0
        while (
            self._behind
            and span > keep
            and self._held((self._next + 1) & 0xFFFF)
            and self._held(self._next)
            and self._quiet(self._next)
        ):
            self._advance()
            span -= 1
            n += 1
            self._behind -= 1
        if n:
            self.counters["skipped"] += n
            self._avg16 -= n * 16 if self._avg16 > n * 16 else self._avg16
        else:
            self._behind_pops -= 1
            if self._behind_pops <= 0:
                self._behind = 0  # nothing came to catch up with: the lateness is gone
        return span

    def push(self, now_ms, seq, ts, ssrc, payload, start=0, end=-1, marker=False):
        """One frame from the network (``marker``: the RTP marker bit, a talk burst's first
        packet). False when it was dropped (see ``counters``)."""
        c = self.counters
        if end < 0:
            end = len(payload)
        if end - start != FRAME_PAYLOAD or payload[start + 2] > MAX_INDEX:
            c["bad_payload"] += 1
            return False
        seq &= 0xFFFF
        if ssrc != self._ssrc:
            if ssrc == self._prev_ssrc and self.state != IDLE and tdiff(now_ms, self._last_rx) < self.max_ms:
                # The previous talker's last packets, still in flight after the new talker began.
                c["stale_talker"] += 1
                return False
            if self._ssrc is not None:
                c["talker_changes"] += 1
            self._prev_ssrc = self._ssrc
            self._ssrc = ssrc
            self._have_last = False
            self._restart(now_ms, seq)
        elif self.state == IDLE:
            d = sdiff(seq, self._next)
            if -RESYNC_FRAMES < d < 0:
                c["late"] += 1
                return False
            self._restart(now_ms, seq)
        else:
            d = sdiff(seq, self._next)
            if d < 0:
                if d > -RESYNC_FRAMES:
                    c["late"] += 1
                    if self.state == PLAYING and self._avg16 < self._target_frames() * 16:
                        # Really late, beyond what the buffer holds, and the measured jitter asks
                        # for more: the one reason to deepen it in the middle of a burst.
                        self._grow = True
                    return False
                c["resync"] += 1
                self._restart(now_ms, seq)
            elif d >= SLOTS:
                if d >= RESYNC_FRAMES:
                    c["resync"] += 1
                    self._restart(now_ms, seq)
                else:
                    self._make_room(seq)
            elif self._sq[seq & _SLOT_MASK] == seq:
                c["duplicate"] += 1
                return False
        if marker:
            self._ended = False  # the same talker's next burst: the stream carries on
        slot = seq & _SLOT_MASK
        _copy(self._buf[slot], 0, payload, start, FRAME_PAYLOAD)
        self._sq[slot] = seq
        self._arr[slot] = now_ms & _T_MASK
        if sdiff(seq, self._high) > 0:
            self._high = seq
        self._estimate(now_ms, ts)
        self._last_rx = now_ms
        c["received"] += 1
        return True

    def _restart(self, now_ms, seq):
        """A new stream begins with ``seq``: drop what is held, buffer again."""
        sq = self._sq
        n = 0
        i = 0
        while i < SLOTS:
            if sq[i] >= 0:
                sq[i] = -1
                n += 1
            i += 1
        self.counters["flushed"] += n
        self.counters["streams"] += 1
        self._next = seq
        self._high = seq
        self.state = BUFFERING
        self._first_rx = now_ms
        self._have_transit = False
        self._stall = 0
        self._behind = 0
        self._conceal_n = 0
        self._settle = 0
        self._grow = False
        self._ended = False

    def _make_room(self, seq):
        # ``seq`` is SLOTS or more frames ahead: the oldest frames go so that it fits.
        new_next = (seq - SLOTS + 1) & 0xFFFF
        sq = self._sq
        i = 0
        while i < SLOTS:
            s = sq[i]
            if s >= 0 and sdiff(s, new_next) < 0:
                sq[i] = -1
                self.counters["overflow"] += 1
            i += 1
        self._next = new_next

    def _estimate(self, now_ms, ts):
        # RFC 3550 A.8: J += (|D| - J) / 16, J kept times 16, in timestamp units.
        transit = ((now_ms & _ARRIVAL_MASK) * TS_PER_MS - ts) & _T_MASK
        if self._have_transit:
            d = tdiff(transit, self._transit)
            if d < 0:
                d = -d
            if d > _MAX_D:
                d = _MAX_D
            self._j16 += d - ((self._j16 + 8) >> 4)
            if self._floor_ms:
                self._floor_n += 1
                if self._floor_n >= FLOOR_DECAY_FRAMES:
                    self._floor_n = 0
                    self._floor_ms -= 1
            self._set_target()
        self._transit = transit
        self._have_transit = True

    def _set_target(self):
        t = FRAME_MS + (K_JITTER * self._j16) // (16 * TS_PER_MS)
        if t < self._floor_ms:
            t = self._floor_ms
        if t < self.min_ms:
            t = self.min_ms
        elif t > self.max_ms:
            t = self.max_ms
        self._target_ms = t

    # --- playout --------------------------------------------------------------------------------------

    def _held(self, seq):
        return self._sq[seq & _SLOT_MASK] == seq

    def _quiet(self, seq):
        if self._buf[seq & _SLOT_MASK][2] > QUIET_INDEX:
            return False
        n = (seq + 1) & 0xFFFF
        return not self._held(n) or self._buf[n & _SLOT_MASK][2] <= QUIET_INDEX

    def _advance(self):
        self._sq[self._next & _SLOT_MASK] = -1
        self._next = (self._next + 1) & 0xFFFF

    def pop(self, now_ms, out):
        """The next 20 ms of audio into ``out``: "audio" (a frame decoded), "concealed" or
        "silence"."""
        if len(out) < PCM_BYTES:
            raise ValueError("jitter pop needs a %d-byte buffer" % PCM_BYTES)
        state = self.state
        if state == IDLE:
            return self._silence(out)
        d = sdiff(self._high, self._next)
        span = d + 1 if d >= 0 else 0
        if state == BUFFERING:
            # The first frame waits for the jitter allowance (the target less the frame itself),
            # or until the frames held cover it: with no jitter measured it plays at the first
            # pop after it came, one frame of buffering.
            margin = self._target_ms - FRAME_MS
            if (span - 1) * FRAME_MS < margin and tdiff(now_ms, self._first_rx) < margin and not self._ended:
                return self._silence(out)
            self.state = PLAYING
            self._avg16 = span * 16
        else:
            self._avg16 += span * 2 - (self._avg16 >> 3)
        if span == 0:
            if self._ended:
                # The talker has stopped and the last frame has played: silence, not a repeat.
                self.state = IDLE
                self._stall = 0
                self._conceal_n = 0
                self.counters["ended"] += 1
                return self._silence(out)
            # Nothing to play: hold the sequence number, so the frame still plays if it is only
            # late. Nothing for max_ms: the talk burst has ended.
            self._stall += 1
            if self._stall == 1:
                self._stall_at = now_ms
            if self._stall * FRAME_MS >= self.max_ms:
                self.state = IDLE
            return self._conceal(out)
        if self._stall:
            stalled = self._stall
            self._stall = 0
            if self._held(self._next):
                # The frame we waited for was only late: that was an underrun. The delay has
                # grown by the wait; the next bursts' allowance grows at once by how late it
                # came after the pop that missed it (a frame at most: one stall of a busy host
                # must not set the delay for minutes), and is given back slowly (_estimate).
                self.counters["underruns"] += 1
                late = tdiff(self._arr[self._next & _SLOT_MASK], self._stall_at)
                f = self._target_ms + (1 if late < 1 else FRAME_MS if late > FRAME_MS else late)
                self._floor_ms = f if f < self.max_ms else self.max_ms
                self._floor_n = 0
                self._set_target()
            else:
                # The frames we waited for are missing and later ones are here: they are lost,
                # and the pops that waited stand in for them, so the delay stays as it was.
                while stalled > 0 and span > 1 and not self._held(self._next):
                    self.counters["lost"] += 1
                    self._advance()
                    span -= 1
                    stalled -= 1
        if self._behind:
            span = self._catch_up(span)
        seq = self._next
        if not self._held(seq):
            self.counters["lost"] += 1
            self._advance()
            return self._conceal(out)
        if self._settle:
            self._settle -= 1
        elif self._grow:
            # A packet came after its turn: one frame more, silence if this moment is quiet,
            # else a concealment frame next to the one that stood in for the late packet.
            self._grow = False
            self.counters["stretched"] += 1
            self._avg16 += 16
            self._settle = SETTLE_POPS
            if self._quiet(seq):
                self._conceal_n = 0
                return self._silence(out)
            return self._conceal(out)
        elif self._avg16 > (self._target_frames() + 2) * 16 and self._quiet(seq):
            if span >= 2 and self._held((seq + 1) & 0xFFFF):
                # More than two frames deeper than the jitter needs (after a stall, or a burst
                # that began deep): a quiet frame goes.
                self.counters["shrunk"] += 1
                self._avg16 -= 16
                self._settle = SETTLE_POPS
                self._advance()
                seq = self._next
        slot = seq & _SLOT_MASK
        self._dec.decode(self._buf[slot], out)
        self.played_seq = seq
        w = tdiff(now_ms, self._arr[slot])
        if w < 0:
            w = 0
        self._wait16 += w - (self._wait16 >> 4)
        _copy(self._last, 0, out, 0, PCM_BYTES)
        self._have_last = True
        self._conceal_n = 0
        self._advance()
        self.counters["played"] += 1
        return AUDIO

    def _conceal(self, out):
        self._conceal_n += 1
        if self._have_last and self._conceal_n <= self.conceal_frames:
            _attenuate(out, self._last, FRAME_SAMPLES, self._conceal_n)
            self.counters["concealed"] += 1
            return CONCEALED
        return self._silence(out)

    def _silence(self, out):
        _zero(out, PCM_BYTES)
        self.counters["silence"] += 1
        return SILENCE
