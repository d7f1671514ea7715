"""The detector core for one partition: reports and time in, scores and alerts out.

Everything a partition needs lives here (open buckets, its event clock, the
reporter filter, one model per series, open incidents), so a partition's
state can move between processes as one piece. Nothing here knows Kafka,
asyncio or HTTP; `backtest` and the Kafka shell drive the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from stream_detector.core.buckets import BucketCounter, BucketCounts
from stream_detector.core.events import (
    BAD_TIMESTAMP,
    MAX_FIELD_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    InvalidReport,
    decode_report,
)
from stream_detector.core.incidents import IncidentPolicy, IncidentTracker, SeriesKey
from stream_detector.core.models import (
    DEFAULT_MODEL,
    ModelFactory,
    Scored,
    SeriesModel,
    model_factory,
)
from stream_detector.core.reporters import HOUR_MS, ReporterFilter
from stream_detector.core.watermark import EventClock

ACCEPTED = "accepted"
LATE = "late"
DUPLICATE = "duplicate"
INVALID = "invalid"
OUTCOMES = (ACCEPTED, INVALID, LATE, DUPLICATE)


@dataclass(frozen=True)
class DetectorConfig:
    bucket_ms: int = 60_000
    lateness_ms: int = 10_000
    """How late a report may arrive, in event time, and still count."""
    idle_timeout_ms: int = 30_000
    """Wall time without new event time after which event time follows the wall clock."""
    max_future_ms: int = 3_600_000
    """Reports stamped further than this ahead of the wall clock are clock bugs."""
    model: str = DEFAULT_MODEL
    regions: bool = True
    """Also score every (service, region) series, so regional outages surface."""
    policy: IncidentPolicy = field(default_factory=IncidentPolicy)


class SeriesScore(NamedTuple):
    service: str
    region: str | None
    reports: int
    expected: float
    spread: float
    score: float
    severity: str | None
    """Severity of the open incident on this series, None when there is none."""


class ClosedBucket(NamedTuple):
    start_ms: int
    counts: BucketCounts
    scores: list[SeriesScore]
    alerts: list[dict]


class PartitionDetector:
    """Counts, scores and tracks incidents for the services of one partition."""

    def __init__(self, config: DetectorConfig, factory: ModelFactory | None = None):
        self.config = config
        self.factory = factory or model_factory(config.model)
        self.counter = BucketCounter(config.bucket_ms)
        self.clock = EventClock(config.lateness_ms, config.idle_timeout_ms)
        self.reporters = ReporterFilter()
        self.incidents = IncidentTracker(config.policy)
        self.models: dict[SeriesKey, SeriesModel] = {}
        self.last_bucket_ms: dict[SeriesKey, int] = {}
        # Start of the oldest bucket not closed yet; None until the first close.
        self.next_close_ms: int | None = None

    def add(self, raw: bytes, wall_ms: int | None = None) -> str:
        """Count one message value; raises `InvalidReport` for anything that is not a report."""
        late, duplicate, invalid = self._count((raw,), wall_ms)
        if invalid:
            raise invalid[0][1]
        return LATE if late else DUPLICATE if duplicate else ACCEPTED

    def add_many(
        self, values: Sequence[bytes], wall_ms: int | None = None
    ) -> tuple[dict[str, int], list[tuple[int, InvalidReport]]]:
        """Count message values in order, exactly as calling `add` on each would.

        Returns the number of values per outcome and, for every value that is
        not a report, its index in `values` with the `InvalidReport` saying why.
        """
        late, duplicate, invalid = self._count(values, wall_ms)
        accepted = len(values) - late - duplicate - len(invalid)
        counts = {ACCEPTED: accepted, INVALID: len(invalid), LATE: late, DUPLICATE: duplicate}
        return counts, invalid

    def _count(
        self, values: Sequence[bytes], wall_ms: int | None
    ) -> tuple[int, int, list[tuple[int, InvalidReport]]]:
        """Count reports; returns how many were late and duplicate, and the invalid ones.

        This loop is the per-report hot path, so it binds everything it needs
        to locals once, checks the common shape of a report inline (falling
        back to `decode_report` only to name what is wrong or to convert an
        ISO timestamp), and inlines the fast paths of the reporter filter,
        the bucket counter and the event clock.
        """
        width = self.config.bucket_ms
        # Newest acceptable timestamp: the valid range and the future limit in one bound.
        newest_ms = MAX_TS_MS - 1
        if wall_ms is not None and wall_ms + self.config.max_future_ms < newest_ms:
            newest_ms = wall_ms + self.config.max_future_ms
        clock = self.clock
        lateness_ms = clock.lateness_ms
        # -1 and 0 stand for "no report yet" and "nothing closed yet": every
        # timestamp is later than both, so no bucket is late against them.
        max_event_ms = -1 if clock.max_event_ms is None else clock.max_event_ms
        wall_at_max_ms = clock.wall_at_max_ms
        observed_wall_ms = wall_ms if wall_ms is not None else 0
        next_close_ms = self.next_close_ms or 0
        counter = self.counter
        open_buckets = counter.open
        reporters = self.reporters
        loads = orjson.loads
        # The bucket and the reporter hour of the previous report, as ranges of
        # event time: consecutive reports almost always share both, and
        # comparing timestamps is much cheaper than dividing them. `bucket` is
        # None until a report counts in it, so no empty bucket is ever opened.
        bucket_start = bucket_end = bucket_late_ms = hour_start = hour_end = -1
        bucket: BucketCounts | None = None
        seen_in_hour: dict[str, dict[str, None]] = {}
        late = duplicate = 0
        invalid: list[tuple[int, InvalidReport]] = []
        try:
            for index, raw in enumerate(values):
                size = len(raw)
                try:
                    doc = loads(raw) if size <= MAX_MESSAGE_BYTES else None
                except orjson.JSONDecodeError:
                    doc = None
                if type(doc) is dict:
                    service = doc.get("service")
                    ts_ms = doc.get("ts")
                    region = doc.get("region")
                    problem = doc.get("problem")
                    reporter = doc.get("reporter")
                else:
                    service = None  # fails the check below, so decode_report names the problem
                # The common shape of a report, checked inline. A message of at
                # most MAX_FIELD_CHARS bytes cannot hold a longer string.
                if not (
                    type(service) is str and service
                    and type(ts_ms) is int and MIN_TS_MS <= ts_ms <= newest_ms
                    and (region is None or type(region) is str and region)
                    and (problem is None or type(problem) is str and problem)
                    and (reporter is None or type(reporter) is str and reporter)
                    and (size <= MAX_FIELD_CHARS or _fields_fit(service, region, problem, reporter))
                ):
                    try:
                        service, ts_ms, region, problem, reporter = decode_report(raw)
                        if ts_ms > newest_ms:
                            raise InvalidReport(BAD_TIMESTAMP, f"'ts' {ts_ms} is in the future")
                    except InvalidReport as exc:
                        invalid.append((index, exc))
                        continue
                if not bucket_start <= ts_ms < bucket_end:
                    bucket_start = ts_ms - ts_ms % width
                    bucket_end = bucket_start + width
                    # The bucket is late by event time once the clock reaches this.
                    bucket_late_ms = bucket_end + lateness_ms
                    bucket = open_buckets.get(bucket_start)
                # Late by event time alone (deterministic for a given message order), or
                # late because the wall clock already closed its bucket while the
                # partition was quiet.
                if max_event_ms >= bucket_late_ms or bucket_start < next_close_ms:
                    late += 1
                    continue
                if reporter is not None:
                    if not hour_start <= ts_ms < hour_end:
                        hour = ts_ms // HOUR_MS
                        hour_start = hour * HOUR_MS
                        hour_end = hour_start + HOUR_MS
                        seen_in_hour = reporters.services_in_hour(hour)
                    seen = seen_in_hour.get(service)
                    if seen is None:
                        seen_in_hour[service] = {reporter: None}
                    elif reporter in seen:
                        duplicate += 1
                        continue
                    else:
                        seen[reporter] = None
                if bucket is None:
                    bucket = counter.bucket(bucket_start)
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
                if ts_ms > max_event_ms:
                    max_event_ms = ts_ms
                    wall_at_max_ms = observed_wall_ms
        finally:
            if max_event_ms >= 0:
                clock.max_event_ms = max_event_ms
                clock.wall_at_max_ms = wall_at_max_ms
        return late, duplicate, invalid

    def advance(self, wall_ms: int | None = None) -> list[ClosedBucket]:
        """Close every bucket the watermark has passed, oldest first, and score it."""
        watermark = self.clock.watermark(wall_ms)
        if watermark is None:
            return []
        return self._close_until(watermark)

    def flush(self) -> list[ClosedBucket]:
        """Close everything still open, as at the end of an input file."""
        last = self.counter.earliest()
        if last is None:
            return []
        end = max(self.counter.open) + self.config.bucket_ms
        # Keep stepping until open incidents have seen their calm buckets too.
        end += self.config.bucket_ms * self.config.policy.calm_buckets
        return self._close_until(end)

    def _close_until(self, watermark: int) -> list[ClosedBucket]:
        width = self.config.bucket_ms
        if self.next_close_ms is None:
            earliest = self.counter.earliest()
            if earliest is None or earliest + width > watermark:
                return []
            self.next_close_ms = earliest
        closed: list[ClosedBucket] = []
        while self.next_close_ms + width <= watermark:
            start = self.next_close_ms
            counts = self.counter.open.pop(start, None)
            if counts is None and not self.incidents.open:
                # Nothing to score until the next open bucket: skip the empty
                # stretch in one step; quiet series catch up lazily.
                earliest = self.counter.earliest()
                limit = watermark - watermark % width
                self.next_close_ms = limit if earliest is None else min(earliest, limit)
                if self.next_close_ms == start:
                    break
                continue
            closed.append(self._score_bucket(start, counts or {}))
            self.next_close_ms = start + width
        self.reporters.forget_before(self.next_close_ms)
        return closed

    def _score_bucket(self, start: int, counts: BucketCounts) -> ClosedBucket:
        scores: list[SeriesScore] = []
        alerts: list[dict] = []
        seen: set[SeriesKey] = set()
        for service, (reports, regions, problems) in counts.items():
            key = (service, None)
            scored = self._score(key, start, reports)
            regional: dict[str, Scored] = {}
            if self.config.regions:
                regional = {r: self._score((service, r), start, n) for r, n in regions.items()}
            concentrated = self._concentrated_regions(key, reports, scored, regions, regional)
            self._track(key, start, reports, scored, regions, problems, not concentrated,
                        scores, alerts)
            seen.add(key)
            for region, region_scored in regional.items():
                n = regions[region]
                self._track((service, region), start, n, region_scored, {region: n}, problems,
                            region in concentrated, scores, alerts)
                seen.add((service, region))
        # Series in an incident are scored through empty buckets too, so they can resolve.
        for key in [k for k in self.incidents.open if k not in seen]:
            scored = self._score(key, start, 0)
            self._track(key, start, 0, scored, {}, {}, False, scores, alerts)
        return ClosedBucket(start, counts, scores, alerts)

    def _concentrated_regions(
        self,
        key: SeriesKey,
        reports: int,
        scored: Scored,
        regions: dict[str, int],
        regional: dict[str, Scored],
    ) -> set[str]:
        """Regions that explain most of this bucket's excess on their own.

        Then the outage is regional: it opens incidents per region, naming
        them, instead of one service-wide incident. A service-wide outage lifts
        every region (or the regions that make up most of the normal traffic)
        and is reported once, for the service.
        """
        if not regional or key in self.incidents.open:
            return set()
        policy = self.config.policy
        anomalous = {
            r for r, sc in regional.items()
            if sc.score >= policy.open_score
            and regions[r] > sc.expected + policy.band_spreads * sc.spread
        }
        if not anomalous or len(anomalous) > policy.max_regional:
            return set()
        # Regions that carry most of the normal traffic are the service itself.
        normal_share = sum(regional[r].expected for r in anomalous) / max(scored.expected, 1e-9)
        if normal_share >= 0.5:
            return set()
        excess = max(reports - scored.expected, 0.0)
        regional_excess = sum(max(regions[r] - regional[r].expected, 0.0) for r in anomalous)
        return anomalous if regional_excess >= policy.regional_share * excess else set()

    def _score(self, key: SeriesKey, start: int, reports: int) -> Scored:
        width = self.config.bucket_ms
        model = self.models.get(key)
        if model is None:
            model = self.models[key] = self.factory(width / 1000)
        else:
            last = self.last_bucket_ms[key]
            if start - last > width:
                model.learn_zeros((last + width) / 1000, start / 1000)
        self.last_bucket_ms[key] = start
        return model.score_one(start / 1000, reports)

    def _track(
        self,
        key: SeriesKey,
        start: int,
        reports: int,
        scored: Scored,
        regions: dict[str, int],
        problems: dict[str, int],
        may_open: bool,
        scores: list[SeriesScore],
        alerts: list[dict],
    ) -> None:
        """Move the series' incident, then let its model learn as much as the incident allows."""
        alert, weight = self.incidents.observe(
            key, start, self.config.bucket_ms, reports, scored, regions, problems, may_open
        )
        self.models[key].learn_one(start / 1000, reports, weight)
        if alert is not None:
            alerts.append(alert)
        incident = self.incidents.open.get(key)
        scores.append(
            SeriesScore(key[0], key[1], reports, scored.expected, scored.spread, scored.score,
                        incident.severity if incident else None)
        )



def _fields_fit(*fields: str | None) -> bool:
    return all(field is None or len(field) <= MAX_FIELD_CHARS for field in fields)
