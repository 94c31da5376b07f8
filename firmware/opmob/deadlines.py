"""The earliest of many keyed deadlines, without a scan: a heap with lazy invalidation, sans-I/O.

    d = Deadlines()
    d.set(key, t)          # key's deadline is now t (a tick, opmob/ticks.py), or None: no deadline
    d.earliest() -> t | None
    d.first_due(now) -> key | None   # a key whose deadline has come (the earliest), else None
    d.get(key) -> t | None           len(d): keys with a deadline

Why: the relay's ``next_deadline`` runs after every datagram its driver handles, and a relay keeps
one floor server per group; walking them all costs 800 µs at 1,000 groups. Here ``set`` is
O(log n) and ``earliest`` O(1) amortised.

Times are ints modulo 2^30, so they cannot be heap keys as they are: a deadline just past the wrap
is numerically smaller than one just before it. The heap holds each deadline's offset from a
reference time instead (``tdiff(t, ref)``), which orders them correctly while every deadline is
within 2^29 ms of the reference; when a new deadline lies more than REBASE from it, the reference
moves to that deadline and the heap is rebuilt from the live deadlines (rare: once in days of
clock, or after a long sleep). A key set again leaves its old entry in the heap; such stale
entries are skipped when they reach the top and dropped whenever the heap grows to twice the live
keys, so memory stays bounded whatever the rate of updates (a talker's every voice packet moves
its group's T1).
"""

import heapq

from opmob.ticks import due, tdiff

REBASE = 0x10000000  # 2^28 ms (3.1 days): offsets stay well inside the wrap-safe range


class Deadlines:
    def __init__(self):
        self._at = {}  # key -> deadline (tick)
        self._heap = []  # [offset from _ref, serial, key]; stale ones are skipped
        self._ref = None
        self._serial = 0

    def __len__(self):
        return len(self._at)

    def get(self, key):
        return self._at.get(key)

    def set(self, key, t):
        at = self._at
        if t is None:
            at.pop(key, None)
            return
        if at.get(key) == t:
            return
        at[key] = t
        if self._ref is None:
            self._ref = t
        off = tdiff(t, self._ref)
        if off > REBASE or off < -REBASE:
            self._rebuild(t)
            return
        self._serial += 1
        heapq.heappush(self._heap, (off, self._serial, key))
        if len(self._heap) > 2 * len(at) + 64:
            self._rebuild(self._ref)

    def _rebuild(self, ref):
        self._ref = ref
        h = []
        at = self._at
        for key in at:
            self._serial += 1
            h.append((tdiff(at[key], ref), self._serial, key))
        heapq.heapify(h)
        self._heap = h

    def _top(self):
        """The heap's first live entry (stale ones popped), or None."""
        h = self._heap
        at = self._at
        ref = self._ref
        while h:
            e = h[0]
            t = at.get(e[2])
            if t is not None and tdiff(t, ref) == e[0]:
                return e
            heapq.heappop(h)
        return None

    def earliest(self):
        e = self._top()
        return None if e is None else self._at[e[2]]

    def first_due(self, now):
        e = self._top()
        if e is None:
            return None
        key = e[2]
        return key if due(now, self._at[key]) else None
