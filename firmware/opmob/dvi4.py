"""DVI4 voice (IMA ADPCM, RTP payload type 5, RFC 3551 §4.5.1): 8 kHz, 4 bits per sample, sans-I/O.

A payload is a 4-byte state header, then two coded samples per octet::

    predict   int16, big-endian  the predictor value before the first sample of this block,
                                 i.e. the value the previous block ended with
    index     uint8              step-size table index, 0..88
    reserved  uint8              zero from senders, ignored by receivers
    samples   n/2 octets         first sample in the high nibble

The header makes each packet self-contained: the decoder takes its state from the packet, so a
lost or reordered packet costs that packet's audio only and never desynchronises what follows.

Differences from the IMA ADPCM (WAV) blocks, all as RFC 3551 lists them: the header holds the
*predicted* value, not a raw first sample; every coded sample is in the nibbles (an even count);
and the first sample of an octet is in the *high* nibble, where IMA WAV puts it in the low one.
Python's ``audioop.lin2adpcm``/``adpcm2lin`` pack high nibble first too and use the IMA
reference's shift arithmetic, so audioop is this module's bit-exact conformance reference.

PCM is signed 16-bit little-endian (the I2S native format), whatever the host's byte order.

Every entry point can write into a caller's buffer (``out=``) so the accessory's per-frame path
allocates nothing; without ``out`` a new ``bytearray`` is returned. A buffer given as ``out`` is
returned as is, possibly longer than what was written: the written length is
``payload_len(samples)`` for the encoder and ``2 * samples`` bytes for the decoder.
"""

from array import array

from opmob.compat import const, micropython, ptr8, ptr16
from opmob.errors import BadValue, Oversized, Truncated

PAYLOAD_TYPE = const(5)
CLOCK_RATE = const(8000)
HEADER_LEN = const(4)
FRAME_SAMPLES = const(160)  # 20 ms
FRAME_PAYLOAD = const(84)  # HEADER_LEN + FRAME_SAMPLES // 2
# 120 ms: six of our frames, and more than any packet time a peer would use for PTT voice (RFC 3551
# makes 20 ms the DVI4 default). A bound keeps caller-sized buffers small on the accessory and
# makes a longer payload a typed error, not a large allocation.
MAX_SAMPLES = const(960)
MAX_INDEX = const(88)

# IMA ADPCM step sizes (IMA Recommended Practices v3.0; audioop's table, checked entry by entry).
STEP_SIZES = array(
    "H",
    (
        7, 8, 9, 10, 11, 12, 13, 14, 16, 17,
        19, 21, 23, 25, 28, 31, 34, 37, 41, 45,
        50, 55, 60, 66, 73, 80, 88, 97, 107, 118,
        130, 143, 157, 173, 190, 209, 230, 253, 279, 307,
        337, 371, 408, 449, 494, 544, 598, 658, 724, 796,
        876, 963, 1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066,
        2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871, 5358,
        5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899,
        15289, 16818, 18500, 20350, 22385, 24623, 27086, 29794, 32767,
    ),
)  # fmt: skip

# IMA ADPCM index adjustment by code magnitude (the sign bit does not matter).
INDEX_ADJUST = array("b", (-1, -1, -1, -1, 2, 4, 6, 8))

# The same, plus one: viper's ptr8 loads are unsigned, so the viper loops subtract the bias.
_INDEX_ADJ_BIASED = bytes([a + 1 for a in INDEX_ADJUST])


def payload_len(samples):
    """Payload bytes (header included) for ``samples`` coded samples."""
    return HEADER_LEN + (samples >> 1)


def check_state(predicted, index):
    """Raise ValueError unless (predicted, index) is a valid codec state."""
    if not -32768 <= predicted <= 32767:
        raise ValueError("DVI4 predicted value %d outside int16" % predicted)
    if not 0 <= index <= MAX_INDEX:
        raise ValueError("DVI4 step index %d outside 0..88" % index)


def parse_header(payload):
    """(predicted, index) from a payload's header; BadValue for an index the table lacks.

    The reserved octet is not checked: RFC 3551 has receivers ignore it.
    """
    if len(payload) < HEADER_LEN:
        raise Truncated("DVI4 payload shorter than its 4-byte header")
    index = payload[2]
    if index > MAX_INDEX:
        raise BadValue("DVI4 step index %d outside 0..88" % index)
    return ((((payload[0] << 8) | payload[1]) ^ 0x8000) - 0x8000), index


