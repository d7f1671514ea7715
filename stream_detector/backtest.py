"""Offline driver of the detector core over a file of report events, and its evaluation.

`run` and `backtest` share `PartitionDetector`, so one input gives the same
incidents offline and online; here time is event time alone (no wall clock),
and every line is handled in file order as a partition would deliver it.

With the simulator's labels file, the incidents are also scored against the
outages that were injected: recall, false incidents, detection delay and a
NAB-style score, per series and in total (`evaluate_labels`).
"""

from __future__ import annotations

import gzip
import statistics
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from stream_detector.core.detector import INVALID, ClosedBucket, DetectorConfig, PartitionDetector
from stream_detector.core.events import InvalidReport
from stream_detector.core.incidents import CRITICAL, Alert, Change
from stream_detector.core.times import iso_minute, iso_ms
from stream_detector.evaluation import NabFile, NabResult, SeriesEvaluation, nab_score

PROGRESS_EVERY = 200_000


def replay_events(
    lines: Iterator[bytes],
    config: DetectorConfig,
    progress: IO[str] | None = None,
) -> Iterator[ClosedBucket]:
    """Feed report lines to one detector and yield each closed bucket in order."""
    detector = PartitionDetector(config)
    outcomes: Counter[str] = Counter()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            outcomes[detector.add(line)] += 1
        except InvalidReport:
            outcomes[INVALID] += 1
        yield from detector.advance()
        if progress is not None and n % PROGRESS_EVERY == 0:
            progress.write(f"\r{n:,} lines")
            progress.flush()
    yield from detector.flush()
    if progress is not None:
        summary = ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items()))
        progress.write(f"\rreports: {summary}\n")


def backtest_events(
    events_path: str | Path,
    output_path: str | Path,
    config: DetectorConfig,
    progress: IO[str] | None = sys.stderr,
    observe: Callable[[ClosedBucket], None] | None = None,
) -> list[Alert]:
    """Write the alert messages `run` would publish for the events file; return the alerts.

    `observe`, if given, sees every closed bucket (for plots and evaluation).
    """
    events_path = Path(events_path)
    alerts: list[Alert] = []
    with ExitStack() as files:
        try:
            source = files.enter_context(_open_events(events_path))
        except OSError as exc:
            raise ValueError(f"cannot read events file {events_path}: {exc.strerror}") from None
        try:
            out = files.enter_context(Path(output_path).open("wb"))
        except OSError as exc:
            raise ValueError(f"cannot write output file {output_path}: {exc.strerror}") from None
        for bucket in replay_events(iter(source), config, progress):
            if observe is not None:
                observe(bucket)
            for alert in bucket.alerts:
                out.write(alert.to_json() + b"\n")
                alerts.append(alert)
    return alerts


def _open_events(path: Path) -> IO[bytes]:
    """The events file as bytes; a `.gz` one is decompressed as it is read."""
    if path.suffix == ".gz":
        with path.open("rb"):  # an unreadable file fails here, with its OSError
            pass
        return gzip.open(path, "rb")
    return path.open("rb")


# --- labelled outages against incidents -----------------------------------------


def series_name(service: str, region: str | None) -> str:
    return f"{service}/{region}" if region else service


@dataclass(frozen=True)
class Label:
    """One injected event of the simulator's labels file (`Outage.label()`)."""

    service: str
    region: str | None
    start_ms: int
    end_ms: int
    shape: str
    is_outage: bool
    peak_multiplier: float = 0.0
    group: str | None = None
    """Outages of one cause (a provider and its dependants) share a group."""

    @property
    def name(self) -> str:
        return series_name(self.service, self.region)


def load_labels(path: str | Path) -> list[Label]:
    """Read a labels JSON file; a bad file ends in one sentence naming it."""
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read labels file {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"labels file {path} is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ValueError(f"labels file {path} must hold a JSON list of outages")
    labels = []
    for i, item in enumerate(raw):
        try:
            labels.append(Label(
                service=str(item["service"]),
                region=item.get("region") or None,
                start_ms=iso_ms(item["start"]),
                end_ms=iso_ms(item["end"]),
                shape=str(item.get("shape", "")),
                is_outage=bool(item.get("is_outage", True)),
                peak_multiplier=float(item.get("peak_multiplier") or 0.0),
                group=str(item["group"]) if item.get("group") else None,
            ))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"labels file {path}: entry {i} needs service, start and end ({exc})"
            ) from None
    return labels


@dataclass(frozen=True)
class IncidentSpan:
    """One incident as its alert messages describe it; `end_ms` is exclusive."""

    alert_id: str
    service: str
    region: str | None
    start_ms: int
    end_ms: int
    severity: str
    paged_ms: int | None = None
    """When its first `firing` message could go out: the end of that message's bucket."""

    @property
    def name(self) -> str:
        return series_name(self.service, self.region)


