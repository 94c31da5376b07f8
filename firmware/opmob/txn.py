"""Reliable request/response over UDP for the signalling protocol, sans-I/O.

- ``Transactions``: the requester side. Each request is retransmitted with exponential back-off
  until a response arrives or the attempts run out (then it is reported as timed out).
- ``ResponseCache``: the responder side. A retransmitted request (same peer, same transaction id)
  gets the very bytes answered the first time, without executing the request again; a request
  still being worked on (e.g. waiting for the home registry) is dropped quietly.
- ``ReplayWindow``: 32-bit sequence-number freshness (RFC 1982 serial arithmetic and a bitmap of
  recent numbers, as in SRTP's replay list). Protects authenticated requests against replay after
  their cache entry is gone, and, on the device, single use of authentication vectors.

Times are integer milliseconds modulo 2^30 (opmob/ticks.py) that the driver passes in, compared
wrap-safely; durations (``rto``, ``ttl``) are int milliseconds. Nothing here reads a clock.
See docs/protocol.md, "Transactions".
"""

import struct

from opmob.errors import Replayed
from opmob.ticks import due, earliest, tadd

RTO = 500  # ms: first retransmission after 0.5 s, as SIP's T1 (RFC 3261 §17.1.1.1)
RTO_MAX = 4000  # ms: back-off cap, as SIP's T2
MAX_SENDS = 7  # 0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5 s; timed out at 19.5 s
CACHE_TTL = 32000  # ms: longer than a requester's whole retransmission span
CACHE_ENTRIES = 512

PENDING = "pending"  # ResponseCache.lookup(): the request is being worked on; drop the duplicate


def _backoff(rto, rto_max, sends):
    w = rto
    k = 1
    while k < sends and w < rto_max:
        w *= 2
        k += 1
    return w if w < rto_max else rto_max


class Transaction:
    """One outstanding request. ``ctx`` is whatever the driver attached to it."""

    __slots__ = ("txid", "type", "data", "ctx", "started", "sends", "deadline", "rto", "rto_max", "max_sends")

    def __init__(self, txid, mtype, data, ctx, now, rto, rto_max, max_sends):
        self.txid = txid
        self.type = mtype
        self.data = data
        self.ctx = ctx
        self.started = now
        self.sends = 1
        self.rto = rto
        self.rto_max = rto_max
        self.max_sends = max_sends
        self.deadline = now

    def __repr__(self):
        return "Transaction(txid=%d, type=0x%02x, sends=%d, deadline=%r)" % (
            self.txid,
            self.type,
            self.sends,
            self.deadline,
        )


class Transactions:
    """Requests in flight from one endpoint.

    ``first_txid`` should be random (the driver draws it): transaction ids then run sequentially
    from it, modulo 2**32, which both makes them unique within a session and lets the peer keep a
    replay window over them. ``answers(request_type, response_type)`` (e.g. ``sig.answers``), when
    given, makes ``on_response`` ignore a response of the wrong type. ``rand()`` in [0, 1) and
    ``jitter`` in [0, 1) shorten each wait by up to that fraction, so that many devices that lost
    the same relay do not retransmit in lock step.
    """

    def __init__(
        self,
        first_txid,
        rto=RTO,
        rto_max=RTO_MAX,
        max_sends=MAX_SENDS,
        answers=None,
        jitter=0.0,
        rand=None,
    ):
        if not isinstance(rto, int) or not isinstance(rto_max, int) or not 0 < rto <= rto_max:
            raise ValueError("need int milliseconds 0 < rto <= rto_max")
        if max_sends < 1:
            raise ValueError("max_sends must be at least 1")
        if jitter and rand is None:
            raise ValueError("jitter needs a rand() source")
        self._next = first_txid & 0xFFFFFFFF
        self.rto = rto
        self.rto_max = rto_max
        self.max_sends = max_sends
        self._answers = answers
        self._jitter = jitter
        self._rand = rand
        self._open = {}

    def __len__(self):
        return len(self._open)

    def __contains__(self, txid):
        return txid in self._open

    def new_txid(self):
        t = self._next
        self._next = (t + 1) & 0xFFFFFFFF
        return t

    def _wait(self, t):
        w = _backoff(t.rto, t.rto_max, t.sends)
        if self._jitter:
            w -= int(w * self._jitter * self._rand())
        return w

    def start(self, now, data, ctx=None, rto=None, rto_max=None, max_sends=None):
        """Track the encoded request ``data`` (sent by the caller now); returns its Transaction.

        Per-request ``rto``/``rto_max``/``max_sends`` override the defaults, e.g. a shorter first
        wait for CALL_SETUP, where access time matters more than a few extra packets.
        """
        if len(data) < 16:
            raise ValueError("not an encoded signalling request")
        mtype = data[3]
        if mtype & 0x80:
            raise ValueError("responses are not retransmitted by the requester")
        txid = struct.unpack(">I", bytes(data[8:12]))[0]
        if txid in self._open:
            raise ValueError("transaction %d already in flight" % txid)
        r = self.rto if rto is None else rto
        rm = self.rto_max if rto_max is None else rto_max
        if not isinstance(r, int) or not isinstance(rm, int) or not 0 < r <= rm:
            raise ValueError("need int milliseconds 0 < rto <= rto_max")
        t = Transaction(
            txid,
            mtype,
            bytes(data),
            ctx,
            now,
            r,
            rm,
            self.max_sends if max_sends is None else max_sends,
        )
        if t.max_sends < 1:
            raise ValueError("max_sends must be at least 1")
        t.deadline = tadd(now, self._wait(t))
        self._open[txid] = t
        return t

    def poll(self, now):
        """Returns ``(resend, timed_out)``: request bytes due again now, and the Transactions that
        ran out of attempts (they are forgotten)."""
        resend = []
        dead = []
        for txid in list(self._open):
            t = self._open[txid]
            if not due(now, t.deadline):
                continue
            if t.sends >= t.max_sends:
                del self._open[txid]
                dead.append(t)
            else:
                t.sends += 1
                t.deadline = tadd(now, self._wait(t))
                resend.append(t.data)
        return resend, dead

    def deadline(self):
        """When ``poll`` next has something to do, or None when nothing is in flight."""
        d = None
        op = self._open
        for txid in op:  # the keys: on MicroPython .values() is a heap object per call
            d = earliest(d, op[txid].deadline)
        return d

    def on_response(self, txid, response_type=None):
        """The Transaction a response completes, or None for a duplicate, late, unsolicited or
        mistyped response (which the caller drops)."""
        t = self._open.get(txid)
        if t is None:
            return None
        if self._answers is not None and response_type is not None:
            if not self._answers(t.type, response_type):
                return None
        del self._open[txid]
        return t

    def get(self, txid):
        return self._open.get(txid)

    def cancel(self, txid):
        return self._open.pop(txid, None)


