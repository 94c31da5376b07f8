"""Alert tones made on the accessory: 8 kHz signed 16-bit little-endian, one 20 ms frame at a time.

    tp = TonePlayer(level=8192)
    tp.start("talk_permit")         # replaces whatever tone was playing
    tp.fill(out)  -> bool           # the next frame of tone into ``out`` (zeros once it has ended)
    tp.mix(out, duck=1) -> bool     # the next frame of tone added to the voice already in ``out``
    tp.stop()   tp.active   tp.name   tp.remaining_samples

``out`` is a caller's writable buffer (bytearray, or a memoryview of one); a frame is
``len(out) // 2`` samples, normally 160 (20 ms). Nothing is allocated per frame: the tone is made
by a phase-accumulator oscillator over a 256-entry sine table, in viper on MicroPython. ``mix``
first attenuates the voice by ``duck`` halvings (6 dB each) and then adds the tone with saturation,
so a tone is heard over a call without cutting it; the voice stays ducked through the pauses of a
cadence and returns to its level when the tone ends.

The tones (TONES below; frequencies in Hz, times in ms; "+" is a dual tone, each half the level):

| name | what | cadence | total |
| --- | --- | --- | --- |
| talk_permit | the floor is ours: talk now | 1000, 100 on | 100 |
| deny | floor denied, busy | 480+620, 3 x (100 on, 100 off) | 600 |
| queued | request queued | 660 80, 40 off, 880 80 | 200 |
| emergency | our emergency call is on | 4 x (1200 150, 800 150) | 1200 |
| lost_link | the relay does not answer | 880 100, 30 off, 660 100, 30 off, 440 100 | 360 |
| revoked | the floor was taken from us | 425, 500 on | 500 |
| emergency_cancel | our emergency is cancelled | 800 150, 30 off, 1200 150 | 330 |

Each tone segment rises and falls over 4 ms (a linear ramp) so that no tone starts or stops
with a click. The default level, 8192, is 12 dB below full scale.
"""

from array import array
from math import pi, sin

from opmob.compat import const, micropython, ptr8, ptr16, ptr32

RATE = const(8000)
FRAME_SAMPLES = const(160)
TABLE_BITS = const(8)
PHASE_BITS = const(24)  # phase accumulator width: small ints on every port, 0.0005 Hz steps
_PHASE_MASK = const(0xFFFFFF)
_INDEX_SHIFT = const(16)  # PHASE_BITS - TABLE_BITS
RAMP = const(32)  # samples (4 ms) of linear rise and fall at each segment's ends
_RAMP_SHIFT = const(5)
DEFAULT_LEVEL = const(8192)

# One full sine period, 256 samples of int16. The table's spurs are about 48 dB below the tone.
SINE = array("h", [int(round(32767 * sin(2 * pi * i / 256))) for i in range(256)])

# (name, ((f1, f2, ms), ...)): f2 = 0 for a single tone, f1 = f2 = 0 for a pause.
TONES = {
    "talk_permit": ((1000, 0, 100),),
    "deny": ((480, 620, 100), (0, 0, 100), (480, 620, 100), (0, 0, 100), (480, 620, 100), (0, 0, 100)),
    "queued": ((660, 0, 80), (0, 0, 40), (880, 0, 80)),
    "emergency": (
        (1200, 0, 150),
        (800, 0, 150),
        (1200, 0, 150),
        (800, 0, 150),
        (1200, 0, 150),
        (800, 0, 150),
        (1200, 0, 150),
        (800, 0, 150),
    ),
    "lost_link": ((880, 0, 100), (0, 0, 30), (660, 0, 100), (0, 0, 30), (440, 0, 100)),
    "revoked": ((425, 0, 500),),
    "emergency_cancel": ((800, 0, 150), (0, 0, 30), (1200, 0, 150)),
}

# Oscillator state, one array('i') per player (viper reads it through ptr32):
_PH1 = const(0)  # phase of the first tone
_PH2 = const(1)  # phase of the second tone
_INC1 = const(2)  # phase increments per sample (0: that tone is off)
_INC2 = const(3)
_AMP = const(4)  # amplitude of each tone, 0..32767
_POS = const(5)  # sample position in the current segment
_LEN = const(6)  # samples in the current segment
_STATE_LEN = const(7)


