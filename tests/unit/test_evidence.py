"""The evidence test and the detector's default settings on series with known answers."""

from __future__ import annotations

import math

import numpy as np
import orjson

from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.evidence import EvidenceTest, page_evidence
from stream_detector.core.incidents import Alert, Change

T0 = 1_767_571_200_000  # Monday 2026-01-05 00:00 UTC
MINUTE = 60_000
DAY = 1440


def replay(rates, minutes: int, seed: int) -> list[Alert]:
    """Poisson reports of each service at `rates[service](minute)` a minute, through a
    default detector (service-wide series only); returns the alert messages."""
    rng = np.random.default_rng(seed)
    d = PartitionDetector(DetectorConfig(regions=False))
    alerts: list[Alert] = []
    for minute in range(minutes):
        batch = []
        for service, rate in rates.items():
            for i in range(rng.poisson(rate(minute))):
                batch.append(orjson.dumps({"service": service, "ts": T0 + minute * MINUTE + i}))
        d.add_many(batch)
        for bucket in d.advance():
            alerts.extend(bucket.alerts)
    return alerts


def firing(alerts: list[Alert]) -> dict[str, Alert]:
    """The first firing message of each incident: its opening."""
    first = {a.alert_id: a for a in alerts if a.change is Change.OPENED}
    assert len(first) == len({a.alert_id for a in alerts})  # one opening per incident
    return first


def minute_of(ms: int) -> int:
    return (ms - T0) // MINUTE


def test_sparse_long_excess_pages():
    """5x for 80 minutes on a 0.2/min series: empty minutes and all, it pages."""
    start = 3 * DAY + 14 * 60
    alerts = replay({"quiet": lambda m: 1.0 if start <= m < start + 80 else 0.2},
                    start + 120, seed=3)
    pages = [minute_of(a.bucket_start_ms) for a in firing(alerts).values()]
    assert len(pages) == 1 and start <= pages[0] < start + 80, pages


def test_ten_fold_step_pages_within_two_buckets():
    start = 3 * DAY + 10 * 60
    alerts = replay({"busy": lambda m: 30.0 if m >= start else 3.0}, start + 10, seed=4)
    pages = [minute_of(a.bucket_start_ms) for a in firing(alerts).values()]
    assert len(pages) == 1 and pages[0] - start <= 1, pages  # the first or second bucket


def test_daily_bump_from_day_one_stops_paging_by_day_four():
    """A 30-minute 3x evening bump, there every day from the first: normal traffic."""
    def rate(m: int) -> float:
        return 6.0 if 20 * 60 <= m % DAY < 20 * 60 + 30 else 2.0

    alerts = replay({"bumpy": rate}, 8 * DAY, seed=5)
    days = sorted(minute_of(a.started_ms) // DAY for a in firing(alerts).values())
    assert all(day < 3 for day in days), days


def test_flat_poisson_gives_no_incident_in_30_days():
    alerts = replay({"a": lambda m: 0.2, "b": lambda m: 3.0, "c": lambda m: 50.0},
                    30 * DAY, seed=6)
    assert alerts == []


def test_false_alarm_bound_holds_with_the_true_expectation():
    """With the right expectation, normal traffic crosses a low bound no more often
    than the bound promises: e**-h per bucket, over the ratios."""
    rng = np.random.default_rng(11)
    series, buckets, mu = 200, 20_000, 0.5
    test = EvidenceTest(MINUTE, warmup_ms=0)
    rows = np.arange(series)
    h = 7.0
    crossings = 0
    for b in range(buckets):
        x = rng.poisson(mu, series).astype(float)
        score, _ = test.update(rows, b * MINUTE, x, np.full(series, mu),
                               np.full(series, math.sqrt(mu)))
        hit = np.flatnonzero(score >= 1.0 - len(test.ratios) * math.exp(-h))
        crossings += len(hit)
        for row in hit:
            test.reset(int(row))
    promised = len(test.ratios) * math.exp(-h) * series * buckets
    assert crossings <= promised, (crossings, promised)
    assert page_evidence(0.01, MINUTE) > h
