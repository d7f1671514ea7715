"""Scoring one pre-bucketed series from a CSV file: `backtest --input series.csv`.

The input is `timestamp,value` rows of any bucket width, possibly irregular,
counts or any non-negative metric; the output adds `anomaly_score`,
`expected` and `alert` to every row, in the same order. Scoring is online:
row t is scored by a model that has learned rows before t only.

What a pager would see is what the score shows. An alert fires when the score
reaches the threshold, and then the series is held quiet for `hold_seconds`:
one event makes one alert (as an incident does in the streaming detector).
Rows inside a hold report an anomaly score of 0. The model keeps learning
through a hold (`hold_weight` 1): its clipped updates already keep a burst
from moving it much, and a model frozen for half a day came back so stale
that it alerted again at once (NAB realTweets: 20 points with learning,
below -1 without).
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from stream_detector.core.models import DEFAULT_MODEL, model_spec
from stream_detector.core.models.base import Scored, SeriesModel
from stream_detector.core.times import parse_iso

COLUMNS = ("timestamp", "value", "anomaly_score", "expected", "alert")
DEFAULT_THRESHOLD = 0.99
DEFAULT_HOLD_SECONDS = 12 * 3600.0
PROGRESS_EVERY = 100_000


def parse_timestamp(text: str) -> float:
    """Epoch seconds from `2015-02-26 21:42:53`, ISO 8601 (naive is UTC) or epoch seconds/ms.

    >>> parse_timestamp("2015-02-26 21:42:53")
    1424986973.0
    >>> parse_timestamp("2015-02-26T22:42:53+01:00"), parse_timestamp("2015-02-26T21:42:53Z")
    (1424986973.0, 1424986973.0)
    >>> parse_timestamp("1424986973"), parse_timestamp("1424986973000")
    (1424986973.0, 1424986973.0)
    """
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        # Epoch milliseconds are told apart by size (1e11 s is the year 5138).
        return number / 1000.0 if abs(number) >= 1e11 else number
    if text.endswith("z"):
        text = text[:-1] + "Z"
    return parse_iso(text).timestamp()


def read_series_csv(path: str | Path) -> list[tuple[str, float]]:
    """Rows `(timestamp, value)` of a CSV file with a header naming `timestamp` and `value`.

    Real files are taken as they are: a repeated timestamp is one more row
    (scored in file order, as a clock that stood still wrote it), gaps may be
    irregular, and negative and zero values are values. Raises `ValueError`
    with one sentence naming the file and line for anything that cannot be
    scored: a missing column, an unreadable timestamp, a value that is not a
    finite number, or time going backwards (an unsorted file).
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}, line 1: not a CSV header ({exc}).") from None
        if header is None:
            raise ValueError(f"{path}: the file is empty; expected a header 'timestamp,value'.")
        names = [h.strip().lower() for h in header]
        if "timestamp" not in names or "value" not in names:
            raise ValueError(
                f"{path}, line 1: the header must name the columns 'timestamp' and 'value'."
            )
        ti, vi = names.index("timestamp"), names.index("value")
        rows: list[tuple[str, float]] = []
        last_t, last_stamp, last_line = -math.inf, "", 0
        try:
            for record in reader:
                line = reader.line_num
                if not record or all(not c.strip() for c in record):
                    continue
                if len(record) <= max(ti, vi):
                    raise ValueError(f"{path}, line {line}: expected a timestamp and a value.")
                stamp, text = record[ti].strip(), record[vi].strip()
                try:
                    t = parse_timestamp(stamp)
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line}: {stamp!r} is not a timestamp "
                        "(use 2015-02-26 21:42:53, ISO 8601 or epoch seconds)."
                    ) from None
                try:
                    value = float(text)
                except ValueError:
                    raise ValueError(f"{path}, line {line}: {text!r} is not a number.") from None
                if not math.isfinite(value):
                    raise ValueError(
                        f"{path}, line {line}: the value {text} is not a finite number."
                    )
                if t < last_t:
                    raise ValueError(
                        f"{path}, line {line}: timestamp {stamp} comes before the row "
                        f"before it ({last_stamp}, line {last_line}); sort the file by time."
                    )
                last_t, last_stamp, last_line = t, stamp, line
                rows.append((stamp, value))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({exc}).") from None
    return rows


def write_scored_csv(path: str | Path, rows: Iterable[dict]) -> int:
    """Write scored rows with the columns of `COLUMNS`; returns how many were written."""
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([
                row["timestamp"],
                _number(row["value"]),
                f"{row['anomaly_score']:.6f}",
                f"{row['expected']:.3f}",
                row["alert"],
            ])
            n += 1
    return n


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


class _Flipped:
    """Scores drops of a series with a model that only scores rises, by negating it.

    Only for models whose arithmetic does not assume non-negative values (the
    EWMA baseline); the seasonal count model takes `direction` itself.
    """

    __slots__ = ("model",)

    def __init__(self, model: SeriesModel):
        self.model = model

    def score_one(self, t: float, x: float) -> Scored:
        s = self.model.score_one(t, -x)
        return Scored(s.score, -s.expected, s.spread)

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        self.model.learn_one(t, -x, weight)

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        self.model.learn_zeros(t_start, t_end)


