"""Retransmission, response cache and replay window (opmob.txn), on both runtimes."""

from fwtest import Rng, raises
from opmob import sig, txn
from opmob.errors import Replayed
from opmob.ticks import PERIOD, tadd, tdiff

T0 = PERIOD - 5000  # 5 s before the 2^30 ms clock wraps: every schedule here runs across it


def at(seconds):
    """The clock reading ``seconds`` after the test's start (int ms modulo 2^30)."""
    return tadd(T0, int(round(seconds * 1000)))


def req(txid, mtype=sig.REGISTER):
    m = sig.SigMsg(mtype, txid=txid, identity="ola@no", nonce=bytes(16))
    return sig.encode(m)


def test_default_schedule_and_time_out():
    t = txn.Transactions(100)
    txid = t.new_txid()
    assert txid == 100
    data = req(txid)
    tr = t.start(at(0.0), data, ctx="reg")
    assert tr.txid == 100 and tr.type == sig.REGISTER and tr.sends == 1
    sent_at = [0]
    now = at(0.0)
    while True:
        d = t.deadline()
        if d is None:
            break
        # Nothing happens just before a deadline.
        assert t.poll(tadd(d, -1)) == ([], [])
        now = d
        resend, dead = t.poll(now)
        if dead:
            assert resend == [] and len(dead) == 1 and dead[0].ctx == "reg"
            break
        assert resend == [data]  # byte-identical retransmission
        sent_at.append(tdiff(now, T0))
    assert sent_at == [0, 500, 1500, 3500, 7500, 11500, 15500]
    assert now == at(19.5)
    assert len(t) == 0 and t.deadline() is None


def test_response_completes_and_duplicates_are_dropped():
    t = txn.Transactions(7, answers=sig.answers)
    a = t.start(at(0.0), req(t.new_txid()))
    b = t.start(at(0.0), req(t.new_txid()))
    assert len(t) == 2 and 7 in t and 8 in t
    # A response of a type that does not answer REGISTER leaves the request open.
    assert t.on_response(7, sig.KEEPALIVE_ACK) is None
    assert 7 in t
    assert t.on_response(7, sig.CHALLENGE) is a
    assert t.on_response(7, sig.CHALLENGE) is None  # duplicate
    assert t.on_response(99, sig.CHALLENGE) is None  # unsolicited
    assert t.on_response(8, sig.ERROR) is b  # ERROR answers any request
    assert len(t) == 0
    resend, dead = t.poll(at(100.0))
    assert resend == [] and dead == []


def test_response_after_some_retransmissions():
    t = txn.Transactions(1)
    t.start(at(10.0), req(t.new_txid()))
    assert t.poll(at(10.5)) == ([req(1)], [])
    tr = t.on_response(1)
    assert tr.sends == 2 and tr.started == at(10.0)
    assert t.poll(at(1000.0)) == ([], [])


def test_per_request_overrides_and_late_poll():
    t = txn.Transactions(5, max_sends=3)
    t.start(at(0.0), req(t.new_txid(), sig.REGISTER), rto=100, rto_max=200)
    assert t.deadline() == at(0.1)
    assert len(t.poll(at(0.1))[0]) == 1
    assert t.deadline() == at(0.1 + 0.2)
    # A poll long after the deadline resends once, not once per missed deadline.
    resend, dead = t.poll(at(5.0))
    assert len(resend) == 1 and dead == []
    resend, dead = t.poll(at(5.2))
    assert resend == [] and len(dead) == 1
    t2 = txn.Transactions(0, max_sends=1)
    t2.start(at(0.0), req(0))
    assert t2.poll(at(0.5))[1][0].txid == 0


def test_txids_wrap_and_collisions_refused():
    t = txn.Transactions(0xFFFFFFFF)
    assert t.new_txid() == 0xFFFFFFFF
    assert t.new_txid() == 0
    t.start(at(0.0), req(0))
    raises(ValueError, t.start, at(0.0), req(0))
    resp = sig.encode(sig.SigMsg(sig.REGISTER_REJECT, txid=3, cause=1, down=True))
    raises(ValueError, t.start, at(0.0), resp)
    raises(ValueError, t.start, at(0.0), b"OM")
    raises(ValueError, txn.Transactions, 0, rto=0)
    raises(ValueError, txn.Transactions, 0, rto=5, rto_max=4)
    raises(ValueError, txn.Transactions, 0, rto=0.5, rto_max=4.0)  # seconds: no longer the unit
    raises(ValueError, txn.Transactions, 0, max_sends=0)
    raises(ValueError, txn.Transactions, 0, jitter=0.2)
    assert t.cancel(0).txid == 0 and t.cancel(0) is None


def test_jitter_shortens_waits_within_bounds():
    r = Rng(3)

    def rand():
        return r.below(1000) / 1000.0

    t = txn.Transactions(1, jitter=0.25, rand=rand)
    t.start(at(0.0), req(1))
    last = at(0.0)
    base = [500, 1000, 2000, 4000, 4000, 4000, 4000]
    waits = []
    for want in base:
        d = t.deadline()
        w = tdiff(d, last)
        waits.append(w)
        assert want * 3 // 4 <= w <= want and isinstance(w, int)
        last = d
        t.poll(d)
    assert len(set(waits)) > 3  # actually randomised


def test_deadline_is_the_earliest():
    t = txn.Transactions(1)
    t.start(at(0.0), req(t.new_txid()))
    t.start(at(0.2), req(t.new_txid()))
    assert t.deadline() == at(0.5)
    t.on_response(1)
    assert t.deadline() == at(0.7)


