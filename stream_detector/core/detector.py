"""The detector core for one partition: reports and time in, scores and alerts out.

Everything a partition needs lives here (open buckets, its event clock, the
reporter filter, a model bank row per series, open incidents), so a partition's
state can move between processes as one piece. Nothing here knows Kafka,
asyncio or HTTP; `backtest` and the Kafka shell drive the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from stream_detector.core._counting import count_reports
from stream_detector.core.buckets import BucketCounter
from stream_detector.core.events import InvalidReport
from stream_detector.core.evidence import EvidenceTest
from stream_detector.core.incidents import (
    Alert,
    Change,
    IncidentPolicy,
    IncidentTracker,
    SeriesKey,
)
from stream_detector.core.models import DEFAULT_MODEL, ModelBank, Scored, model_bank
from stream_detector.core.models.bank import BankScores
from stream_detector.core.reporters import ReporterFilter
from stream_detector.core.shape import QuarterShape
from stream_detector.core.tally import BucketTally, SeriesIndex
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


class BucketSeries:
    """The series one closed bucket scores, in order, with their counts and bank rows.

    Each service with reports comes first, then its regions (in the order of
    their first report), then the series of open incidents that had no
    reports, so they can resolve. The order, rows and reports come from the
    tally as arrays; keys are built only when asked for: most buckets never
    need them.
    """

    __slots__ = ("counts", "index", "rows", "reports", "first", "services", "region_at",
                 "regions", "extra", "_keys")

    def __init__(self, counts: BucketTally):
        self.counts = counts
        self.index = counts.index
        (self.rows, self.reports, self.first, self.services, self.region_at,
         self.regions) = counts.listing()
        self.extra: list[SeriesKey] = []
        """Series of open incidents without reports in this bucket, at the end."""
        self._keys: list[SeriesKey] | None = None

    def add_extra(self, keys: list[SeriesKey], rows: list[int]) -> None:
        self.extra.extend(keys)
        self.rows = np.concatenate([self.rows, np.array(rows, dtype=np.intp)])
        self.reports = np.concatenate([self.reports, np.zeros(len(keys), dtype=np.int64)])
        self._keys = None

    @property
    def keys(self) -> list[SeriesKey]:
        if self._keys is None:
            service_name = self.index.services.name
            regions = self.index.regions
            keys: list = [None] * (len(self.rows) - len(self.extra))
            for at, service in zip(self.first.tolist(), self.services.tolist(), strict=True):
                keys[at] = (service_name(service), None)
            for at, region in zip(self.region_at.tolist(), self.regions.tolist(), strict=True):
                if at >= 0:
                    keys[at] = (service_name(regions.scope(region)), regions.name(region))
            self._keys = keys + self.extra
        return self._keys

    def service_positions(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The service-wide series of the bucket: their service ids and positions, the
        services with reports first (how many is the third value), then the services
        of open incidents without reports."""
        ids, positions = self.services, self.first
        offset = len(self.rows) - len(self.extra)
        quiet = [(self.index.service_id(service), offset + j)
                 for j, (service, region) in enumerate(self.extra) if region is None]
        if quiet:
            ids = np.concatenate([ids, np.array([i for i, _ in quiet], dtype=np.intp)])
            positions = np.concatenate([positions, np.array([p for _, p in quiet], dtype=np.intp)])
        return ids, positions, len(self.services)

    def index_of(self, key: SeriesKey) -> int | None:
        """The position of a series in the bucket; None if the bucket does not score it."""
        service, region = key
        service_id = self.index.service_id(service)
        entry = self.counts.service_entry(service_id) if service_id >= 0 else -1
        if entry >= 0:
            if region is None:
                return int(self.first[entry])
            region_id = self.index.regions.id_of(service_id, region)
            if region_id >= 0:
                at = self.counts.region_entry(region_id)
                if at >= 0 and self.region_at[at] >= 0:
                    return int(self.region_at[at])
        if key in self.extra:
            return len(self.rows) - len(self.extra) + self.extra.index(key)
        return None


