"""Event-time buckets of report counts per service, with region and problem breakdowns.

The detector counts into the buckets inline on its hot path; this class
holds the open buckets and opens and hands them out. A bucket is a
`BucketTally`: counts kept by the ids of the partition's `SeriesIndex`,
read as `{service: [reports, {region: n}, {problem: n}]}`.
"""

from __future__ import annotations

from stream_detector.core.tally import BucketTally, SeriesIndex


class BucketCounter:
    """Open buckets of one partition, keyed by start time in epoch milliseconds.

    >>> c = BucketCounter(60_000, SeriesIndex(iter(range(10)).__next__, regional=False))
    >>> c.bucket(60_000).add("x", 2, {"US": 1}, {"login": 2})
    >>> c.bucket(60_000) is c.bucket(60_000)
    True
    >>> c.open[60_000]["x"]
    [2, {'US': 1}, {'login': 2}]
    """

    __slots__ = ("width_ms", "index", "open")

    def __init__(self, width_ms: int, index: SeriesIndex):
        self.width_ms = width_ms
        self.index = index
        self.open: dict[int, BucketTally] = {}

    def bucket(self, start_ms: int) -> BucketTally:
        """The open bucket starting at `start_ms`, created empty on first use."""
        bucket = self.open.get(start_ms)
        if bucket is None:
            bucket = self.open[start_ms] = BucketTally(self.index)
        return bucket

    def earliest(self) -> int | None:
        return min(self.open) if self.open else None
