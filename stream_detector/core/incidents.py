"""Turning per-bucket scores into incidents: open, update, resolve; and the alert.

One outage should make one incident, opened early and resolved once, so the
tracker has hysteresis: a high score opens, and only a run of calm buckets
resolves. Severity only ever rises within an incident, so a page that went out
as critical is never quietly downgraded.

Each move of an incident is an `Alert`, made here and nowhere else: the
Kafka message (`Alert.to_json`), the metric, the log line and Alertmanager's
alert all read its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import orjson

from stream_detector.core.evidence import buckets_per_month
from stream_detector.core.models.base import Scored
from stream_detector.core.times import iso_ms, iso_utc

WARNING = "warning"
CRITICAL = "critical"
FIRING = "firing"
RESOLVED = "resolved"

DAY_MS = 86_400_000

# A series is a service (region None) or a service within one region.
SeriesKey = tuple[str, str | None]


class Change(StrEnum):
    """What an alert says happened to its incident."""

    OPENED = "opened"
    UPDATED = "updated"
    """Still firing, one bucket later (its severity may have risen)."""
    RESOLVED = "resolved"


def alert_id(service: str, region: str | None, start_ms: int) -> str:
    # Stable across restarts and re-sends: downstream de-duplicates on it.
    return f"{service}/{region or '*'}/{iso_utc(start_ms)}"


@dataclass(frozen=True, slots=True)
class Alert:
    """One move of one incident, as the alerts topic carries it.

    >>> a = Alert(Change.OPENED, "x", None, WARNING, 0, 120_000, 60_000, 20, 5.0, 1.0,
    ...           (("US", 20),), ())
    >>> a.alert_id, a.status
    ('x/*/1970-01-01T00:00:00Z', 'firing')
    >>> a.to_json()[:60]
    b'{"alert_id":"x/*/1970-01-01T00:00:00Z","status":"firing","se'
    >>> Alert.from_json(a.to_json(), opened=True) == a
    True
    """

    change: Change
    service: str
    region: str | None
    """The region of a regional incident; None for a service-wide one."""
    severity: str
    started_ms: int
    """The incident's start: its first anomalous bucket."""
    bucket_start_ms: int
    """The bucket that made this alert."""
    bucket_ms: int
    reports: int
    """Reports in that bucket."""
    expected: float
    score: float
    regions: tuple[tuple[str, int], ...]
    """The incident's top regions so far, most reports first."""
    problems: tuple[tuple[str, int], ...]
    ended_ms: int | None = None
    """When a resolved incident ended: the start of its first calm bucket."""

    @property
    def alert_id(self) -> str:
        return alert_id(self.service, self.region, self.started_ms)

    @property
    def status(self) -> str:
        """`firing` or `resolved`, as the message says it."""
        return RESOLVED if self.change is Change.RESOLVED else FIRING

    @property
    def bucket_end_ms(self) -> int:
        """When this alert could go out at the earliest: the end of its bucket."""
        return self.bucket_start_ms + self.bucket_ms

    def to_json(self) -> bytes:
        """The message on the alerts topic (README: "the alert contract")."""
        return orjson.dumps({
            "alert_id": self.alert_id,
            "status": self.status,
            "service": self.service,
            "region": self.region,
            "severity": self.severity,
            "started_at": iso_utc(self.started_ms),
            "ended_at": None if self.ended_ms is None else iso_utc(self.ended_ms),
            "bucket_start": iso_utc(self.bucket_start_ms),
            "bucket_seconds": self.bucket_ms // 1000,
            "reports": self.reports,
            "expected": self.expected,
            "score": self.score,
            "regions": self.regions,
            "problems": self.problems,
        })

    @classmethod
    def from_json(cls, raw: bytes, opened: bool = False) -> Alert:
        """A message read back from the alerts topic.

        The message says firing or resolved; whether a firing one opened its
        incident only its reader knows (the first one it saw of that
        `alert_id`), and says so with `opened`.
        """
        return cls.from_message(orjson.loads(raw), opened)

    @classmethod
    def from_message(cls, doc: dict, opened: bool = False) -> Alert:
        """An alerts topic message already decoded (see `from_json`)."""
        if doc["status"] == RESOLVED:
            change = Change.RESOLVED
        else:
            change = Change.OPENED if opened else Change.UPDATED
        ended = doc.get("ended_at")
        return cls(
            change, doc["service"], doc.get("region"), doc["severity"],
            iso_ms(doc["started_at"]), iso_ms(doc["bucket_start"]),
            int(doc["bucket_seconds"]) * 1000, doc["reports"], doc["expected"], doc["score"],
            tuple((name, n) for name, n in doc.get("regions") or ()),
            tuple((name, n) for name, n in doc.get("problems") or ()),
            None if ended is None else iso_ms(ended),
        )