class ClosedBucket:
    """One closed bucket of one partition: its counts, the alerts, and every series scored.

    The scores stay in the arrays the model bank returned; `scores` makes
    them objects only for whoever asks (plots, tests), so the hot path
    builds none.
    """

    __slots__ = ("start_ms", "counts", "alerts", "series", "scored", "severities")

    def __init__(
        self,
        start_ms: int,
        series: BucketSeries,
        alerts: list[Alert],
        scored: BankScores,
        severities: dict[int, str],
    ):
        self.start_ms = start_ms
        self.counts = series.counts
        self.series = series
        self.alerts = alerts
        self.scored = scored
        self.severities = severities
        """Severity of the open incident of the series at each index, where one is open."""

    @property
    def scores(self) -> list[SeriesScore]:
        score, expected, spread = (a.tolist() for a in self.scored)
        reports = self.series.reports.tolist()
        return [
            SeriesScore(key[0], key[1], reports[i], expected[i], spread[i], score[i],
                        self.severities.get(i))
            for i, key in enumerate(self.series.keys)
        ]


class PartitionDetector:
    """Counts, scores and tracks incidents for the services of one partition."""

    def __init__(self, config: DetectorConfig):
        self.config = config
        # Every series' model is a row of one bank: per service, the row of
        # the service-wide series and the rows of its regions, given when the
        # series' first report is counted.
        self.bank: ModelBank = model_bank(config.model, config.bucket_ms / 1000)
        self.index = SeriesIndex(self.bank.add, config.regions)
        self.counter = BucketCounter(config.bucket_ms, self.index)
        self.clock = EventClock(config.lateness_ms, config.idle_timeout_ms)
        self.reporters = ReporterFilter()
        self.incidents = IncidentTracker(config.policy)
        # The sequential test that turns the model's expectations into evidence.
        self.evidence = EvidenceTest(config.bucket_ms, _warmup_ms(self.bank, config.bucket_ms))
        # Each service's quarter-hour shape, shared by its regions.
        self.shape = QuarterShape(config.bucket_ms)
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

        A report counts in the open bucket of its timestamp unless that bucket
        is late (the event clock, or the wall clock of a quiet partition, has
        passed its end plus the allowed lateness) or its reporter already
        reported this service in the same clock hour. This is the per-report
        hot path, so it is compiled (`_counting.count_reports`).
        """
        return count_reports(self, values, wall_ms)

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
            if counts is None:  # open incidents still need this bucket's zero
                counts = BucketTally(self.index)
            closed.append(self._score_bucket(start, counts))
            self.next_close_ms = start + width
        self.reporters.forget_before(self.next_close_ms)
        return closed

    def _score_bucket(self, start: int, counts: BucketTally) -> ClosedBucket:
        series = self._series_of(counts)
        t = start / 1000
        bank = self.bank
        x = series.reports.astype(float)
        model = bank.score(series.rows, t, x, catch_up=True)
        service_ids = self._service_ids(series)
        factor = self.shape.factor(service_ids, start)
        expected = model.expected * factor
        spread = model.spread * np.sqrt(factor)
        # Incidents are decided on accumulated evidence, not on the model's own score.
        evidence, excess = self.evidence.update(series.rows, start, x, expected, spread)
        scored = BankScores(evidence, expected, spread)
        weights = np.ones(len(series.rows))
        alerts: list[Alert] = []
        severities: dict[int, str] = {}
        # Incident rules in Python only for the few series where something can
        # happen: a score high enough to open, an open or pending incident.
        hot = set(np.flatnonzero(scored.score >= self.config.policy.open_score).tolist())
        open_, pending = self.incidents.open, self.incidents.pending
        for key in [*open_, *pending]:
            i = series.index_of(key)
            if i is not None:
                hot.add(i)
        keys = series.keys if hot else []
        reports = series.reports
        # Per service of a hot series: its counts, and its regions that
        # explain its excess on their own.
        services: dict[str, tuple[list | None, set[str]]] = {}
        for i in sorted(hot):
            key = keys[i]
            service, region = key
            if service not in services:
                service_counts = counts.get(service)
                concentrated = set() if service_counts is None else self._concentrated_regions(
                    service, series, service_counts, scored
                )
                services[service] = service_counts, concentrated
            service_counts, concentrated = services[service]
            if service_counts is None:  # an open incident through an empty bucket
                regions, problems, may_open = {}, {}, False
            else:
                _, service_regions, problems = service_counts
                if region is None:
                    regions, may_open = service_regions, not concentrated
                else:
                    regions = {region: int(reports[i])}
                    may_open = region in concentrated
            one = Scored(float(scored.score[i]), float(scored.expected[i]),
                         float(scored.spread[i]))
            alert, weight = self.incidents.observe(
                key, start, self.config.bucket_ms, int(reports[i]), one, regions, problems,
                may_open, float(excess[i]),
            )
            weights[i] = weight
            if alert is not None:
                alerts.append(alert)
                if alert.change is Change.RESOLVED:
                    self._reset_evidence(key)
            incident = open_.get(key)
            if incident is not None:
                severities[i] = incident.severity
        bank.learn(weights)
        at = series.first
        self.shape.learn(series.services, start, x[at], model.expected[at], weights[at])
        return ClosedBucket(start, series, alerts, scored, severities)

    def _service_ids(self, series: BucketSeries) -> np.ndarray:
        """The service id of each series of the bucket (a region's is its service's)."""
        listed = len(series.rows) - len(series.extra)
        ids = np.repeat(series.services, np.diff(np.append(series.first, listed)))
        if series.extra:
            extra = [self.index.service_id(service) for service, _ in series.extra]
            ids = np.concatenate([ids, np.array(extra, dtype=ids.dtype)])
        return ids

    def _series_of(self, counts: BucketTally) -> BucketSeries:
        """The series to score in this bucket (see `BucketSeries`)."""
        series = BucketSeries(counts)
        extra = [key for key in self.incidents.open if series.index_of(key) is None]
        if extra:
            series.add_extra(extra, [self.row_of(key) for key in extra])
        return series

    def _reset_evidence(self, key: SeriesKey) -> None:
        """Start the evidence of a resolved series afresh; for a service, that of its
        regions too: what they gathered during the outage is the outage's."""
        service, region = key
        rows = [self.row_of(key)]
        if region is None:
            service_id = self.index.service_id(service)
            regions = self.index.regions
            rows += [regions.row(r) for r in range(len(regions)) if regions.scope(r) == service_id]
        for row in rows:
            if row is not None and row >= 0:
                self.evidence.reset(row)

    def row_of(self, key: SeriesKey) -> int | None:
        """The bank row of a series, None if it has none."""
        return self.index.row_of(*key)

    def _concentrated_regions(
        self, service: str, series: BucketSeries, service_counts: list, scored: BankScores
    ) -> set[str]:
        """Regions that explain most of this bucket's excess on their own.

        Then the outage is regional: it opens incidents per region, naming
        them, instead of one service-wide incident. A service-wide outage lifts
        every region (or the regions that make up most of the normal traffic)
        and is reported once, for the service.
        """
        reports, regions, _ = service_counts
        if not self.config.regions or not regions or (service, None) in self.incidents.open:
            return set()
        policy = self.config.policy
        score, expected, spread = scored
        i = series.index_of((service, None))
        # Index of each anomalous region's series in this bucket.
        anomalous = {}
        for region, n in regions.items():
            j = series.index_of((service, region))
            if score[j] >= policy.open_score and n > expected[j] + policy.band_spreads * spread[j]:
                anomalous[region] = j
        if not anomalous or len(anomalous) > policy.max_regional:
            return set()
        # Regions that carry most of the normal traffic are the service itself.
        service_expected = float(expected[i])
        normal_share = sum(float(expected[j]) for j in anomalous.values()) / max(
            service_expected, 1e-9
        )
        if normal_share >= 0.5:
            return set()
        excess = max(reports - service_expected, 0.0)
        regional_excess = sum(
            max(regions[region] - float(expected[j]), 0.0) for region, j in anomalous.items()
        )
        return set(anomalous) if regional_excess >= policy.regional_share * excess else set()


def _warmup_ms(bank: ModelBank, bucket_ms: int) -> int:
    """How long the model learns a new series before its expectation means anything:
    the evidence test ignores the series that long too."""
    settings = getattr(bank, "settings", None)
    if settings is not None and hasattr(settings, "warmup_seconds"):
        return int(settings.warmup_seconds * 1000)
    probe = getattr(bank, "factory", None)
    buckets = getattr(probe(bucket_ms / 1000), "warmup_buckets", 0) if probe else 0
    return int(buckets) * bucket_ms