# The per-sample loops. On MicroPython they compile to machine code (viper); on CPython the same
# bodies run as plain Python, so they stay within what both agree on: ptr8 loads are unsigned
# (sign-extend by hand), stores are masked to 8 bits, shifts only ever see non-negative values, and
# the 16-bit arithmetic never leaves a machine word. PCM goes through ptr8 one octet at a time,
# not ptr16: little-endian whatever the host, and no unaligned 16-bit load (an exception on the
# ESP32's Xtensa core) when a caller hands in a view at an odd offset. Viper does no bounds checks:
# the Python wrappers have checked every length and the header's step index before calling.
# Both return the state after the block packed as ((predicted & 0xFFFF) << 8) | index, a small int,
# so the call allocates nothing.


@micropython.viper
def _encode_block(pcm, out, n: int) -> int:
    src = ptr8(pcm)
    dst = ptr8(out)
    steps = ptr16(STEP_SIZES)
    adj = ptr8(_INDEX_ADJ_BIASED)
    # The caller has written the header: it is the state at the start of this block.
    valpred = (dst[0] << 8) | dst[1]
    if valpred >= 32768:
        valpred -= 65536
    index = dst[2]
    step = steps[index]
    hi = 0
    i = 0
    p = 0
    o = 4
    while i < n:
        sample = src[p] | (src[p + 1] << 8)
        if sample >= 32768:
            sample -= 65536
        p += 2
        if sample < valpred:
            diff = valpred - sample
            code = 8
        else:
            diff = sample - valpred
            code = 0
        # Successive approximation of diff * 4 / step with the reconstruction built alongside,
        # exactly as the IMA reference (and so the decoder) computes it.
        vpdiff = step >> 3
        if diff >= step:
            code |= 4
            diff -= step
            vpdiff += step
        half = step >> 1
        if diff >= half:
            code |= 2
            diff -= half
            vpdiff += half
        quarter = step >> 2
        if diff >= quarter:
            code |= 1
            vpdiff += quarter
        if code & 8:
            valpred -= vpdiff
            if valpred < -32768:
                valpred = -32768
        else:
            valpred += vpdiff
            if valpred > 32767:
                valpred = 32767
        index += adj[code & 7] - 1
        if index < 0:
            index = 0
        elif index > 88:
            index = 88
        step = steps[index]
        if i & 1:
            dst[o] = hi | code
            o += 1
        else:
            hi = code << 4
        i += 1
    return ((valpred & 0xFFFF) << 8) | index


@micropython.viper
def _decode_block(payload, out, n: int) -> int:
    src = ptr8(payload)
    dst = ptr8(out)
    steps = ptr16(STEP_SIZES)
    adj = ptr8(_INDEX_ADJ_BIASED)
    valpred = (src[0] << 8) | src[1]
    if valpred >= 32768:
        valpred -= 65536
    index = src[2]
    step = steps[index]
    octet = 0
    code = 0
    i = 0
    q = 4
    p = 0
    while i < n:
        if i & 1:
            code = octet & 15
        else:
            octet = src[q]
            q += 1
            code = octet >> 4
        index += adj[code & 7] - 1
        if index < 0:
            index = 0
        elif index > 88:
            index = 88
        vpdiff = step >> 3
        if code & 4:
            vpdiff += step
        if code & 2:
            vpdiff += step >> 1
        if code & 1:
            vpdiff += step >> 2
        if code & 8:
            valpred -= vpdiff
            if valpred < -32768:
                valpred = -32768
        else:
            valpred += vpdiff
            if valpred > 32767:
                valpred = 32767
        step = steps[index]
        dst[p] = valpred & 0xFF
        dst[p + 1] = (valpred >> 8) & 0xFF
        p += 2
        i += 1
    return ((valpred & 0xFFFF) << 8) | index


def _unpack_predicted(state):
    return (((state >> 8) & 0xFFFF) ^ 0x8000) - 0x8000


def _pcm_samples(pcm):
    nbytes = len(pcm)
    # Whole octets of code need an even sample count (RFC 3551): 4 PCM bytes per octet.
    if nbytes & 3 or nbytes == 0:
        raise ValueError("DVI4 needs a non-zero, even number of s16 samples, got %d bytes" % nbytes)
    if nbytes > 2 * MAX_SAMPLES:
        raise ValueError("DVI4 block of %d samples exceeds %d" % (nbytes >> 1, MAX_SAMPLES))
    return nbytes >> 1


# The class methods stay free of tuples and other temporaries on the success path: with caller
# buffers a frame allocates nothing on MicroPython (the accessory's audio path checks this).


def _out(out, need):
    """``out``, checked to hold ``need`` bytes and to be writable, or a new buffer if None."""
    if out is None:
        return bytearray(need)
    if len(out) < need:
        raise ValueError("output buffer holds %d bytes, %d needed" % (len(out), need))
    # A write probe: viper would otherwise scribble over an immutable bytes object.
    out[0] = out[0]
    return out


def _write_header(out, predicted, index):
    out[0] = (predicted >> 8) & 0xFF
    out[1] = predicted & 0xFF
    out[2] = index
    out[3] = 0


