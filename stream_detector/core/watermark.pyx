# cython: language_level=3
"""Event time for one partition: the watermark, and how it moves when input goes quiet.

The watermark is the highest event time seen minus the allowed lateness:
every bucket that ends at or before it can close, and a report whose bucket
did is late. When a partition stops receiving reports its watermark would
freeze and the last buckets, perhaps the start of an outage, would never
close. So after `idle_timeout` of wall time without new event time, event
time is assumed to advance with the wall clock from where it stood. The wall
clock is passed in, never read here, so tests move time by hand.

Event time is what producers claim, so one report stamped an hour ahead
would move the watermark an hour ahead: every open bucket would close early
and every honest report after it would be late. So, when a wall clock is
given, the clock takes no event time beyond the wall clock plus the allowed
lateness; such a report still counts in its own bucket, which closes when
time gets there. The lateness is the bound because a report stamped at the
wall clock can never be late under it. A replay without a wall clock (a
backtest) takes event time as it comes.

Compiled because the counting loop asks it about every report
(`observe`, `passed`).
"""


cdef class EventClock:
    """Watermark of one partition.

    >>> clock = EventClock(lateness_ms=5_000, idle_timeout_ms=10_000)
    >>> clock.load_state([100_000, None], wall_ms=0)
    >>> clock.watermark(wall_ms=0)
    95000
    >>> clock.watermark(wall_ms=30_000)   # quiet for 30 s of wall time
    125000
    >>> clock.state()
    [100000, 0]
    """

    def __init__(self, long long lateness_ms, long long idle_timeout_ms):
        self.lateness_ms = lateness_ms
        self.idle_timeout_ms = idle_timeout_ms
        self._max_event_ms = -1
        self.wall_at_max_ms = 0

    cdef void observe(self, long long event_ms, long long wall_ms) noexcept:
        """A report of `event_ms` counted at `wall_ms` (negative: no wall clock)."""
        if wall_ms >= 0 and event_ms > wall_ms + self.lateness_ms:
            event_ms = wall_ms + self.lateness_ms
        if event_ms > self._max_event_ms:
            self._max_event_ms = event_ms
            self.wall_at_max_ms = wall_ms if wall_ms >= 0 else 0

    cdef bint passed(self, long long bucket_end_ms) noexcept:
        """Whether event time alone has closed the bucket ending at `bucket_end_ms`, so
        a report of it is late (deterministic for a given message order)."""
        return self._max_event_ms >= bucket_end_ms + self.lateness_ms

    @property
    def max_event_ms(self):
        """The highest event time counted; None before the first report."""
        return None if self._max_event_ms < 0 else self._max_event_ms

    def watermark(self, wall_ms=None):
        """Event time up to which buckets may close; None before the first report."""
        if self._max_event_ms < 0:
            return None
        event_now = self._max_event_ms
        if wall_ms is not None:
            quiet_ms = wall_ms - self.wall_at_max_ms
            if quiet_ms > self.idle_timeout_ms:
                event_now += quiet_ms
        return event_now - self.lateness_ms

    def state(self):
        """[highest event time or None, wall time it was seen at]."""
        return [self.max_event_ms, self.wall_at_max_ms]

    def load_state(self, state, wall_ms):
        """Take the event time of a `state()`. The wall clock of the process that wrote
        it means nothing here: quiet time counts from `wall_ms`, the restore, or a
        replay would close buckets early."""
        max_event_ms, _ = state
        self._max_event_ms = -1 if max_event_ms is None else max_event_ms
        self.wall_at_max_ms = wall_ms
