"""A bounded latency histogram: log-linear buckets (HDR-style), about 3 % wide, in microseconds.

The CPython relay driver keeps one for the voice it forwards (``relay_server.UdpDriver``): the time
from reading a voice datagram off the socket to handing each copy to a listener's socket. Its
``summary()`` goes into the status endpoint (``driver.voice_latency_us``) with its buckets, so a
reader can subtract two snapshots and get the percentiles of just the window between them
(``LatencyHistogram.from_buckets(after) - before``), as the bench does.

Memory is bounded whatever the values: at most 32 buckets per power of two.
"""

from __future__ import annotations

from typing import Any

SUB_BITS = 5  # 32 sub-buckets per power of two: each bucket at most 1/32 of its value wide
_SUB = 1 << SUB_BITS


def bucket_of(us: int) -> int:
    """The bucket key of a value in whole microseconds (>= 0)."""
    if us < 2 * _SUB:
        return us  # exact below 64 us
    e = us.bit_length() - SUB_BITS - 1
    return (e << SUB_BITS) + (us >> e)


def bucket_bounds(key: int) -> tuple[int, int]:
    """The smallest and largest value (us) that falls in bucket ``key``."""
    if key < 2 * _SUB:
        return key, key
    e = (key >> SUB_BITS) - 1
    sub = key - (e << SUB_BITS)
    return sub << e, ((sub + 1) << e) - 1


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total_us = 0
        self.max_us = 0

    def add_ns(self, ns: int) -> None:
        us = ns // 1000 if ns > 0 else 0
        k = bucket_of(us)
        c = self.counts
        c[k] = c.get(k, 0) + 1
        self.count += 1
        self.total_us += us
        if us > self.max_us:
            self.max_us = us

    def percentile(self, p: float) -> float | None:
        """The upper bound (us) of the bucket holding the ``p``-th percentile (nearest rank)."""
        if not self.count:
            return None
        rank = max(1, -(-self.count * p // 100))
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= rank:
                return float(min(bucket_bounds(k)[1], self.max_us))
        return float(self.max_us)

    def summary(self) -> dict[str, Any]:
        """JSON-able: count, mean, p50/p95/p99, max (us) and the buckets as [[key, count], ...]."""
        return {
            "count": self.count,
            "mean": round(self.total_us / self.count, 1) if self.count else None,
            "p50": self.percentile(50),
            "p95": self.percentile(95),
            "p99": self.percentile(99),
            "max": self.max_us if self.count else None,
            "buckets": [[k, self.counts[k]] for k in sorted(self.counts)],
        }

    @classmethod
    def from_summary(cls, doc: dict[str, Any]) -> LatencyHistogram:
        h = cls()
        for k, n in doc.get("buckets", []):
            h.counts[int(k)] = int(n)
            h.count += int(n)
            h.total_us += int(n) * sum(bucket_bounds(int(k))) // 2
        h.max_us = int(doc.get("max") or 0)
        return h

    def __sub__(self, before: LatencyHistogram) -> LatencyHistogram:
        """What was added after ``before`` (a snapshot of the same histogram). The max is an upper
        bound: the larger of the window's top bucket and the overall max is not known apart."""
        h = LatencyHistogram()
        for k, n in self.counts.items():
            d = n - before.counts.get(k, 0)
            if d > 0:
                h.counts[k] = d
                h.count += d
                h.total_us += d * sum(bucket_bounds(k)) // 2
        if h.counts:
            h.max_us = min(self.max_us, bucket_bounds(max(h.counts))[1])
        return h
