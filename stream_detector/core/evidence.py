"""Accumulated evidence of excess reports per series: the sequential test that pages.

A model says what a bucket should hold (`expected`, and `spread`, about one
standard deviation); this test decides when the reports seen so far are
too many to be normal. It is a Poisson CUSUM (Page's test) for a rise of the
rate to `k` times the expectation, run for a few ratios `k` at once:

    S_k <- max(0, S_k + (x ln k - (k - 1) mu) / c)

with `c = spread**2 / mu` (at least 1), the quasi-Poisson scale: `x / c`
behaves like a Poisson count of mean `mu / c`, so an overdispersed series
needs proportionally more reports. `S_k` is the log-likelihood ratio of "the
rate has been k times the normal since the last time S_k was 0" against
"normal", so a strong onset crosses the bound in its first bucket and a
sparse, long excess (one report a minute where 0.2 are normal, with empty
minutes in between) keeps adding up instead of being reset by an empty
bucket.

Calibration. For a CUSUM of log-likelihood ratios, the probability that
normal traffic ever takes one excursion of `S_k` from 0 to `h` is at most
`e**-h` (Wald), and every excursion starts in a bucket, so the rate of false
alarms per bucket is at most `e**-h`; over the `K` ratios, at most
`K e**-h`. The evidence score `1 - K e**-max(S_k)` is one minus that bound,
and an incident policy that accepts `r` false incidents per series per 30
days pages at `K e**-h = r / (buckets in 30 days)`. The bound holds when the
model's expectation and spread are right; the unit tests and
`bench/detection.py` check it on flat and seasonal Poisson series.

State: `K` floats per series, the reports of the current excursion, and when
the series was first and last seen, in arrays indexed by the model bank's row.
Quiet series are caught up lazily: empty buckets only lower the sums.
"""

from __future__ import annotations

import math

import numpy as np

# Rate ratios the test looks for: 3x is the smallest rise worth a page (a
# residual of a learned daily bump, or a busier day, stays under about 1.8x,
# where the 3x test's increments turn positive); 100x is a quiet service
# suddenly getting several reports a minute.
RATIOS = (5.0, 15.0, 50.0)
DAY_MS = 86_400_000
MONTH_MS = 30 * DAY_MS
# Below this many expected reports a bucket counts as expecting this many:
# a series the model believes to be silent still needs a few reports.
MIN_EXPECTED = 1e-3


def buckets_per_month(bucket_ms: int) -> float:
    return MONTH_MS / bucket_ms


def evidence_score(evidence: np.ndarray | float, ratios: int = len(RATIOS)):
    """One minus the bound on the per-bucket false-alarm probability of `evidence` nats.

    >>> round(float(evidence_score(math.log(4e6))), 6)
    0.999999
    """
    return np.maximum(0.0, 1.0 - ratios * np.exp(-np.asarray(evidence, dtype=float)))


class EvidenceTest:
    """The CUSUMs of every series of a partition, as rows of arrays.

    >>> test = EvidenceTest(bucket_ms=60_000, warmup_ms=0)
    >>> test.ensure(1)
    >>> rows = np.array([0])
    >>> s = [test.update(rows, m * 60_000, np.array([x]), np.array([0.2]), np.array([0.45]))[0][0]
    ...      for m, x in enumerate([0, 1, 0, 0, 2, 3, 2])]
    >>> [round(float(v), 4) for v in s]  # a quiet series getting a few reports a minute
    [0.0, 0.0, 0.0, 0.0, 0.7735, 0.9988, 0.9999]
    """

    def __init__(self, bucket_ms: int, warmup_ms: int = 2 * DAY_MS,
                 ratios: tuple[float, ...] = RATIOS):
        self.bucket_ms = bucket_ms
        self.warmup_ms = warmup_ms
        self.ratios = np.array(ratios, dtype=float)
        self.log_ratios = np.log(self.ratios)
        self.sums = np.zeros((0, len(ratios)))
        self.reports = np.zeros(0)
        self.first_ms = np.zeros(0, dtype=np.int64)
        self.last_ms = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.reports)

    def ensure(self, rows: int) -> None:
        """Room for rows 0..rows-1 (new rows have seen nothing)."""
        n = len(self.reports)
        if rows <= n:
            return
        size = max(rows, 2 * n, 16)
        self.sums = np.vstack([self.sums, np.zeros((size - n, len(self.ratios)))])
        self.reports = np.concatenate([self.reports, np.zeros(size - n)])
        never = np.full(size - n, -1, dtype=np.int64)
        self.first_ms = np.concatenate([self.first_ms, never])
        self.last_ms = np.concatenate([self.last_ms, never.copy()])

    def update(
        self, rows: np.ndarray, start_ms: int, x: np.ndarray, expected: np.ndarray,
        spread: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the bucket starting at `start_ms`; returns each row's evidence score and
        the reports of its current excursion (since its evidence was last zero)."""
        self.ensure(int(rows.max()) + 1 if len(rows) else 0)
        mu = np.maximum(expected, MIN_EXPECTED)
        c = np.maximum(spread * spread / mu, 1.0)
        m = mu / c
        last = self.last_ms[rows]
        first = self.first_ms[rows]
        new = first < 0
        first = np.where(new, start_ms, first)
        self.first_ms[rows] = first
        # Empty buckets since the row was last seen lower every sum by (k - 1) m each.
        gap = np.where(new, 0, np.maximum((start_ms - last) // self.bucket_ms - 1, 0))
        sums = self.sums[rows]
        if gap.any():
            sums = np.maximum(sums - (gap * m)[:, None] * (self.ratios - 1.0), 0.0)
        going = sums.max(axis=1) > 0.0
        sums = np.maximum(
            sums + (x / c)[:, None] * self.log_ratios - m[:, None] * (self.ratios - 1.0), 0.0
        )
        # Nothing is evidence before the model has learned the series.
        sums[start_ms - first < self.warmup_ms] = 0.0
        reports = np.where(sums.max(axis=1) > 0.0, np.where(going, self.reports[rows], 0.0) + x,
                           0.0)
        self.sums[rows] = sums
        self.reports[rows] = reports
        self.last_ms[rows] = start_ms
        return evidence_score(sums.max(axis=1), len(self.ratios)), reports

    def reset(self, row: int) -> None:
        """Start the row's test afresh (after its incident resolved)."""
        if row < len(self.reports):
            self.sums[row] = 0.0
            self.reports[row] = 0.0

    def state(self) -> dict:
        n = len(self)
        return {"sums": self.sums[:n].ravel().tolist(), "reports": self.reports.tolist(),
                "first_ms": self.first_ms.tolist(), "last_ms": self.last_ms.tolist()}

    def load_state(self, state: dict) -> None:
        n = len(state["reports"])
        self.sums = np.array(state["sums"], dtype=float).reshape(n, len(self.ratios))
        self.reports = np.array(state["reports"], dtype=float)
        self.first_ms = np.array(state["first_ms"], dtype=np.int64)
        self.last_ms = np.array(state["last_ms"], dtype=np.int64)


def page_evidence(false_alarm_rate: float, bucket_ms: int, ratios: int = len(RATIOS)) -> float:
    """The evidence, in nats, at which a series pages for `false_alarm_rate` false
    incidents per series per 30 days (at most, when the model is right).

    >>> round(page_evidence(0.01, 60_000), 1)
    16.4
    """
    return math.log(ratios * buckets_per_month(bucket_ms) / false_alarm_rate)
