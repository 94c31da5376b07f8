"""Device tones: frequencies (checked against an ideal sine), cadences, levels, click-free edges,
mixing over voice with ducking and saturation, frame-size independence, and no allocation per
frame (MicroPython), on both runtimes."""

import math

from fwtest import IS_MICROPYTHON, SkipTest, raises
from opmob.accessory import tones
from opmob.accessory.tones import TONES, TonePlayer
from opmob.compat import micropython

LEVEL = tones.DEFAULT_LEVEL


def s16(buf, i):
    v = buf[2 * i] | (buf[2 * i + 1] << 8)
    return v - 65536 if v >= 32768 else v


def render(name, frame_samples=160, level=LEVEL):
    """All samples of a tone, frame by frame; returns (samples, frames that reported a tone)."""
    tp = TonePlayer(level)
    tp.start(name)
    out = bytearray(2 * frame_samples)
    samples = []
    frames = 0
    while tp.fill(out):
        frames += 1
        for i in range(frame_samples):
            samples.append(s16(out, i))
        assert frames < 1000
    return samples, frames


def ideal(name, level=LEVEL):
    """The tone computed from its definition with floating point: per sample the expected value
    (without the edge ramps) and whether it lies within RAMP samples of a segment edge."""
    want = []
    edge = []
    for f1, f2, ms in TONES[name]:
        n = ms * 8
        amp = level // 2 if f2 else level
        for k in range(n):
            v = 0.0
            if f1:
                v += math.sin(2 * math.pi * f1 * k / 8000)
            if f2:
                v += math.sin(2 * math.pi * f2 * k / 8000)
            want.append(amp * v)
            edge.append(k < tones.RAMP or n - k <= tones.RAMP)
    return want, edge


def test_every_tone_lasts_as_defined():
    for name in TONES:
        total = 0
        for f1, f2, ms in TONES[name]:
            total += ms * 8
        assert tones.tone_samples(name) == total
        samples, frames = render(name)
        assert frames == (total + 159) // 160, name
        assert len(samples) == frames * 160
        # the rest of the last frame is silence
        assert samples[total:] == [0] * (len(samples) - total), name


def test_samples_follow_the_ideal_waveform():
    # The table oscillator against floating-point sines: within the 256-entry table's error
    # (about 2.5 % of the level) away from the edges, and never above the ideal at the edges.
    for name in TONES:
        got, _ = render(name)
        want, edge = ideal(name)
        tol = LEVEL * 0.03 + 2
        for i in range(len(want)):
            if edge[i]:
                assert abs(got[i]) <= abs(want[i]) + tol, (name, i)
            else:
                assert abs(got[i] - want[i]) <= tol, (name, i, got[i], want[i])


def goertzel(samples, freq):
    w = 2 * math.pi * freq / 8000
    c = 2 * math.cos(w)
    s1 = s2 = 0.0
    for x in samples:
        s0 = x + c * s1 - s2
        s2 = s1
        s1 = s0
    return s1 * s1 + s2 * s2 - c * s1 * s2


def test_frequencies_by_goertzel():
    samples, _ = render("talk_permit")
    on = samples[: 100 * 8]
    p = goertzel(on, 1000)
    for other in (900, 1100, 500, 2000):
        assert p > 100 * goertzel(on, other), other
    samples, _ = render("deny")
    burst = samples[: 100 * 8]
    p480 = goertzel(burst, 480)
    p620 = goertzel(burst, 620)
    assert 0.5 < p480 / p620 < 2
    for other in (425, 550, 700, 1000):
        assert min(p480, p620) > 30 * goertzel(burst, other), other


def test_cadences_have_exact_silences():
    for name in TONES:
        samples, _ = render(name)
        pos = 0
        for f1, f2, ms in TONES[name]:
            seg = samples[pos : pos + ms * 8]
            peak = max(abs(v) for v in seg)
            if f1 == 0 and f2 == 0:
                assert peak == 0, (name, pos)
            else:
                assert peak > LEVEL * 0.9, (name, pos, peak)
                assert peak <= LEVEL, (name, pos, peak)
            pos += ms * 8


def test_edges_rise_and_fall_without_clicks():
    for name in TONES:
        samples, _ = render(name)
        pos = 0
        for f1, f2, ms in TONES[name]:
            if f1 or f2:
                n = ms * 8
                first = samples[pos]
                last = samples[pos + n - 1]
                assert abs(first) <= LEVEL // 32 + 1 and abs(last) <= LEVEL // 32 + 1, (name, first, last)
                # no sample-to-sample step larger than the steepest sine slope allows
                for i in range(pos + 1, pos + n):
                    assert abs(samples[i] - samples[i - 1]) <= LEVEL * 2 * math.pi * 1200 / 8000 + 50
            pos += ms * 8


