"""How good are the detections: NAB's standard-profile score, and per-series tallies.

* `nab_*`: the Numenta Anomaly Benchmark's standard profile, as the data
  README of `shared/data/nab-realtweets` describes it. Per-row anomaly scores
  of several files, one threshold shared by all of them, and the threshold
  that maximises the summed score is found by an exact sweep.
* `SeriesEvaluation`: one series' outages, detections, false incidents and
  delays, as `backtest.evaluate_labels` counts them (with `backtest.covers`,
  the one rule of when an incident is about an outage).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# NAB standard profile weights.
NAB_TP_WEIGHT = 1.0
NAB_FP_WEIGHT = 0.11
NAB_FN_WEIGHT = 1.0
NAB_PROBATION_SHARE = 0.15
NAB_PROBATION_MAX_ROWS = 750


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def scaled_sigmoid(position: float) -> float:
    """NAB's reward or cost for a detection at `position` (in window widths).

    Inside a window `position` runs from -1 (left edge) to about 0 (right edge);
    past a window it is the distance from the window's right edge, and beyond 3
    widths the cost is the full -1.

    >>> [round(scaled_sigmoid(p), 4) for p in (-1.0, -0.5, 0.0)]
    [0.9866, 0.8483, 0.0]
    >>> scaled_sigmoid(3.5)
    -1.0
    """
    if position > 3.0:
        return -1.0
    return 2.0 * _sigmoid(-5.0 * position) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


def nab_probation_rows(n_rows: int) -> int:
    """Rows at the start of a file that NAB does not score.

    >>> nab_probation_rows(15902), nab_probation_rows(1000)
    (750, 150)
    """
    return min(math.floor(NAB_PROBATION_SHARE * n_rows), NAB_PROBATION_MAX_ROWS)


def nab_window_rows(
    timestamps: Sequence[str], windows: Iterable[tuple[str, str]]
) -> list[tuple[int, int]]:
    """Row-index windows `[left, right]` (inclusive) from timestamp windows.

    Timestamps compare as text, so both sides must share one format
    (`YYYY-MM-DD HH:MM:SS`, any fractional seconds are ignored).

    >>> ts = ["2015-01-01 00:00:00", "2015-01-01 00:05:00", "2015-01-01 00:10:00"]
    >>> nab_window_rows(ts, [("2015-01-01 00:05:00.000000", "2015-01-01 00:10:00.000000")])
    [(1, 2)]
    """
    keys = [t[:19] for t in timestamps]
    rows = []
    for start, end in windows:
        left = bisect.bisect_left(keys, start[:19])
        right = bisect.bisect_right(keys, end[:19]) - 1
        if left <= right:
            rows.append((left, right))
    return rows


@dataclass(frozen=True)
class NabFile:
    """One file's scores and labelled windows (row indices, inclusive, sorted)."""

    name: str
    scores: Sequence[float]
    windows: Sequence[tuple[int, int]]


@dataclass
class NabFileResult:
    name: str
    score: float = 0.0
    windows: int = 0
    detected_windows: int = 0
    false_positives: int = 0
    first_detections: list[int | None] = field(default_factory=list)
    """Row of the earliest detection in each window, None where it was missed."""


@dataclass
class NabResult:
    threshold: float
    total: float
    files: list[NabFileResult]

    @property
    def detected_windows(self) -> int:
        return sum(f.detected_windows for f in self.files)

    @property
    def windows(self) -> int:
        return sum(f.windows for f in self.files)

    @property
    def false_positives(self) -> int:
        return sum(f.false_positives for f in self.files)