class ResponseCache:
    """Responses already given, keyed by ``(peer, txid)``, bounded in entries and in time.

    ``peer`` is any hashable the driver chooses: the session id for authenticated traffic (so a
    device whose address changed still hits its entry) or the source address before a session
    exists. Protocol: ``r = lookup(now, peer, txid)``; if ``r is None`` the request is new: call
    ``begin`` and execute it, then ``store`` the encoded response (or ``forget`` if it produced
    none); if ``r is PENDING`` drop the duplicate; otherwise send ``r`` again.
    """

    def __init__(self, max_entries=CACHE_ENTRIES, ttl=CACHE_TTL):
        if max_entries < 1 or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError("bad ResponseCache bounds (ttl: int milliseconds)")
        self.max_entries = max_entries
        self.ttl = ttl
        self._d = {}  # key -> [expires, response or PENDING, serial]
        self._fifo = []  # (key, serial) in insertion order; stale pairs are skipped
        self._head = 0
        self._serial = 0

    def __len__(self):
        return len(self._d)

    def _evict(self, now):
        fifo = self._fifo
        d = self._d
        while self._head < len(fifo):
            key, serial = fifo[self._head]
            e = d.get(key)
            if e is None or e[2] != serial:
                self._head += 1
                continue
            if len(d) > self.max_entries or due(now, e[0]):
                del d[key]
                self._head += 1
                continue
            break
        if self._head > 64 and self._head * 2 > len(fifo):
            self._fifo = fifo[self._head :]
            self._head = 0

    def lookup(self, now, peer, txid):
        e = self._d.get((peer, txid))
        if e is None:
            return None
        if due(now, e[0]):
            del self._d[(peer, txid)]
            return None
        return e[1]

    def _put(self, now, key, value):
        self._serial += 1
        self._d[key] = [tadd(now, self.ttl), value, self._serial]
        self._fifo.append((key, self._serial))
        self._evict(now)

    def begin(self, now, peer, txid):
        self._put(now, (peer, txid), PENDING)

    def store(self, now, peer, txid, response):
        """Remember ``response`` (bytes) for retransmissions of this request for ``ttl`` ms."""
        if response is PENDING or not isinstance(response, (bytes, bytearray)):
            raise ValueError("a cached response must be bytes")
        self._put(now, (peer, txid), bytes(response))

    def forget(self, peer, txid):
        self._d.pop((peer, txid), None)

    def expire(self, now):
        self._evict(now)


class ReplayWindow:
    """Which 32-bit sequence numbers were already accepted: the highest, and a bitmap of the
    ``size`` below it. ``check`` raises Replayed for a number already seen or too old to tell;
    ``accept`` records one (only after the message carrying it was authenticated).

    ``state()`` / ``ReplayWindow(size, *state)`` let the device keep vector-id freshness in
    flash across reboots.
    """

    def __init__(self, size=64, highest=None, bitmap=0):
        if not 1 <= size <= 1024:
            raise ValueError("replay window size out of range")
        self.size = size
        self.highest = highest
        self.bitmap = bitmap  # bit i set: highest - i seen (bit 0 is highest itself)

    def state(self):
        return self.highest, self.bitmap

    def _offset(self, n):
        # > 0: n is that far ahead of highest; <= 0: that far behind (0 = highest itself).
        d = (n - self.highest) & 0xFFFFFFFF
        if d and d < 0x80000000:
            return d
        return -((self.highest - n) & 0xFFFFFFFF)

    def fresh(self, n):
        if self.highest is None:
            return True
        off = self._offset(n)
        if off > 0:
            return True
        back = -off
        if back >= self.size:
            return False
        return not (self.bitmap >> back) & 1

    def check(self, n):
        if not self.fresh(n):
            raise Replayed("sequence number %d already seen or too old" % n)

    def accept(self, n):
        self.check(n)
        if self.highest is None:
            self.highest = n
            self.bitmap = 1
            return
        off = self._offset(n)
        mask = (1 << self.size) - 1
        if off > 0:
            self.bitmap = ((self.bitmap << off) | 1) & mask if off < self.size else 1
            self.highest = n
        else:
            self.bitmap |= 1 << -off


def earlier(d, t):
    """The earlier of two deadlines, either of which may be None (no deadline), wrap-safe.

    The sessions' ``next_deadline`` run after every datagram a driver handles, so they compare
    their timers pairwise with this rather than looping over a tuple of them: on MicroPython a
    tuple is a heap object per call."""
    return earliest(d, t)