def incident_spans(alerts: Iterable[Alert]) -> list[IncidentSpan]:
    """Group alerts by incident; one still open at the end ends after its last bucket."""
    first: dict[str, Alert] = {}
    last: dict[str, Alert] = {}
    paged: dict[str, int] = {}
    for alert in alerts:
        key = alert.alert_id
        first.setdefault(key, alert)
        last[key] = alert
        if alert.change is not Change.RESOLVED and key not in paged:
            paged[key] = alert.bucket_end_ms
    spans = []
    for key, head in first.items():
        tail = last[key]
        end = tail.ended_ms if tail.ended_ms is not None else tail.bucket_end_ms
        spans.append(IncidentSpan(key, head.service, head.region, head.started_ms, end,
                                  tail.severity, paged.get(key)))
    spans.sort(key=lambda s: (s.start_ms, s.service, s.region or ""))
    return spans


def covers(incident: IncidentSpan, label: Label, lead_ms: int = 0) -> bool:
    """Whether `incident` is about `label`'s event: the one rule of every evaluation.

    Same service; for a regional event, an incident naming that region or the
    whole service; and the incident overlaps the window, starting at the
    latest when the window ends. `lead_ms` moves the window's start earlier:
    an incident that ended up to that long before the event began still
    counts (the demo's summary allows ten minutes; evaluations allow none).
    """
    if incident.service != label.service:
        return False
    if label.region is not None and incident.region not in (None, label.region):
        return False
    return incident.start_ms <= label.end_ms and incident.end_ms > label.start_ms - lead_ms


@dataclass
class OutageResult:
    label: Label
    incident: IncidentSpan | None
    """The first incident covering the outage, None when it was missed."""
    delay_buckets: float | None
    """Buckets from the outage's start to the incident's (back-dated) start."""
    page_minutes: float | None = None
    """Minutes from the outage's start to when the first firing message of the
    first covering incident could go out: the delay the person paged feels."""


@dataclass
class LabelEvaluation:
    bucket_ms: int
    outages: list[OutageResult]
    false_incidents: list[IncidentSpan]
    """Incidents that cover no labelled outage (those covering a flood included)."""
    flood_incidents: list[tuple[Label, IncidentSpan]]
    floods: list[Label]
    series: dict[str, SeriesEvaluation]
    nab: NabResult | None = None
    nab_normalized: float | None = None
    """NAB's 0-100 scale: 0 is never detecting, 100 catching every outage at its start."""
    days: float = 0.0
    services: int = 0

    @property
    def detected(self) -> int:
        return sum(1 for o in self.outages if o.incident is not None)

    @property
    def recall(self) -> float:
        return self.detected / len(self.outages) if self.outages else 1.0

    @property
    def delays(self) -> list[float]:
        return sorted(o.delay_buckets for o in self.outages if o.delay_buckets is not None)

    @property
    def page_delays(self) -> list[float]:
        """Page delays in minutes of the detected outages, sorted."""
        return sorted(o.page_minutes for o in self.outages if o.page_minutes is not None)

    @property
    def false_per_series_month(self) -> float | None:
        """False incidents per service per 30 days, when the run's span is known."""
        if not self.days or not self.services:
            return None
        return len(self.false_incidents) / self.services * 30 / self.days

    def by_shape(self) -> dict[str, tuple[int, int]]:
        """Per shape: (detected, outages)."""
        shapes: dict[str, list[int]] = {}
        for o in self.outages:
            counts = shapes.setdefault(o.label.shape, [0, 0])
            counts[0] += o.incident is not None
            counts[1] += 1
        return {shape: (d, n) for shape, (d, n) in sorted(shapes.items())}


@dataclass
class _Timeline:
    first_ms: int | None = None
    last_ms: int | None = None
    services: set[str] = field(default_factory=set)

    def __call__(self, bucket: ClosedBucket) -> None:
        if self.first_ms is None:
            self.first_ms = bucket.start_ms
        self.last_ms = bucket.start_ms
        self.services.update(bucket.counts)