def test_frame_size_does_not_change_the_tone():
    for name in ("emergency", "lost_link", "deny"):
        a, _ = render(name, 160)
        b, _ = render(name, 50)
        n = tones.tone_samples(name)
        assert a[:n] == b[:n], name


def test_level_scales():
    quiet, _ = render("talk_permit", level=1000)
    assert 900 < max(abs(v) for v in quiet) <= 1000
    raises(ValueError, TonePlayer, 40000)
    raises(ValueError, TonePlayer, -1)


def test_start_replaces_and_stop_ends():
    tp = TonePlayer()
    out = bytearray(320)
    tp.start("emergency")
    assert tp.fill(out) and tp.name == "emergency"
    tp.start("talk_permit")
    assert tp.name == "talk_permit" and tp.remaining_samples == 800
    frames = 0
    while tp.fill(out):
        frames += 1
    assert frames == 5 and not tp.active and tp.name is None
    tp.start("deny")
    tp.stop()
    out[:] = b"\x01" * 320
    assert not tp.fill(out) and out == bytearray(320)
    raises(ValueError, tp.start, "no-such-tone")


def voice_frame(value):
    b = bytearray(320)
    for i in range(160):
        b[2 * i] = value & 0xFF
        b[2 * i + 1] = (value >> 8) & 0xFF
    return b


def test_mix_ducks_the_voice_and_adds_the_tone():
    tp_ref = TonePlayer()
    tp_ref.start("queued")
    tp = TonePlayer()
    tp.start("queued")
    ref = bytearray(320)
    for value in (1000, -1000):
        out = voice_frame(value)
        tp_ref.fill(ref)
        assert tp.mix(out, 1)
        for i in range(160):
            assert s16(out, i) == s16(ref, i) + value // 2, (i, s16(out, i), s16(ref, i))
    # no tone: the voice is left alone
    idle = TonePlayer()
    out = voice_frame(1234)
    assert not idle.mix(out, 1)
    assert out == voice_frame(1234)


def test_mix_saturates_instead_of_wrapping():
    tp = TonePlayer(32767)
    tp.start("talk_permit")
    lo = hi = 0
    for _ in range(5):
        out = voice_frame(32767)
        tp.mix(out, 0)
        for i in range(160):
            v = s16(out, i)
            assert v >= 0  # a wrap would turn loud into negative
            hi = max(hi, v)
        out = voice_frame(-32768)
        tp.mix(out, 0)
    tp.start("talk_permit")
    for _ in range(5):
        out = voice_frame(-32768)
        tp.mix(out, 0)
        for i in range(160):
            v = s16(out, i)
            assert v <= 0
            lo = min(lo, v)
    assert hi == 32767 and lo == -32768


def test_mix_stops_ducking_when_the_tone_ends_within_a_frame():
    tp = TonePlayer()
    tp.start("emergency_cancel")  # 330 ms: ends 80 samples into its 17th frame
    out = None
    while tp.active:
        out = voice_frame(2000)
        tp.mix(out, 1)
    end = tones.tone_samples("emergency_cancel") % 160
    assert end == 80
    for i in range(end, 160):
        assert s16(out, i) == 2000
    assert abs(s16(out, end - 1) - 1000) <= LEVEL // 32 + 1


def test_phase_increment():
    # every tone frequency is made to within 0.0003 Hz (half a phase step)
    for segs in TONES.values():
        for f1, f2, ms in segs:
            for f in (f1, f2):
                made = tones.phase_increment(f) * 8000 / (1 << 24)
                assert abs(made - f) <= 8000 / (1 << 25), (f, made)
    assert tones.phase_increment(0) == 0
    raises(ValueError, tones.phase_increment, 4000)
    raises(ValueError, tones.phase_increment, -1)


def test_no_allocation_per_frame():
    if not IS_MICROPYTHON:
        raise SkipTest("heap locking is a MicroPython facility; the accessory's path is measured there")
    tp = TonePlayer()
    out = bytearray(320)
    voice = voice_frame(500)
    names = list(TONES)
    n = 0
    k = 0
    for name in names:
        tp.start(name)
        micropython.heap_lock()
        try:
            while tp.fill(out):
                n += 1
            tp.start(name)
            while tp.active:
                out[:] = voice
                tp.mix(out, 1)
                k += 1
        finally:
            micropython.heap_unlock()
    assert n == k and n > 100
