# cython: language_level=3
"""Event-time buckets of report counts per service, with region and problem breakdowns.

Owns the rule that puts a report in a bucket (the bucket of width
`width_ms` holding its timestamp) and the open buckets. A bucket is a
`BucketTally`: counts kept by the ids of the partition's `SeriesIndex`,
read as `{service: [reports, {region: n}, {problem: n}]}`. Compiled because
the counting loop asks it for the bucket of every report (`start_of`,
`bucket_at`).
"""

from stream_detector.core.tally cimport BucketTally, SeriesIndex


cdef class BucketCounter:
    """Open buckets of one partition, keyed by start time in epoch milliseconds.

    >>> from stream_detector.core.tally import SeriesIndex
    >>> c = BucketCounter(60_000, SeriesIndex(iter(range(10)).__next__, regional=False))
    >>> c.bucket(60_000).add("x", 2, {"US": 1}, {"login": 2})
    >>> c.bucket(60_000) is c.bucket(60_000), c.bucket_start(119_999)
    (True, 60000)
    >>> c.state()
    [[60000, {'x': [2, {'US': 1}, {'login': 2}]}]]
    """

    def __init__(self, long long width_ms, SeriesIndex index not None):
        self.width_ms = width_ms
        self.index = index
        self.open = {}

    cdef long long start_of(self, long long ts_ms) noexcept:
        """Start of the bucket holding `ts_ms` (a valid timestamp, so not negative)."""
        return ts_ms - ts_ms % self.width_ms

    cdef BucketTally bucket_at(self, long long start_ms):
        """The open bucket starting at `start_ms`, created empty on first use."""
        cdef BucketTally bucket = self.open.get(start_ms)
        if bucket is None:
            bucket = self.open[start_ms] = BucketTally(self.index)
        return bucket

    def bucket_start(self, long long ts_ms):
        return self.start_of(ts_ms)

    def bucket(self, long long start_ms):
        return self.bucket_at(start_ms)

    def earliest(self):
        return min(self.open) if self.open else None

    def state(self):
        """[[start, {service: [reports, {region: n}, {problem: n}]}], ...] of the open buckets."""
        return [[start, counts.to_dict()] for start, counts in self.open.items()]

    def load_state(self, state):
        """Add the open buckets of a `state()`."""
        for start, counts in state:
            bucket = self.bucket_at(start)
            for service, (reports, regions, problems) in counts.items():
                bucket.add(service, reports, regions, problems)