@dataclass(frozen=True)
class IncidentPolicy:
    """When scores become incidents. The scores are the detector's evidence scores
    (`core.evidence`): one minus a bound on how often normal traffic scores so high."""

    false_alarm_rate: float = 0.01
    """The sensitivity: false incidents per series per 30 days that the policy
    accepts (at most, when the model's expectation and spread are right). A
    series pages when its accumulated evidence reaches the bound this implies,
    `page_score`; 0.01 at 60 s buckets is about 17 nats of evidence, such as
    a 10x step on a series of 3 reports a minute in its first bucket, or 50
    reports where 12 were expected over 80 minutes."""
    open_score: float = 0.999
    """A bucket scoring at least this (and above the normal band) is anomalous:
    the model does not learn it unless it recurs, and a region anomalous in
    this sense may explain a service's excess (see `regional_share`)."""
    min_reports: int = 5
    """A series' excess holding fewer reports than this never pages (a few
    reports are never an outage)."""
    critical_score: float = 0.99999
    critical_ratio: float = 5.0
    """Critical needs both the score and reports at least this many times the expected."""
    band_spreads: float = 2.0
    """The normal band is expected ± this many spreads."""
    calm_buckets: int = 5
    """Resolve after this many buckets in a row within the normal band."""
    cooldown_buckets: int = 30
    """After a resolve, only a critical-level bucket reopens the series this soon:
    the decaying tail of an outage should not page again and again."""
    relearn_after_buckets: int = 240
    relearn_weight: float = 0.1
    """A very long incident may be a new normal: after this many buckets, learn it slowly."""
    recurrence_days: int = 7
    recurrence_count: int = 2
    recurrence_slack_ms: int = 900_000
    recurring_weight: float = 5.0
    """An anomaly at the time of day of incidents of the same series on
    `recurrence_count` of the last `recurrence_days` days (give or take the
    slack) is a rhythm, not an outage: it is learned, faster than usual, so
    that a daily peak pages for a few days and then is the normal."""
    regional_share: float = 0.7
    max_regional: int = 3
    """A bucket's excess is regional when at most `max_regional` anomalous regions
    carry at least `regional_share` of it; then those regions get the incidents."""
    top_n: int = 5

    def __post_init__(self) -> None:
        if not self.false_alarm_rate > 0.0:
            raise ValueError(f"false_alarm_rate must be positive, not {self.false_alarm_rate!r}")

    def page_score(self, bucket_ms: int) -> float:
        """The evidence score at which a series pages, from `false_alarm_rate`.

        >>> round(1 - IncidentPolicy(false_alarm_rate=0.01).page_score(60_000), 9)
        2.31e-07
        """
        return 1.0 - self.false_alarm_rate / buckets_per_month(bucket_ms)


@dataclass
class Incident:
    service: str
    region: str | None
    start_ms: int
    severity: str
    buckets: int = 0
    calm_run: int = 0
    regions: dict[str, int] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)

    @property
    def alert_id(self) -> str:
        return alert_id(self.service, self.region, self.start_ms)


