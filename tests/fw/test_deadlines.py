"""The deadline heap behind Relay.next_deadline (opmob.deadlines), against a plain scan, on both
runtimes: across the clock's wrap, through re-basing, with its stale entries bounded."""

from fwtest import Rng
from opmob.deadlines import REBASE, Deadlines
from opmob.ticks import MASK, PERIOD, due, earliest, tadd, tdiff


def scan(live):
    d = None
    for k in live:
        d = earliest(d, live[k])
    return d


def test_empty_and_single():
    d = Deadlines()
    assert d.earliest() is None and d.first_due(0) is None and len(d) == 0
    d.set("a", 500)
    assert d.earliest() == 500 and d.get("a") == 500 and len(d) == 1
    assert d.first_due(499) is None and d.first_due(500) == "a"
    d.set("a", None)
    assert d.earliest() is None and d.get("a") is None and len(d) == 0
    d.set("gone", None)  # no deadline for an unknown key: nothing to do
    assert len(d) == 0


def test_order_across_the_wrap():
    d = Deadlines()
    before = PERIOD - 100  # numerically large, but earlier
    after = 50  # numerically small, but later
    d.set("after", after)
    d.set("before", before)
    assert d.earliest() == before
    assert d.first_due(PERIOD - 101) is None and d.first_due(PERIOD - 100) == "before"
    d.set("before", None)
    assert d.earliest() == after and d.first_due(MASK) is None and d.first_due(50) == "after"


def test_random_updates_match_a_scan_and_stay_bounded():
    for seed in (1, 5, 99):
        r = Rng(seed)
        d = Deadlines()
        live = {}
        now = PERIOD - 20000 + r.below(10000)  # the run crosses the wrap
        for step in range(4000):
            now = tadd(now, r.below(40))
            k = r.below(50)
            x = r.below(10)
            if x == 0:
                d.set(k, None)
                live.pop(k, None)
            else:
                t = tadd(now, r.below(5000))
                d.set(k, t)
                live[k] = t
            if step % 7 == 0:
                # What the relay's poll does: take what is due and move it on.
                k2 = d.first_due(now)
                while k2 is not None:
                    assert due(now, live[k2])
                    t = tadd(now, 1 + r.below(3000))
                    d.set(k2, t)
                    live[k2] = t
                    k2 = d.first_due(now)
                s = scan(live)
                assert s is None or not due(now, s)
            assert d.earliest() == scan(live), (seed, step)
            assert len(d) == len(live)
            assert len(d._heap) <= 2 * len(live) + 65


def test_rebase_after_days_and_far_deadlines():
    d = Deadlines()
    t0 = 1000
    d.set("a", t0)
    d.set("b", tadd(t0, 10))
    # Days later (the relay slept, or just ran): deadlines far from the old reference.
    later = tadd(t0, REBASE + 12345)
    d.set("a", later)
    d.set("c", tadd(later, 5))
    assert d.earliest() == tadd(t0, 10)
    d.set("b", None)
    assert d.earliest() == later and tdiff(d._ref, t0) > REBASE - 1
    far = tadd(later, REBASE + REBASE // 2)  # beyond REBASE from the reference: re-based again
    d.set("c", far)
    assert d.earliest() == later
    d.set("a", None)
    assert d.earliest() == far
