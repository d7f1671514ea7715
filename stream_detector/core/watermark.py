"""Event time for one partition: the watermark, and how it moves when input goes quiet.

The watermark is the highest event time seen minus the allowed lateness:
every bucket that ends at or before it can close. When a partition stops
receiving reports its watermark would freeze and the last buckets, perhaps
the start of an outage, would never close. So after `idle_timeout` of wall
time without new event time, event time is assumed to advance with the wall
clock from where it stood. The wall clock is passed in, never read here, so
tests move time by hand.
"""

from __future__ import annotations


class EventClock:
    """Watermark of one partition.

    >>> clock = EventClock(lateness_ms=5_000, idle_timeout_ms=10_000)
    >>> clock.observe(100_000, wall_ms=0)
    >>> clock.watermark(wall_ms=0)
    95000
    >>> clock.watermark(wall_ms=30_000)   # quiet for 30 s of wall time
    125000
    """

    __slots__ = ("lateness_ms", "idle_timeout_ms", "max_event_ms", "wall_at_max_ms")

    def __init__(self, lateness_ms: int, idle_timeout_ms: int):
        self.lateness_ms = lateness_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.max_event_ms: int | None = None
        self.wall_at_max_ms = 0

    def observe(self, event_ms: int, wall_ms: int) -> None:
        if self.max_event_ms is None or event_ms > self.max_event_ms:
            self.max_event_ms = event_ms
            self.wall_at_max_ms = wall_ms

    def watermark(self, wall_ms: int | None = None) -> int | None:
        """Event time up to which buckets may close; None before the first report."""
        if self.max_event_ms is None:
            return None
        event_now = self.max_event_ms
        if wall_ms is not None:
            quiet_ms = wall_ms - self.wall_at_max_ms
            if quiet_ms > self.idle_timeout_ms:
                event_now += quiet_ms
        return event_now - self.lateness_ms
