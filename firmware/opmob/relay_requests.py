"""The relay's request layer: each request from a device or a peer relay is executed once and
answered once, now or later, sans-I/O (docs/protocol.md §7, "Transactions").

    req = Requests(cache)                         # a txn.ResponseCache the relay sizes
    req.again(now, addr, peer, txid) -> [(addr, bytes)] | None    a retransmission's answer
    req.handle(now, addr, peer, txid, fn, *args) -> [(addr, bytes)]
    req.answer(now, peer, txid, response) -> (addr, bytes) | None   a request kept open, answered
    req.abandon(peer, txid)                       it will never be answered: forget it
    req.waiting() -> int                          requests kept open

``fn(now, addr, *args)`` returns ``(response, other datagrams)``; a response of ``LATER`` keeps the
request open: the relay must first hear from someone else (a visited relay waits for the device's
home). While a request is open, its retransmissions find it PENDING and are dropped (``again``
raises ``Drop("sig_in_progress")``): the requester keeps retransmitting on its own schedule, and
the answer, when it comes, goes to the address the request last came from and is cached for the
retransmissions after it. ``peer`` is whatever keys the requester: the session id for protected
traffic, the source address before a session exists, ``link:<peer>`` for a link.
"""

from opmob import txn
from opmob.relay_session import Drop

LATER = "later"  # fn's response: keep the request open, answer with Requests.answer
MAX_OPEN = 4096  # requests kept open at once; beyond that an eighth of them are abandoned


class Requests:
    def __init__(self, cache):
        self.cache = cache
        self._open = {}  # (peer, txid) -> the address to answer
        self.retransmits = 0

    def waiting(self):
        return len(self._open)

    def again(self, now, addr, peer, txid):
        """The cached answer (as datagrams) when ``txid`` from ``peer`` was answered before, else
        None; a request still open is dropped (its answer is not known yet)."""
        cached = self.cache.lookup(now, peer, txid)
        if cached is txn.PENDING:
            k = (peer, txid)
            if k in self._open:
                self._open[k] = addr  # answer where the requester is now
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
        if resp is LATER:
            o = self._open
            if len(o) >= MAX_OPEN:
                for k in list(o)[: MAX_OPEN // 8]:
                    self.abandon(k[0], k[1])
            o[(peer, txid)] = addr
            return list(extra)
        self.cache.store(now, peer, txid, resp)
        out = [(addr, resp)]
        out.extend(extra)
        return out

    def answer(self, now, peer, txid, response):
        """Answer a request kept open: the datagram to send, or None when it is not open (answered
        already, abandoned)."""
        addr = self._open.pop((peer, txid), None)
        if addr is None:
            return None
        self.cache.store(now, peer, txid, response)
        return (addr, response)

    def abandon(self, peer, txid):
        """The request will not be answered: a retransmission of it is new again."""
        if self._open.pop((peer, txid), None) is not None:
            self.cache.forget(peer, txid)