class _EitherWay:
    """Scores rises and drops with two one-sided models; the larger score wins."""

    __slots__ = ("up", "down")

    def __init__(self, up: SeriesModel, down: SeriesModel):
        self.up, self.down = up, down

    def score_one(self, t: float, x: float) -> Scored:
        a, b = self.up.score_one(t, x), self.down.score_one(t, x)
        return a if a.score >= b.score else b

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        self.up.learn_one(t, x, weight)
        self.down.learn_one(t, x, weight)

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        self.up.learn_zeros(t_start, t_end)
        self.down.learn_zeros(t_start, t_end)


def build_model(name: str, bucket_seconds: float, direction: str = "up") -> SeriesModel:
    """A model of the registry that scores `direction` ("up", "down" or "both")."""
    if direction not in ("up", "down", "both"):
        raise ValueError(f"direction must be up, down or both, not {direction!r}")
    spec = model_spec(name)
    if spec.directional is not None:
        return spec.directional(bucket_seconds, direction)
    factory = spec.series
    if direction == "up":
        return factory(bucket_seconds)
    down = _Flipped(factory(bucket_seconds))
    return down if direction == "down" else _EitherWay(factory(bucket_seconds), down)


COUNT_MODEL = DEFAULT_MODEL
METRIC_MODEL = "metric"
# Rows with a positive gap after them that fix the bucket width (their median).
WIDTH_GAPS = 8


def model_for_values(values: Iterable[float]) -> str:
    """The model `backtest --input` uses when none is named: counts or any metric.

    A series every value of which is a non-negative integer is a count (reports,
    requests, mentions per bucket) and gets the seasonal count model; anything
    else (negative, fractional: CPU percent, latency, averaged bytes) gets the
    general metric model. It is a property of the file's kind, as a person
    choosing the model would read it, not of its anomalies.

    >>> model_for_values([0.0, 3.0, 12.0]), model_for_values([0.5, 3.0]), model_for_values([-1.0])
    ('seasonal-poisson', 'metric', 'metric')
    """
    for v in values:
        if v < 0 or v != int(v):
            return METRIC_MODEL
    return COUNT_MODEL


def score_series(
    rows: Iterable[tuple[str, float]],
    model: str | None = None,
    direction: str = "up",
    threshold: float = DEFAULT_THRESHOLD,
    hold_seconds: float = DEFAULT_HOLD_SECONDS,
    hold_weight: float = 1.0,
) -> Iterator[dict]:
    """Score a pre-bucketed series row by row, online; one output row per input row.

    `model` None chooses by the values (`model_for_values`). The bucket width
    the model is built for is the median of the first `WIDTH_GAPS` positive
    gaps between rows; the rows up to then score 0 (any model is warming up
    then) and are learned as soon as the model exists. Repeated timestamps are
    rows like any other, in file order. Gaps in an irregular series are not
    read as empty buckets: the rows are what the series is.

    >>> rows = [(str(1_700_000_000 + 300 * i), 10.0 + i % 3) for i in range(1000)]
    >>> rows.append((str(1_700_000_000 + 300 * 1000), 200.0))
    >>> out = list(score_series(rows))
    >>> out[0]["anomaly_score"], sum(r["alert"] for r in out[:-1]), out[-1]["alert"]
    (0.0, 0, 1)
    """
    if model is None:
        rows = list(rows)
        model = model_for_values(v for _, v in rows)
    series: SeriesModel | None = None
    pending: list[tuple[float, float]] = []
    gaps: list[float] = []
    hold_until = -math.inf
    for stamp, value in rows:
        t = parse_timestamp(stamp)
        if series is None:
            if pending and t > pending[-1][0]:
                gaps.append(t - pending[-1][0])
            pending.append((t, value))
            if len(gaps) < WIDTH_GAPS:
                yield {"timestamp": stamp, "value": value, "anomaly_score": 0.0,
                       "expected": value, "alert": 0}
                continue
            series = build_model(model, statistics.median(gaps), direction)
            for pt, pv in pending[:-1]:
                series.learn_one(pt, pv)
            pending = []
        scored = series.score_one(t, value)
        held = t < hold_until
        alert = 0
        if not held and scored.score >= threshold:
            alert = 1
            hold_until = t + hold_seconds
        series.learn_one(t, value, hold_weight if held or alert else 1.0)
        yield {"timestamp": stamp, "value": value,
               "anomaly_score": 0.0 if held else scored.score,
               "expected": scored.expected, "alert": alert}


def score_series_file(
    input_path: str | Path,
    output_path: str | Path,
    direction: str = "up",
    model: str | None = None,
    progress: IO[str] | None = sys.stderr,
) -> int:
    """`backtest --input`: read, score and write one series; returns the rows written.

    Without `model`, the values choose it (`model_for_values`).
    """
    rows = read_series_csv(input_path)
    model = model or model_for_values(v for _, v in rows)

    def counted(scored: Iterator[dict]) -> Iterator[dict]:
        for n, row in enumerate(scored, 1):
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress.write(f"\r{n:,} of {len(rows):,} rows")
                progress.flush()
            yield row

    if progress is not None:
        progress.write(f"{input_path}: {len(rows):,} rows, model {model}\n")
    n = write_scored_csv(output_path, counted(score_series(rows, model, direction)))
    if progress is not None:
        progress.write(f"\r{n:,} rows scored -> {output_path}\n")
    return n
