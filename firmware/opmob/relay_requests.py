"""The relay's request layer: each request from a device or a peer relay is executed once and
answered once, now or later, sans-I/O (docs/protocol.md §7, "Transactions").

    req = Requests(cache)                         # a txn.ResponseCache the relay sizes
    req.again(now, addr, peer, txid) -> [(addr, bytes)] | None    a retransmission's answer
                                  (the cached one, or PENDING while the request is open)
    req.handle(now, addr, peer, txid, fn, *args) -> [(addr, bytes)]
    req.answer(now, peer, txid, response) -> (addr, bytes) | None   a request kept open, answered
    req.abandon(peer, txid)                       it will never be answered: forget it
    req.waiting() -> int                          requests kept open

``fn(now, addr, *args)`` returns ``(response, other datagrams)``; a response of ``later(pending)``
keeps the request open: the relay must first hear from someone else (a peer relay that controls a
group, a visited relay waits for the device's home). While a request is open, each
retransmission of it is answered with ``pending``, the PENDING message fn encoded for it
(protocol.md §7: the requester keeps waiting, its back-off starts over), or, for ``LATER`` (no
such message), dropped (``again`` raises ``Drop("sig_in_progress")``). The answer, when it comes,
goes to the address the request last came from and is cached for the retransmissions after it. ``peer`` is whatever keys the requester: the session id for protected
traffic, the source address before a session exists, ``link:<peer>`` for a link.
"""

from opmob import txn
from opmob.relay_session import Drop


class Later:
    """fn's response: keep the request open, answer with ``Requests.answer``; ``pending``: the
    bytes a retransmission meanwhile gets (None: it is dropped)."""

    __slots__ = ("pending",)

    def __init__(self, pending=None):
        self.pending = pending


def later(pending=None):
    return Later(pending)


LATER = Later()  # kept open, retransmissions dropped
MAX_OPEN = 4096  # requests kept open at once; beyond that an eighth of them are abandoned


class Requests:
    def __init__(self, cache):
        self.cache = cache
        self._open = {}  # (peer, txid) -> [the address to answer, PENDING bytes or None]
        self.retransmits = 0
        self.pending_sent = 0

    def waiting(self):
        return len(self._open)

    def is_open(self, peer, txid):
        return (peer, txid) in self._open

    def again(self, now, addr, peer, txid):
        """The cached answer (as datagrams) when ``txid`` from ``peer`` was answered before, else
        None; a request still open gets its PENDING bytes, or is dropped when it has none."""
        cached = self.cache.lookup(now, peer, txid)
        if cached is txn.PENDING:
            o = self._open.get((peer, txid))
            if o is not None:
                o[0] = addr  # answer where the requester is now
                if o[1] is not None:
                    self.pending_sent += 1
                    return [(addr, o[1])]
            raise Drop("sig_in_progress")
        if cached is not None:
            self.retransmits += 1
            return [(addr, cached)]
        return None

    def handle(self, now, addr, peer, txid, fn, *args):
        """Execute a new request once: ``fn(now, addr, *args) -> (response, datagrams)``; the
        response is cached so that a retransmission gets the same bytes and never a second
        action. A Drop from ``fn`` forgets the request (it was never accepted)."""
        self.cache.begin(now, peer, txid)
        try:
            resp, extra = fn(now, addr, *args)
        except Drop:
            self.cache.forget(peer, txid)
            raise
        if isinstance(resp, Later):
            o = self._open
            if len(o) >= MAX_OPEN:
                for k in list(o)[: MAX_OPEN // 8]:
                    self.abandon(k[0], k[1])
            o[(peer, txid)] = [addr, resp.pending]
            return list(extra)
        self.cache.store(now, peer, txid, resp)
        out = [(addr, resp)]
        out.extend(extra)
        return out

    def answer(self, now, peer, txid, response):
        """Answer a request kept open: the datagram to send, or None when it is not open (answered
        already, abandoned)."""
        o = self._open.pop((peer, txid), None)
        if o is None:
            return None
        self.cache.store(now, peer, txid, response)
        return (o[0], response)

    def abandon(self, peer, txid):
        """The request will not be answered: a retransmission of it is new again."""
        if self._open.pop((peer, txid), None) is not None:
            self.cache.forget(peer, txid)
