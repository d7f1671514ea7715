"""Event-time buckets of report counts per service, with region and problem breakdowns.

The detector increments the counts inline on its hot path; this class holds
the open buckets and opens and hands them out.
"""

from __future__ import annotations

from collections.abc import Iterator

# What one bucket holds for one service: [reports, {region: n}, {problem: n}].
# A list rather than a class keeps the per-report path to index increments.
ServiceCounts = list
BucketCounts = dict[str, ServiceCounts]


class BucketCounter:
    """Open buckets of one partition, keyed by start time in epoch milliseconds.

    >>> c = BucketCounter(width_ms=60_000)
    >>> c.bucket(60_000)["x"] = [2, {"US": 1}, {"login": 2}]
    >>> c.bucket(60_000) is c.bucket(60_000)
    True
    >>> [(start, counts["x"][0]) for start, counts in c.pop_until(120_000)]
    [(60000, 2)]
    """

    __slots__ = ("width_ms", "open")

    def __init__(self, width_ms: int):
        self.width_ms = width_ms
        self.open: dict[int, BucketCounts] = {}

    def bucket(self, start_ms: int) -> BucketCounts:
        """The open bucket starting at `start_ms`, created empty on first use."""
        bucket = self.open.get(start_ms)
        if bucket is None:
            bucket = self.open[start_ms] = {}
        return bucket

    def pop_until(self, end_ms: int) -> Iterator[tuple[int, BucketCounts]]:
        """Remove and yield, oldest first, every open bucket that ends at or before `end_ms`."""
        for start in sorted(s for s in self.open if s + self.width_ms <= end_ms):
            yield start, self.open.pop(start)

    def earliest(self) -> int | None:
        return min(self.open) if self.open else None
