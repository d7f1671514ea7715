"""The rule against one person flooding: a reporter counts once per service per hour.

Hours are clock hours of event time, so the outcome does not depend on the
order reports arrive in, only on which hour they belong to.
"""

from __future__ import annotations

HOUR_MS = 3_600_000


class ReporterFilter:
    """Remembers who reported what in each recent hour.

    The detector applies the rule inline on its hot path: a report with a
    reporter counts only if the reporter is not yet among its service's
    reporters of the report's hour, and then joins them.

    >>> f = ReporterFilter()
    >>> f.services_in_hour(1_000 // HOUR_MS)["x"] = {"a81f": None}
    >>> "a81f" in f.services_in_hour(2_000 // HOUR_MS)["x"]
    True
    >>> f.services_in_hour((HOUR_MS + 1) // HOUR_MS)
    {}
    >>> f.forget_before(HOUR_MS); sorted(f.hours)
    [1]
    """

    __slots__ = ("hours",)

    def __init__(self) -> None:
        # hour -> service -> reporters (dict keys; the values are None). Per
        # service rather than one collection of (service, reporter) pairs, so
        # checking a report builds no tuple. A dict rather than a set because
        # the garbage collector stops tracking a dict that holds only strings,
        # while every full collection would walk each of the reporters of the
        # last hours in sets (40% of its time on the throughput benchmark).
        self.hours: dict[int, dict[str, dict[str, None]]] = {}

    def services_in_hour(self, hour: int) -> dict[str, dict[str, None]]:
        """The reporters already counted per service in `hour` (`ts_ms // HOUR_MS`).

        The caller adds a reporter to its service's reporters when it counts
        its report, and counts none of its later reports that hour.
        """
        services = self.hours.get(hour)
        if services is None:
            services = self.hours[hour] = {}
        return services

    def forget_before(self, ts_ms: int) -> None:
        """Drop hours that end before `ts_ms`; no report can land in them any more."""
        horizon = ts_ms // HOUR_MS
        for hour in [h for h in self.hours if h < horizon]:
            del self.hours[hour]

    def __len__(self) -> int:
        return sum(len(seen) for services in self.hours.values() for seen in services.values())