def _payload_samples(payload, samples):
    """Coded samples in ``payload`` after checking its length (and the step index) against
    ``samples`` (None: any even count up to MAX_SAMPLES)."""
    nbytes = len(payload)
    if samples is None:
        if nbytes <= HEADER_LEN:
            raise Truncated("DVI4 payload of %d bytes holds no samples" % nbytes)
        if nbytes > HEADER_LEN + (MAX_SAMPLES >> 1):
            raise Oversized("DVI4 payload of %d bytes exceeds %d samples" % (nbytes, MAX_SAMPLES))
    else:
        need = HEADER_LEN + (samples >> 1)
        if nbytes < need:
            raise Truncated("DVI4 payload of %d bytes, %d expected" % (nbytes, need))
        if nbytes > need:
            raise Oversized("DVI4 payload of %d bytes, %d expected" % (nbytes, need))
    if payload[2] > MAX_INDEX:
        raise BadValue("DVI4 step index %d outside 0..88" % payload[2])
    return (nbytes - HEADER_LEN) << 1


class Dvi4Encoder:
    """PCM to DVI4 payloads, the codec state carried from each block into the next.

    ``predicted`` and ``index`` are the state the next payload's header will carry.
    """

    def __init__(self, predicted=0, index=0):
        self.reset(predicted, index)

    def reset(self, predicted=0, index=0):
        check_state(predicted, index)
        self.predicted = predicted
        self.index = index

    def encode(self, pcm, out=None):
        """One payload from ``pcm`` (s16le, an even number of samples, at most MAX_SAMPLES;
        FRAME_SAMPLES for 20 ms). ``out``: a writable byte buffer of at least
        ``payload_len(samples)`` bytes, not overlapping ``pcm``."""
        n = _pcm_samples(pcm)
        out = _out(out, HEADER_LEN + (n >> 1))
        _write_header(out, self.predicted, self.index)
        state = _encode_block(pcm, out, n)
        self.predicted = _unpack_predicted(state)
        self.index = state & 0xFF
        return out


class Dvi4Decoder:
    """DVI4 payloads to PCM (s16le). The state comes from each payload's header, not from the
    previous payload, so loss and reordering never desynchronise the decoder.

    ``samples``: the coded samples a payload must hold (FRAME_SAMPLES by default; a shorter payload
    raises Truncated, a longer one Oversized); None accepts any even count up to MAX_SAMPLES.

    Counters for a driver: ``frames`` decoded; ``resyncs``, payloads whose header state differs
    from where the previous payload left off (a gap, reordering or an encoder reset upstream);
    ``reserved_nonzero``, payloads whose reserved octet was not zero (ignored, as RFC 3551 says).
    ``predicted`` and ``index`` are the state after the last payload decoded.
    """

    def __init__(self, samples=FRAME_SAMPLES):
        if samples is not None and (samples < 2 or samples & 1 or samples > MAX_SAMPLES):
            raise ValueError("DVI4 block size %d not an even count in 2..%d" % (samples, MAX_SAMPLES))
        self.samples = samples
        self.predicted = 0
        self.index = 0
        self.frames = 0
        self.resyncs = 0
        self.reserved_nonzero = 0

    def decode(self, payload, out=None):
        """PCM for one payload; raises Truncated, Oversized or BadValue for a bad one (and then
        leaves the decoder untouched). ``out``: a writable byte buffer of at least
        ``2 * samples`` bytes, not overlapping ``payload``."""
        n = _payload_samples(payload, self.samples)
        out = _out(out, n << 1)
        state = _decode_block(payload, out, n)
        if self.frames and (
            payload[2] != self.index or ((payload[0] << 8) | payload[1]) != (self.predicted & 0xFFFF)
        ):
            self.resyncs += 1
        if payload[3]:
            self.reserved_nonzero += 1
        self.frames += 1
        self.predicted = _unpack_predicted(state)
        self.index = state & 0xFF
        return out


def encode_frame(pcm, state=None, out=None):
    """One payload from ``pcm`` starting at ``state`` = (predicted, index), None for (0, 0).

    Returns (payload, state after it), like ``audioop.lin2adpcm``.
    """
    if state is None:
        predicted, index = 0, 0
    else:
        predicted, index = state
        check_state(predicted, index)
    n = _pcm_samples(pcm)
    out = _out(out, HEADER_LEN + (n >> 1))
    _write_header(out, predicted, index)
    end = _encode_block(pcm, out, n)
    return out, (_unpack_predicted(end), end & 0xFF)


def decode_frame(payload, out=None):
    """PCM (s16le) for one payload of any even sample count up to MAX_SAMPLES; the state comes
    from its header. Raises Truncated, Oversized or BadValue for a bad payload."""
    n = _payload_samples(payload, None)
    out = _out(out, n << 1)
    _decode_block(payload, out, n)
    return out
