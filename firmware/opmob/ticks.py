"""Time in the cores: integer milliseconds modulo 2^30, compared wrap-safely.

Every sans-I/O core (device, relay, floor server, PTT client, jitter buffer, transactions) takes
``now`` as an int from this clock and keeps deadlines as such ints. Why not float seconds: an
ESP32's floats are single precision, so after about 30 days of uptime ``now + 0.1 == now`` and a
250 ms timer misfires; relays and accessories run for months. Why modulo 2^30: it is a small int
on every MicroPython port (no heap object per timestamp) and equals ``time.ticks_ms()``'s own period
on the ESP32. The unix port's ``ticks_ms`` has a longer period, so ``now_ms`` masks it.

A difference is meaningful while the two times are less than 2^29 ms (about 6.2 days) apart: every
timer in OpMob is far shorter, and a core that sleeps longer than that between calls is woken by
its keep-alives long before.

    t = tadd(now, 250)           # a deadline 250 ms from now
    due(now, t)                  # True once now has reached t
    tdiff(a, b)                  # a - b in -2^29 .. 2^29-1
    earliest(a, b)               # the earlier of two deadlines, either may be None
    ms(seconds)                  # a configured duration in seconds -> int milliseconds
    now_ms()                     # the drivers' clock (never called inside a core)
"""

import sys

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


PERIOD = const(0x40000000)
MASK = const(0x3FFFFFFF)
HALF = const(0x20000000)
DAY_MS = const(86400000)


def tdiff(a, b):
    """a - b for times modulo 2^30, in -2^29 .. 2^29-1."""
    return ((a - b + HALF) & MASK) - HALF


def tadd(a, d):
    """a + d modulo 2^30 (``d`` may be negative)."""
    return (a + d) & MASK


def due(now, t):
    """True when ``now`` has reached deadline ``t``."""
    return ((now - t + HALF) & MASK) >= HALF


def earliest(a, b):
    """The earlier of two deadlines; None means "no deadline"."""
    if a is None:
        return b
    if b is None:
        return a
    return a if ((a - b + HALF) & MASK) <= HALF else b


def ms(seconds):
    """A duration given in seconds (configuration, int or float) as whole milliseconds."""
    return int(seconds * 1000 + 0.5)


if sys.implementation.name == "micropython":
    import time as _time

    def now_ms():
        return _time.ticks_ms() & MASK

else:
    import time as _time

    def now_ms():
        return int(_time.monotonic() * 1000) & MASK
