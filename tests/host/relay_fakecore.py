"""A tiny sans-I/O core for driver tests, in the Python subset both CPython and MicroPython run.
Time is int milliseconds modulo 2^30 (opmob/ticks.py), as the drivers give it.

Commands arrive as datagrams ``b"<cmd> <arg>"``:

- ``echo X``: send X back;
- ``timer MS``: answer ``armed``, then ``tick LATE_MS`` from ``poll`` once MS have passed (a second
  ``timer`` replaces the first deadline, earlier or later);
- ``boom``: raise, with a message standing in for key material that must never reach a log;
- ``badout``: return a malformed item and then a good one (``after-bad``);
- ``stuck``: keep a deadline in the past that ``poll`` never clears; ``unstick`` clears it and
  answers ``polls N`` (how often poll ran meanwhile);
- ``fanout N``: answer N datagrams ``0`` .. ``N-1``;
- ``nan``: make ``next_deadline`` return NaN until ``unstick``.
"""

from opmob.ticks import due, tadd, tdiff

SECRET_MARKER = "fake-secret-key-0011223344"


class FakeCore:
    def __init__(self):
        self.deadline = None
        self.peer = None
        self.stuck = False
        self.seen = 0
        self.polls = 0

    def on_datagram(self, now, addr, data):
        self.seen += 1
        cmd, _, arg = bytes(data).partition(b" ")
        if cmd == b"echo":
            return [(addr, arg)]
        if cmd == b"timer":
            self.deadline = tadd(now, int(arg))
            self.peer = addr
            return [(addr, b"armed")]
        if cmd == b"boom":
            raise RuntimeError(SECRET_MARKER)
        if cmd == b"badout":
            return [("not-an-address",), (addr, b"after-bad")]
        if cmd == b"stuck":
            self.stuck = True
            self.polls = 0
            self.deadline = tadd(now, -1000)
            return [(addr, b"stuck")]
        if cmd == b"unstick":
            self.stuck = False
            self.deadline = None
            return [(addr, b"polls " + str(self.polls).encode())]
        if cmd == b"nan":
            self.deadline = float("nan")
            return [(addr, b"nan")]
        if cmd == b"fanout":
            return [(addr, str(i).encode()) for i in range(int(arg))]
        return []

    def poll(self, now):
        self.polls += 1
        if self.stuck or self.deadline is None or not due(now, self.deadline):
            return []
        late_ms = tdiff(now, self.deadline)
        self.deadline = None
        return [(self.peer, b"tick " + str(late_ms).encode())]

    def next_deadline(self):
        return self.deadline

    def status(self):
        return {"seen": self.seen, "polls": self.polls}