def test_response_cache():
    c = txn.ResponseCache(max_entries=4, ttl=10000)
    assert c.lookup(at(0.0), "p", 1) is None
    c.begin(at(0.0), "p", 1)
    assert c.lookup(at(1.0), "p", 1) is txn.PENDING
    c.store(at(2.0), "p", 1, b"answer")
    assert c.lookup(at(3.0), "p", 1) == b"answer"
    assert c.lookup(at(3.0), "q", 1) is None  # keyed by peer too
    assert c.lookup(at(11.99), "p", 1) == b"answer"
    assert c.lookup(at(12.0), "p", 1) is None  # ttl counts from the store
    c.begin(at(20.0), "p", 2)
    c.forget("p", 2)
    assert c.lookup(at(20.0), "p", 2) is None
    raises(ValueError, c.store, at(0.0), "p", 3, txn.PENDING)
    raises(ValueError, txn.ResponseCache, 0)
    raises(ValueError, txn.ResponseCache, 4, 10.0)


def test_response_cache_is_bounded_oldest_first():
    c = txn.ResponseCache(max_entries=8, ttl=100000)
    for i in range(50):
        c.store(at(float(i)), ("10.0.0.1", 5000), i, bytes((i,)))
        assert len(c) <= 8
    assert c.lookup(at(50.0), ("10.0.0.1", 5000), 41) is None
    for i in range(42, 50):
        assert c.lookup(at(50.0), ("10.0.0.1", 5000), i) == bytes((i,))
    # Expired entries leave on the next insertion, even below the size bound.
    c.store(at(200.0), "x", 1, b"y")
    assert len(c) == 1
    c.expire(at(400.0))
    assert len(c) == 0
    # Re-storing one key keeps one entry; its internal queue stays bounded.
    for i in range(1000):
        c.store(at(400.0 + i * 0.001), "k", 1, b"z")
    assert len(c) == 1 and len(c._fifo) - c._head <= 70


def test_replay_window_in_order_and_duplicates():
    w = txn.ReplayWindow(size=64)
    for n in range(1000, 1100):
        assert w.fresh(n)
        w.accept(n)
        raises(Replayed, w.check, n)
    assert w.state()[0] == 1099


def test_replay_window_out_of_order_and_too_old():
    w = txn.ReplayWindow(size=64)
    w.accept(500)
    w.accept(510)
    for n in (509, 501, 447):
        w.accept(n)
    for n in (500, 510, 509, 501, 447):
        raises(Replayed, w.check, n)
    raises(Replayed, w.check, 446)  # 64 behind the highest: too old to tell
    assert w.fresh(502)
    w.accept(700)  # a jump past the window clears it
    assert w.state() == (700, 1)
    assert not w.fresh(636) and w.fresh(637)


def test_replay_window_wraps():
    w = txn.ReplayWindow(size=32)
    w.accept(0xFFFFFFF0)
    w.accept(5)  # 21 ahead, through zero
    assert w.highest == 5
    raises(Replayed, w.check, 0xFFFFFFF0)
    assert w.fresh(0xFFFFFFFF)
    raises(Replayed, w.check, 0xFFFFFFE5)  # 32 behind 5
    w.accept(0xFFFFFFFF)
    raises(Replayed, w.check, 0xFFFFFFFF)


def test_replay_window_state_survives_a_reboot():
    w = txn.ReplayWindow(size=64)
    for n in (1000, 1003, 1001):
        w.accept(n)
    w2 = txn.ReplayWindow(64, *w.state())
    for n in (1000, 1003, 1001):
        raises(Replayed, w2.check, n)
    assert w2.fresh(1002)
    raises(ValueError, txn.ReplayWindow, 0)


def test_replay_window_matches_a_set_model():
    r = Rng(99)
    size = 16
    w = txn.ReplayWindow(size=size)
    seen = set()
    hi = None
    for _ in range(3000):
        n = (1000 + r.below(60)) if r.below(4) else (1000 + r.below(400))
        want = hi is None or (n > hi) or (n > hi - size and n not in seen)
        assert w.fresh(n) == want, (n, hi)
        if want:
            w.accept(n)
            seen.add(n)
            hi = n if hi is None or n > hi else hi


def test_lossy_exchange_executes_each_request_once():
    """Requester and responder over a channel that drops a third of all datagrams, both ways."""
    r = Rng(2024)
    client = txn.Transactions(0x7FFFFFF0, answers=sig.answers)
    cache = txn.ResponseCache()
    executed = {}
    received = {}
    done = {}
    to_server = []
    to_client = []

    def lossy(q, data):
        if r.below(3):
            q.append(data)

    now = T0
    for i in range(40):
        txid = client.new_txid()
        lossy(to_server, client.start(now, req(txid), ctx=i).data)
    while (len(client) or to_server or to_client) and tdiff(now, T0) < 60000:
        while to_server:
            m = sig.decode(to_server.pop(0))
            received[m.txid] = received.get(m.txid, 0) + 1
            hit = cache.lookup(now, "dev", m.txid)
            if hit is txn.PENDING:
                continue
            if hit is None:
                cache.begin(now, "dev", m.txid)
                executed[m.txid] = executed.get(m.txid, 0) + 1
                hit = sig.encode(m.reply(sig.REGISTER_REJECT, cause=sig.CAUSE_BUSY))
                cache.store(now, "dev", m.txid, hit)
            lossy(to_client, hit)
        while to_client:
            m = sig.decode(to_client.pop(0))
            tr = client.on_response(m.txid, m.type)
            if tr is not None:
                done[tr.ctx] = m.txid
        now = tadd(now, 50)
        resend, dead = client.poll(now)
        assert dead == []
        for data in resend:
            lossy(to_server, data)
    assert sorted(done) == list(range(40))
    assert sorted(executed.values()) == [1] * 40
    # Duplicates did arrive (lost responses): the cache, not luck, kept execution to once.
    assert sum(received.values()) > 50