def evaluate_labels(
    labels: Sequence[Label],
    incidents: Sequence[IncidentSpan],
    bucket_ms: int,
    first_bucket_ms: int | None = None,
    last_bucket_ms: int | None = None,
    services: Iterable[str] = (),
) -> LabelEvaluation:
    """Score incidents against labelled events.

    Series are labelled series (a service, or a service in one region) and the
    series of false incidents. With the span of buckets the run covered, a
    NAB-style score is added: one file per service, a detection where an
    incident opened, the labelled outages as windows.
    """
    outages = sorted((lb for lb in labels if lb.is_outage), key=lambda lb: lb.start_ms)
    floods = sorted((lb for lb in labels if not lb.is_outage), key=lambda lb: lb.start_ms)
    series: dict[str, SeriesEvaluation] = {}
    results = []
    for label in outages:
        hits = [i for i in incidents if covers(i, label)]
        first = min(hits, key=lambda i: i.start_ms) if hits else None
        delay = None if first is None else max(0.0, (first.start_ms - label.start_ms) / bucket_ms)
        page = None
        if first is not None:
            paged = [i.paged_ms for i in hits if i.paged_ms is not None]
            page = max(0.0, (min(paged) - label.start_ms) / 60_000) if paged else None
        results.append(OutageResult(label, first, delay, page))
        ev = series.setdefault(label.name, SeriesEvaluation())
        ev.outages += 1
        if delay is not None:
            ev.detected += 1
            ev.delays.append(delay)
    false = [i for i in incidents if not any(covers(i, lb) for lb in outages)]
    for incident in false:
        series.setdefault(incident.name, SeriesEvaluation()).false_incidents += 1
    flood_hits = [(lb, i) for lb in floods for i in incidents if covers(i, lb)]

    evaluation = LabelEvaluation(bucket_ms, results, false, flood_hits, floods, series)
    all_services = set(services) | {lb.service for lb in labels} | {i.service for i in incidents}
    evaluation.services = len(all_services)
    if first_bucket_ms is not None and last_bucket_ms is not None:
        evaluation.days = (last_bucket_ms + bucket_ms - first_bucket_ms) / 86_400_000
        evaluation.nab, evaluation.nab_normalized = _nab(
            outages, incidents, bucket_ms, first_bucket_ms, last_bucket_ms, sorted(all_services)
        )
    return evaluation


