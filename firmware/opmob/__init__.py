"""OpMob protocol core: sans-I/O, shared by the accessory (MicroPython) and the relay (CPython)."""

VERSION = "0.1.0"