class IncidentTracker:
    """Open incidents of one partition, and the rules that move them.

    >>> t = IncidentTracker(IncidentPolicy(calm_buckets=2))
    >>> alert, _ = t.observe(("x", None), 0, 60_000, 20, Scored(1.0, 5.0, 2.0), {}, {})
    >>> alert.change, alert.severity, alert.alert_id
    (<Change.OPENED: 'opened'>, 'warning', 'x/*/1970-01-01T00:00:00Z')
    >>> [t.observe(("x", None), m, 60_000, 5, Scored(0.1, 5.0, 2.0), {}, {})[0].change.value
    ...  for m in (60_000, 120_000)]
    ['updated', 'resolved']
    """

    def __init__(self, policy: IncidentPolicy):
        self.policy = policy
        self.open: dict[SeriesKey, Incident] = {}
        # Bucket in which each series' last incident resolved, for the cooldown.
        self.resolved: dict[SeriesKey, int] = {}
        # First bucket, length and report total of a run of anomalous buckets
        # not yet confirmed as an incident.
        self.pending: dict[SeriesKey, tuple[int, int, int]] = {}
        # Start and end of each series' incidents of the last `recurrence_days`.
        self.history: dict[SeriesKey, list[tuple[int, int]]] = {}

    def observe(
        self,
        key: SeriesKey,
        bucket_start_ms: int,
        bucket_ms: int,
        reports: int,
        scored: Scored,
        regions: dict[str, int],
        problems: dict[str, int],
        may_open: bool = True,
        excess_reports: float | None = None,
    ) -> tuple[Alert | None, float]:
        """Account one closed bucket of one series.

        `scored.score` is the bucket's evidence score; `excess_reports` the
        reports behind that evidence (by default those of the run of
        anomalous buckets ending here). Returns the alert to publish, if
        any, and how much the model may learn from this bucket.
        """
        policy = self.policy
        incident = self.open.get(key)
        change = Change.UPDATED
        if incident is None:
            # The evidence may rest on many recent buckets; the bucket itself
            # must be above the normal band too, or the tail of a resolved
            # outage (still in that evidence) would reopen it at once.
            if (
                not may_open
                or scored.score < policy.open_score
                or reports <= scored.expected + policy.band_spreads * scored.spread
            ):
                self.pending.pop(key, None)
                return None, 1.0
            critical = self._critical(reports, scored)
            if self._cooling_down(key, bucket_start_ms, bucket_ms) and not critical:
                return None, 1.0
            first_ms, _, total = self._anomalous_run(key, bucket_start_ms, bucket_ms, reports)
            if excess_reports is None:
                excess_reports = total
            if (scored.score < policy.page_score(bucket_ms)
                    or excess_reports < policy.min_reports):
                # Anomalous buckets not yet paged are not learned either,
                # unless they recur (see `_anomaly_weight`).
                return None, self._anomaly_weight(key, bucket_start_ms)
            self.pending.pop(key, None)
            # It started with the run of anomalous buckets that the page ends.
            incident = Incident(key[0], key[1], first_ms, WARNING)
            self.open[key] = incident
            change = Change.OPENED

        incident.buckets += 1
        _add_counts(incident.regions, regions)
        _add_counts(incident.problems, problems)
        if self._critical(reports, scored):
            incident.severity = CRITICAL

        # Calm is judged on the bucket alone: long-window sums stay high well
        # after volume is back to normal, and the incident should end when it is.
        calm = reports <= scored.expected + policy.band_spreads * scored.spread
        incident.calm_run = incident.calm_run + 1 if calm else 0
        if incident.calm_run >= policy.calm_buckets:
            del self.open[key]
            self.resolved[key] = bucket_start_ms
            ended_ms = bucket_start_ms - (policy.calm_buckets - 1) * bucket_ms
            self._remember(key, incident.start_ms, ended_ms)
            return self._alert(incident, Change.RESOLVED, bucket_start_ms, bucket_ms, reports,
                               scored, ended_ms), 1.0

        weight = self._anomaly_weight(key, bucket_start_ms)
        if incident.buckets > policy.relearn_after_buckets:
            weight = max(weight, policy.relearn_weight)
        return self._alert(incident, change, bucket_start_ms, bucket_ms, reports, scored), weight

    def _anomaly_weight(self, key: SeriesKey, bucket_start_ms: int) -> float:
        """How much the model learns from an anomalous bucket: nothing, unless it recurs."""
        past = self.history.get(key)
        policy = self.policy
        if not past or len(past) < policy.recurrence_count:
            return 0.0
        slack = policy.recurrence_slack_ms
        days = set()
        for start_ms, end_ms in past:
            since, duration = bucket_start_ms - start_ms, end_ms - start_ms
            # A whole number of days (one to `recurrence_days`) after [start, end],
            # give or take the slack.
            if (
                DAY_MS - slack <= since <= policy.recurrence_days * DAY_MS + duration + slack
                and (since + slack) % DAY_MS <= duration + 2 * slack
            ):
                days.add((since + slack) // DAY_MS)
        return policy.recurring_weight if len(days) >= policy.recurrence_count else 0.0

    def _remember(self, key: SeriesKey, start_ms: int, end_ms: int) -> None:
        """Record a resolved incident, and forget those too old to recur (of every series:
        resolving is rare, and the history stays as small as the recent incidents)."""
        horizon = end_ms - (self.policy.recurrence_days + 1) * DAY_MS
        history = {}
        for series, past in self.history.items():
            recent = [(s, e) for s, e in past if e >= horizon]
            if recent:
                history[series] = recent
        history.setdefault(key, []).append((start_ms, end_ms))
        self.history = history

    def _critical(self, reports: int, scored: Scored) -> bool:
        policy = self.policy
        return (
            scored.score >= policy.critical_score
            and reports >= policy.critical_ratio * max(scored.expected, 1.0)
        )

    def _anomalous_run(
        self, key: SeriesKey, bucket_start_ms: int, bucket_ms: int, reports: int
    ) -> tuple[int, int, int]:
        """First bucket, length and report total of the series' current anomalous run."""
        first_ms, run, total = self.pending.get(key, (bucket_start_ms, 0, 0))
        if first_ms + run * bucket_ms != bucket_start_ms:  # not consecutive: start again
            first_ms, run, total = bucket_start_ms, 0, 0
        self.pending[key] = (first_ms, run + 1, total + reports)
        return first_ms, run + 1, total + reports

    def _cooling_down(self, key: SeriesKey, bucket_start_ms: int, bucket_ms: int) -> bool:
        resolved = self.resolved.get(key)
        if resolved is None:
            return False
        if bucket_start_ms - resolved < self.policy.cooldown_buckets * bucket_ms:
            return True
        del self.resolved[key]
        return False

    def _alert(
        self,
        incident: Incident,
        change: Change,
        bucket_start_ms: int,
        bucket_ms: int,
        reports: int,
        scored: Scored,
        ended_ms: int | None = None,
    ) -> Alert:
        top_n = self.policy.top_n
        return Alert(
            change, incident.service, incident.region, incident.severity, incident.start_ms,
            bucket_start_ms, bucket_ms, reports,
            # Rounded so that a re-sent alert after a restart is byte-for-byte the same.
            round(scored.expected, 2), round(scored.score, 4),
            _top(incident.regions, top_n), _top(incident.problems, top_n), ended_ms,
        )


    def state(self) -> dict:
        """Open incidents, cooldowns, pending runs and recent history, as JSON-ready lists."""
        return {
            "incidents": [
                [i.service, i.region, i.start_ms, i.severity, i.buckets, i.calm_run, i.regions,
                 i.problems]
                for i in self.open.values()
            ],
            "resolved": [[key[0], key[1], ms] for key, ms in self.resolved.items()],
            "pending": [[key[0], key[1], *run] for key, run in self.pending.items()],
            "history": [[key[0], key[1], past] for key, past in self.history.items()],
        }

    def load_state(self, state: dict) -> None:
        """Replace everything by a `state()`."""
        self.open = {
            (service, region): Incident(service, region, start_ms, severity, buckets, calm_run,
                                        regions, problems)
            for service, region, start_ms, severity, buckets, calm_run, regions, problems
            in state["incidents"]
        }
        self.resolved = {(service, region): ms for service, region, ms in state["resolved"]}
        self.pending = {
            (service, region): (first_ms, run, total)
            for service, region, first_ms, run, total in state["pending"]
        }
        self.history = {
            (service, region): [(start_ms, end_ms) for start_ms, end_ms in past]
            for service, region, past in state["history"]
        }

def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n


def _top(counts: dict[str, int], n: int) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n])