def _row_values(n_rows: int, windows: Sequence[tuple[int, int]]) -> tuple[list[int], list[float]]:
    """Per row: the window it lies in (-1 outside all) and what a detection there is worth.

    Probation rows get window -2: they are not scored at all.
    """
    window_of = [-1] * n_rows
    value = [0.0] * n_rows
    ordered = sorted(windows)
    # Rows before the first window: a detection there costs the full weight.
    prev_right: int | None = None
    prev_width = 0
    w = 0
    for i in range(n_rows):
        while w < len(ordered) and ordered[w][1] < i:
            prev_right = ordered[w][1]
            prev_width = ordered[w][1] - ordered[w][0] + 1
            w += 1
        if w < len(ordered) and ordered[w][0] <= i <= ordered[w][1]:
            left, right = ordered[w]
            width = right - left + 1
            position = -(right - i + 1) / width
            window_of[i] = w
            value[i] = scaled_sigmoid(position) * NAB_TP_WEIGHT / _MAX_TP
        elif prev_right is None:
            value[i] = -NAB_FP_WEIGHT
        else:
            # A one-row window has no width to measure distance in; NAB would
            # divide by zero, we treat every later detection as far from it.
            distance = (i - prev_right) / (prev_width - 1) if prev_width > 1 else math.inf
            value[i] = scaled_sigmoid(distance) * NAB_FP_WEIGHT
    for i in range(min(nab_probation_rows(n_rows), n_rows)):
        window_of[i] = -2
    return window_of, value


def nab_score(files: Sequence[NabFile], threshold: float) -> NabResult:
    """NAB standard-profile score of `files` with detections at `score >= threshold`.

    >>> f = NabFile("a", [0.0] * 200 + [1.0] + [0.0] * 99, [(200, 209)])
    >>> round(nab_score([f], 0.5).total, 3)
    1.0
    >>> nab_score([f], 2.0).total
    -1.0
    """
    results = []
    for f in files:
        window_of, value = _row_values(len(f.scores), f.windows)
        first: list[int | None] = [None] * len(sorted(f.windows))
        fp_count, fp_cost = 0, 0.0
        for i, s in enumerate(f.scores):
            if s < threshold or window_of[i] == -2:
                continue
            w = window_of[i]
            if w >= 0:
                if first[w] is None:
                    first[w] = i
            else:
                fp_count += 1
                fp_cost += value[i]
        tp = sum(value[i] for i in first if i is not None)
        missed = sum(1 for i in first if i is None)
        result = NabFileResult(
            f.name,
            score=tp + fp_cost - missed * NAB_FN_WEIGHT,
            windows=len(first),
            detected_windows=len(first) - missed,
            false_positives=fp_count,
            first_detections=first,
        )
        results.append(result)
    return NabResult(threshold, sum(r.score for r in results), results)


def nab_best_threshold(files: Sequence[NabFile]) -> NabResult:
    """The one threshold shared by all `files` that maximises the summed NAB score.

    An exact sweep: rows are visited from the highest score down, so every
    distinct score is tried as a threshold, plus "above everything" (no
    detection at all, every window missed).

    >>> f = NabFile("a", [0.0] * 150 + [0.7] + [0.0] * 49 + [0.9] + [0.0] * 99, [(200, 209)])
    >>> r = nab_best_threshold([f])
    >>> r.threshold, round(r.total, 3)
    (0.9, 1.0)
    """
    rows: list[tuple[float, int, int]] = []
    tables = []
    for k, f in enumerate(files):
        window_of, value = _row_values(len(f.scores), f.windows)
        tables.append((window_of, value))
        rows.extend((s, k, i) for i, s in enumerate(f.scores) if window_of[i] != -2)
    rows.sort(key=lambda r: -r[0])
    n_windows = sum(len(f.windows) for f in files)
    total = -n_windows * NAB_FN_WEIGHT
    best_total, best_threshold = total, math.inf
    # Earliest detection so far (in row order) per (file, window).
    earliest: dict[tuple[int, int], int] = {}
    j = 0
    while j < len(rows):
        s = rows[j][0]
        while j < len(rows) and rows[j][0] == s:
            _, k, i = rows[j]
            window_of, value = tables[k]
            w = window_of[i]
            if w >= 0:
                before = earliest.get((k, w))
                if before is None:
                    total += NAB_FN_WEIGHT + value[i]
                    earliest[(k, w)] = i
                elif i < before:
                    total += value[i] - value[before]
                    earliest[(k, w)] = i
            else:
                total += value[i]
            j += 1
        if total > best_total:
            best_total, best_threshold = total, s
    return nab_score(files, best_threshold)


# --- labelled outages against incidents -------------------------------------


@dataclass
class SeriesEvaluation:
    outages: int = 0
    detected: int = 0
    false_incidents: int = 0
    delays: list[float] = field(default_factory=list)
    """Buckets from an outage's start to the first incident overlapping it, per detected outage."""

    @property
    def recall(self) -> float:
        return self.detected / self.outages if self.outages else 1.0
