"""The relay's request layer (opmob.relay_requests) alone, on both runtimes: executed once,
answered once, now or later; retransmissions of an open request dropped as in progress."""

from fwtest import raises
from opmob import txn
from opmob.relay_requests import LATER, Requests
from opmob.relay_session import Drop
from opmob.ticks import PERIOD, tadd

T0 = PERIOD - 2000
A1 = ("10.0.0.5", 5000)
A2 = ("10.0.0.5", 6000)  # the same requester after a NAT rebinding


def test_answered_at_once_and_retransmissions_get_the_same_bytes():
    req = Requests(txn.ResponseCache())
    calls = []

    def fn(now, addr, x):
        calls.append((now, addr, x))
        return b"answer-" + x, [(("10.9.9.9", 1), b"side effect")]

    assert req.again(T0, A1, 7, 1) is None
    out = req.handle(T0, A1, 7, 1, fn, b"a")
    assert out == [(A1, b"answer-a"), (("10.9.9.9", 1), b"side effect")]
    assert req.again(tadd(T0, 500), A2, 7, 1) == [(A2, b"answer-a")]  # to where it asks from now
    assert calls == [(T0, A1, b"a")] and req.retransmits == 1
    # Past the cache's lifetime a retransmission is new again.
    assert req.again(tadd(T0, txn.CACHE_TTL), A1, 7, 1) is None


def test_kept_open_then_answered_later():
    req = Requests(txn.ResponseCache())
    out = req.handle(T0, A1, "s9", 5, lambda now, addr: (LATER, [(("10.0.0.9", 7700), b"ask the home")]))
    assert out == [(("10.0.0.9", 7700), b"ask the home")] and req.waiting() == 1
    # Retransmissions meanwhile: pending, dropped; the answer goes where the last one came from.
    e = raises(Drop, req.again, tadd(T0, 500), A2, "s9", 5)
    assert e.reason == "sig_in_progress"
    assert req.answer(tadd(T0, 800), "s9", 5, b"late answer") == (A2, b"late answer")
    assert req.waiting() == 0 and req.answer(tadd(T0, 900), "s9", 5, b"again") is None
    assert req.again(tadd(T0, 1500), A1, "s9", 5) == [(A1, b"late answer")]


def test_abandoned_or_dropped_requests_are_new_again():
    req = Requests(txn.ResponseCache())
    req.handle(T0, A1, 1, 1, lambda now, addr: (LATER, []))
    req.abandon(1, 1)
    assert req.again(T0, A1, 1, 1) is None and req.waiting() == 0

    def refuse(now, addr):
        raise Drop("sig_not_registered")

    raises(Drop, req.handle, T0, A1, 1, 2, refuse)
    assert req.again(T0, A1, 1, 2) is None