def phase_increment(freq):
    """The phase step per sample for ``freq`` Hz (rounded to the nearest step)."""
    if not 0 <= freq < RATE // 2:
        raise ValueError("tone frequency %r outside 0..%d Hz" % (freq, RATE // 2 - 1))
    return (freq * (1 << PHASE_BITS) + RATE // 2) // RATE


def _compile(segments):
    """A tone's segments as a flat array('i') of (inc1, inc2, samples) triples."""
    flat = []
    for f1, f2, ms in segments:
        if ms <= 0:
            raise ValueError("tone segment of %r ms" % ms)
        flat.append(phase_increment(f1))
        flat.append(phase_increment(f2))
        flat.append(ms * RATE // 1000)
    return array("i", flat)


_COMPILED = {}
for _name in TONES:
    _COMPILED[_name] = _compile(TONES[_name])
del _name


def tone_samples(name):
    """Length of a tone in samples."""
    seg = _COMPILED[name]
    n = 0
    for i in range(2, len(seg), 3):
        n += seg[i]
    return n


# The sample loop. ``mode`` 0 writes the tone; mode 1 adds it to the s16le voice already in
# ``out`` after halving that voice ``duck`` times. Writes ``count`` samples from sample ``off``.
# Like dvi4's loops it stays in what viper and CPython agree on: ptr8/ptr16 loads are unsigned
# (sign-extended by hand), no shift ever sees a negative value, PCM goes byte by byte.
@micropython.viper
def _osc(out, off: int, count: int, st, table, mode: int, duck: int):
    dst = ptr8(out)
    s = ptr32(st)
    tab = ptr16(table)
    ph1 = s[0]
    ph2 = s[1]
    inc1 = s[2]
    inc2 = s[3]
    amp = s[4]
    pos = s[5]
    seglen = s[6]
    p = off * 2
    i = 0
    while i < count:
        v1 = tab[ph1 >> 16]
        if v1 >= 32768:
            v1 -= 65536
        v2 = 0
        if inc2 != 0:
            v2 = tab[ph2 >> 16]
            if v2 >= 32768:
                v2 -= 65536
        v = v1 + v2  # -65534..65534
        neg = 0
        if v < 0:
            v = 0 - v
            neg = 1
        v = (v * amp) >> 15
        # envelope: rise over the first RAMP samples, fall over the last RAMP
        env = pos + 1
        rest = seglen - pos
        if rest < env:
            env = rest
        if env < 32:
            v = (v * env) >> 5
        if neg:
            v = 0 - v
        if mode != 0:
            w = dst[p] | (dst[p + 1] << 8)
            if w >= 32768:
                w = 65536 - w
                w = 0 - (w >> duck)
            else:
                w = w >> duck
            v = v + w
            if v > 32767:
                v = 32767
            elif v < -32768:
                v = -32768
        dst[p] = v & 0xFF
        dst[p + 1] = (v >> 8) & 0xFF
        p += 2
        ph1 = (ph1 + inc1) & 0xFFFFFF
        ph2 = (ph2 + inc2) & 0xFFFFFF
        pos += 1
        i += 1
    s[0] = ph1
    s[1] = ph2
    s[5] = pos


@micropython.viper
def _zero(out, off: int, count: int):
    dst = ptr8(out)
    p = off * 2
    end = p + count * 2
    while p < end:
        dst[p] = 0
        p += 1


class TonePlayer:
    """Plays one tone at a time into 20 ms frames (see the module docstring)."""

    def __init__(self, level=DEFAULT_LEVEL):
        if not isinstance(level, int) or not 0 <= level <= 32767:
            raise ValueError("tone level must be 0..32767")
        self.level = level
        self._st = array("i", [0] * _STATE_LEN)
        self._seg = None
        self._seg_i = 0
        self.name = None
        self.remaining_samples = 0

    @property
    def active(self):
        return self._seg is not None

    def start(self, name):
        """Start tone ``name`` from its beginning, replacing the one playing (if any)."""
        seg = _COMPILED.get(name)
        if seg is None:
            raise ValueError("no tone %r" % (name,))
        self._seg = seg
        self.name = name
        self.remaining_samples = tone_samples(name)
        self._enter(0)

    def stop(self):
        self._seg = None
        self.name = None
        self.remaining_samples = 0

    def _enter(self, i):
        seg = self._seg
        st = self._st
        self._seg_i = i
        st[_PH1] = 0
        st[_PH2] = 0
        st[_INC1] = seg[i]
        st[_INC2] = seg[i + 1]
        # Two tones share the level: each gets half, so their sum never clips.
        st[_AMP] = self.level >> 1 if seg[i + 1] else self.level
        st[_POS] = 0
        st[_LEN] = seg[i + 2]

    def fill(self, out):
        """Write the next frame of the tone into ``out`` (s16le); once the tone has ended the
        rest of the frame is zeros. False (and ``out`` all zeros) when no tone was playing."""
        return self._render(out, 0, 0)

    def mix(self, out, duck=1):
        """Add the next frame of the tone to the voice in ``out``, the voice first attenuated by
        ``duck`` halvings. False (and ``out`` untouched) when no tone was playing."""
        return self._render(out, 1, duck)

    def _render(self, out, mode, duck):
        n = len(out) >> 1
        if self._seg is None:
            if mode == 0:
                _zero(out, 0, n)
            return False
        st = self._st
        off = 0
        while off < n:
            seg = self._seg
            if seg is None:
                if mode == 0:
                    _zero(out, off, n - off)
                break
            left = st[_LEN] - st[_POS]
            k = n - off
            if k > left:
                k = left
            if mode == 0 and st[_INC1] == 0 and st[_INC2] == 0:
                _zero(out, off, k)  # a pause
                st[_POS] += k
            else:
                # (mixed, a pause adds nothing but keeps the voice ducked: no pumping in a cadence)
                _osc(out, off, k, st, SINE, mode, duck)
            off += k
            self.remaining_samples -= k
            if st[_POS] >= st[_LEN]:
                i = self._seg_i + 3
                if i >= len(seg):
                    self.stop()
                else:
                    self._enter(i)
        return True
