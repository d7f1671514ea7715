"""The rule against one person flooding: a reporter counts once per service per hour.

Hours are clock hours of event time, so the outcome does not depend on the
order reports arrive in, only on which hour they belong to.
"""

from __future__ import annotations

HOUR_MS = 3_600_000


class ReporterFilter:
    """Remembers who reported what in each recent hour.

    >>> f = ReporterFilter()
    >>> f.first_in_hour("x", "a81f", 1_000), f.first_in_hour("x", "a81f", 2_000)
    (True, False)
    >>> f.first_in_hour("x", "a81f", HOUR_MS + 1), f.first_in_hour("y", "a81f", 2_000)
    (True, True)
    """

    __slots__ = ("hours",)

    def __init__(self) -> None:
        # hour -> service -> reporters: a set per service rather than one set of
        # (service, reporter) pairs, so checking a report builds no tuple.
        self.hours: dict[int, dict[str, set[str]]] = {}

    def first_in_hour(self, service: str, reporter: str, ts_ms: int) -> bool:
        hour = ts_ms // HOUR_MS
        services = self.hours.get(hour)
        if services is None:
            services = self.hours[hour] = {}
        seen = services.get(service)
        if seen is None:
            services[service] = {reporter}
            return True
        if reporter in seen:
            return False
        seen.add(reporter)
        return True

    def forget_before(self, ts_ms: int) -> None:
        """Drop hours that end before `ts_ms`; no report can land in them any more."""
        horizon = ts_ms // HOUR_MS
        for hour in [h for h in self.hours if h < horizon]:
            del self.hours[hour]

    def __len__(self) -> int:
        return sum(len(seen) for services in self.hours.values() for seen in services.values())
