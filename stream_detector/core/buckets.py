"""Counting reports into event-time buckets per service, with region and problem breakdowns."""

from __future__ import annotations

from collections.abc import Iterator

# What one bucket holds for one service: [reports, {region: n}, {problem: n}].
# A list rather than a class keeps the per-report path to index increments.
ServiceCounts = list
BucketCounts = dict[str, ServiceCounts]


class BucketCounter:
    """Open buckets of one partition, keyed by start time in epoch milliseconds.

    >>> c = BucketCounter(width_ms=60_000)
    >>> c.add("x", 61_000, "US", "login")
    >>> c.add("x", 62_000, None, "login")
    >>> [(start, counts["x"][0]) for start, counts in c.pop_until(120_000)]
    [(60000, 2)]
    """

    __slots__ = ("width_ms", "open")

    def __init__(self, width_ms: int):
        self.width_ms = width_ms
        self.open: dict[int, BucketCounts] = {}

    def add(self, service: str, ts_ms: int, region: str | None, problem: str | None) -> None:
        start = ts_ms - ts_ms % self.width_ms
        bucket = self.open.get(start)
        if bucket is None:
            bucket = self.open[start] = {}
        counts = bucket.get(service)
        if counts is None:
            counts = bucket[service] = [0, {}, {}]
        counts[0] += 1
        if region is not None:
            regions = counts[1]
            regions[region] = regions.get(region, 0) + 1
        if problem is not None:
            problems = counts[2]
            problems[problem] = problems.get(problem, 0) + 1

    def pop_until(self, end_ms: int) -> Iterator[tuple[int, BucketCounts]]:
        """Remove and yield, oldest first, every open bucket that ends at or before `end_ms`."""
        for start in sorted(s for s in self.open if s + self.width_ms <= end_ms):
            yield start, self.open.pop(start)

    def earliest(self) -> int | None:
        return min(self.open) if self.open else None