def _nab(
    outages: Sequence[Label],
    incidents: Sequence[IncidentSpan],
    bucket_ms: int,
    first_ms: int,
    last_ms: int,
    services: Sequence[str],
) -> tuple[NabResult, float | None]:
    rows = (last_ms - first_ms) // bucket_ms + 1

    def row(ms: int) -> int:
        return min(max((ms - first_ms) // bucket_ms, 0), rows - 1)

    files = []
    for service in services:
        scores = [0.0] * rows
        for i in incidents:
            if i.service == service:
                scores[row(i.start_ms)] = 1.0
        windows = sorted(
            (row(lb.start_ms), row(lb.end_ms - 1)) for lb in outages if lb.service == service
        )
        files.append(NabFile(service, scores, windows))
    result = nab_score(files, 0.5)
    # NAB's normalisation: 0 for never detecting (every window missed), 100 for perfect.
    null = -float(result.windows)
    perfect = float(result.windows)
    normalized = 100 * (result.total - null) / (perfect - null) if result.windows else None
    return result, normalized


def _fmt_delay(values: Sequence[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return f"{statistics.median(values):g}", f"{max(values):g}"


def percentile(values: Sequence[float], share: float) -> float | None:
    """The value at `share` of the sorted values, as outage-dev's scorer takes it
    (index `int(share * (n - 1))`, no interpolation); None for no values.

    >>> percentile([1.0, 2.0, 3.0, 10.0], 0.9), percentile([], 0.5)
    (3.0, None)
    """
    ordered = sorted(values)
    return ordered[int(share * (len(ordered) - 1))] if ordered else None


def format_evaluation(ev: LabelEvaluation) -> str:
    """A table for people: per series, then per outage, then the totals."""
    lines = [
        f"{'series':<24} {'outages':>7} {'detected':>8} {'recall':>7} {'false':>5} "
        f"{'delay med':>9} {'delay max':>9}"
    ]
    for name in sorted(ev.series):
        s = ev.series[name]
        recall = f"{s.recall:.0%}" if s.outages else "-"
        med, mx = _fmt_delay(s.delays)
        lines.append(f"{name:<24} {s.outages:>7} {s.detected:>8} {recall:>7} "
                     f"{s.false_incidents:>5} {med:>9} {mx:>9}")
    med, mx = _fmt_delay(ev.delays)
    lines.append(f"{'total':<24} {len(ev.outages):>7} {ev.detected:>8} {ev.recall:>7.0%} "
                 f"{len(ev.false_incidents):>5} {med:>9} {mx:>9}")
    lines.append("")
    lines.append("labelled events (delay in buckets from the start of the window):")
    events = [(o.label, o) for o in ev.outages] + [(lb, None) for lb in ev.floods]
    for label, result in sorted(events, key=lambda e: e[0].start_ms):
        window = f"{iso_minute(label.start_ms)} .. {iso_minute(label.end_ms)}"
        if result is None:
            hits = [i for lb, i in ev.flood_incidents if lb == label]
            status = ("flood: INCIDENT " + ", ".join(i.alert_id for i in hits)) if hits else (
                "flood: no incident")
        elif result.incident is None:
            status = "MISSED"
        else:
            page = "-" if result.page_minutes is None else f"{result.page_minutes:g} min"
            status = (f"detected +{result.delay_buckets:g}, paged after {page} "
                      f"({result.incident.severity})")
        lines.append(f"  {label.shape:<8} {label.name:<22} {window}  {status}")
    if ev.false_incidents:
        lines.append("false incidents (cover no labelled outage):")
        for i in ev.false_incidents:
            minutes = (i.end_ms - i.start_ms) / 60_000
            lines.append(f"  {i.name:<22} {iso_minute(i.start_ms)} "
                         f"({minutes:.0f} min, {i.severity})")
    lines.append("")
    per_month = ""
    rate = ev.false_per_series_month
    if rate is not None:
        per_month = f" ({rate:.2f} per service per 30 days over {ev.services} services)"
    critical = sum(1 for o in ev.outages if o.incident and o.incident.severity == CRITICAL)
    lines.append(f"recall {ev.detected}/{len(ev.outages)} = {ev.recall:.1%}, "
                 f"{critical} of them critical")
    lines.append(f"false incidents {len(ev.false_incidents)}{per_month}")
    flooded = {id(lb) for lb, _ in ev.flood_incidents}
    lines.append(f"floods {len(ev.floods)}, of them with an incident {len(flooded)}")
    lines.append(f"detection delay in buckets: median {med}, max {mx}")
    pages = ev.page_delays
    if pages:
        lines.append(f"page delay (end of the first firing bucket minus outage start), min: "
                     f"median {statistics.median(pages):g}, p90 {percentile(pages, 0.9):g}, "
                     f"max {max(pages):g}")
    if ev.nab is not None and ev.nab_normalized is not None:
        lines.append(f"NAB-style score (standard profile, incident starts as detections): "
                     f"{ev.nab_normalized:.1f} of 100 (raw {ev.nab.total:.2f} over "
                     f"{ev.nab.windows} windows)")
    return "\n".join(lines)


@dataclass
class LabelledBacktest:
    alerts: list[Alert]
    incidents: list[IncidentSpan]
    evaluation: LabelEvaluation | None
    history: SeriesHistory | None


class SeriesHistory:
    """Per-bucket reports, expected and spread of the series worth drawing.

    Every service-wide series is kept, and the regional series that are
    labelled or had an incident; a regional one is held only in a short ring
    buffer until then, so a long run does not keep every region in memory,
    yet a plot still shows the buckets before a regional incident opened.
    """

    def __init__(self, regional: Iterable[tuple[str, str]] = (), lookback_buckets: int = 180):
        self.kept = set(regional)
        self.lookback = lookback_buckets
        self.points: dict[tuple[str, str | None], list[tuple[int, int, float, float]]] = {}
        self._recent: dict[tuple[str, str], deque[tuple[int, int, float, float]]] = {}

    def __call__(self, bucket: ClosedBucket) -> None:
        for alert in bucket.alerts:
            key = (alert.service, alert.region)
            if key[1] is not None and key not in self.kept:
                self.kept.add(key)
                self.points[key] = list(self._recent.pop(key, ()))
        for s in bucket.scores:
            point = (bucket.start_ms, s.reports, s.expected, s.spread)
            key = (s.service, s.region)
            if s.region is None or key in self.kept:
                self.points.setdefault(key, []).append(point)
            else:
                recent = self._recent.get(key)
                if recent is None:
                    recent = self._recent[key] = deque(maxlen=self.lookback)
                recent.append(point)


def run_labelled_backtest(
    events_path: str | Path,
    output_path: str | Path,
    config: DetectorConfig,
    labels: Sequence[Label] | None = None,
    keep_history: bool = False,
    progress: IO[str] | None = sys.stderr,
) -> LabelledBacktest:
    """`backtest_events`, then the incidents scored against `labels` when given."""
    timeline = _Timeline()
    history = None
    if keep_history:
        history = SeriesHistory((lb.service, lb.region) for lb in labels or () if lb.region)

    def observe(bucket: ClosedBucket) -> None:
        timeline(bucket)
        if history is not None:
            history(bucket)

    alerts = backtest_events(events_path, output_path, config, progress, observe)
    incidents = incident_spans(alerts)
    evaluation = None
    if labels is not None:
        evaluation = evaluate_labels(labels, incidents, config.bucket_ms, timeline.first_ms,
                                     timeline.last_ms, timeline.services)
    return LabelledBacktest(alerts, incidents, evaluation, history)
