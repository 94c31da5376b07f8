"""Helpers for firmware tests that run under both CPython (pytest) and the MicroPython unix port.

Firmware test modules use plain ``assert`` and these helpers only, never pytest itself, so the
same source runs on both runtimes (see tests/conftest.py and tests/fw/mpy_runner.py).
"""

import json
import sys

from opmob.sim import Rng as _SimRng

IS_MICROPYTHON = sys.implementation.name == "micropython"

try:
    _HERE = __file__.rsplit("/", 1)[0]
except NameError:  # pragma: no cover - frozen
    _HERE = "tests/fw"
ROOT = _HERE + "/../.."
VECTORS = _HERE + "/../vectors"
SPEECH_DIR = "/usr/share/codec2/raw"


def raises(exc, fn, *args, **kwargs):
    """Call fn and return the exception it raised, which must be an ``exc``."""
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    raise AssertionError("%s not raised by %r" % (getattr(exc, "__name__", exc), fn))


def unhex(s):
    import binascii

    return binascii.unhexlify(s)


def tohex(b):
    import binascii

    return binascii.hexlify(b).decode()


def load_vectors(name):
    """A JSON vector file from tests/vectors/."""
    with open(VECTORS + "/" + name) as f:
        return json.load(f)


def read_speech(name="hts1a.raw", max_bytes=None):
    """Real recorded speech from Debian's codec2-examples: raw 8 kHz, 16-bit little-endian."""
    with open(SPEECH_DIR + "/" + name, "rb") as f:
        return f.read() if max_bytes is None else f.read(max_bytes)


class Rng(_SimRng):
    """A small seeded generator (xorshift32) giving identical sequences on both runtimes: the
    simulator's (opmob.sim.Rng), with ``bytes(n)`` as the tests spell it."""

    def bytes(self, n):
        return self(n)


if IS_MICROPYTHON:

    class SkipTest(Exception):
        pass

else:
    from unittest import SkipTest  # noqa: F401 - pytest reports it as a skip
