"""The harness itself: the same assertions hold on both runtimes."""

from fwtest import IS_MICROPYTHON, Rng, raises


def test_runtime_is_what_the_harness_says():
    import sys

    assert IS_MICROPYTHON == (sys.implementation.name == "micropython")


def test_seeded_rng_is_identical_on_both_runtimes():
    r = Rng(12345)
    assert [r.u32() for _ in range(3)] == [3336926330, 1697253807, 2816511904]


def test_raises_returns_the_exception():
    def boom():
        raise KeyError("x")

    assert isinstance(raises(KeyError, boom), KeyError)
    raises(AssertionError, raises, KeyError, lambda: None)
