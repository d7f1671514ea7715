"""`backtest --input` takes real files as they are: repeated timestamps, gaps, negative values."""

from __future__ import annotations

import random

import pytest

from stream_detector.series_backtest import (
    model_for_values,
    read_series_csv,
    score_series,
    score_series_file,
)


def write(tmp_path, lines: list[str]):
    path = tmp_path / "series.csv"
    path.write_text("timestamp,value\n" + "".join(line + "\n" for line in lines))
    return path


def test_repeated_timestamps_are_rows_in_file_order(tmp_path):
    path = write(tmp_path, ["2014-03-09 02:55:00,5", "2014-03-09 03:00:00,7",
                            "2014-03-09 03:00:00,-2.5", "2014-03-09 03:00:00,0",
                            "2014-03-09 03:05:00,4"])
    assert read_series_csv(path) == [
        ("2014-03-09 02:55:00", 5.0), ("2014-03-09 03:00:00", 7.0),
        ("2014-03-09 03:00:00", -2.5), ("2014-03-09 03:00:00", 0.0),
        ("2014-03-09 03:05:00", 4.0),
    ]


def test_an_unsorted_file_names_the_line_and_the_row_before(tmp_path):
    path = write(tmp_path, ["2014-03-09 03:00:00,1", "2014-03-09 03:05:00,2",
                            "2014-03-09 03:01:00,3"])
    with pytest.raises(ValueError, match=r"line 4: timestamp 2014-03-09 03:01:00 comes before "
                                         r"the row before it \(2014-03-09 03:05:00, line 3\)"):
        read_series_csv(path)


def test_counts_get_the_count_model_anything_else_the_metric_model():
    assert model_for_values([0.0, 4.0, 120.0]) == "seasonal-poisson"
    assert model_for_values([0.0, 4.0, 0.25]) == "metric"
    assert model_for_values([3.0, -4.0]) == "metric"


def test_one_output_row_per_input_row_with_repeats_gaps_and_negatives(tmp_path):
    rng = random.Random(3)
    lines, t = [], 1_400_000_000
    for i in range(3000):
        t += rng.choice([300, 300, 300, 0, 900])  # repeats and gaps
        lines.append(f"{t},{-20 + rng.gauss(0, 1) + (40 if i == 2900 else 0):.3f}")
    path = write(tmp_path, lines)
    out = tmp_path / "scored.csv"
    assert score_series_file(path, out, "both", None, progress=None) == 3000
    scored = out.read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in scored] == [line.split(",")[0] for line in lines]
    alerts = [i for i, row in enumerate(scored) if row.endswith(",1")]
    # Pure noise pages rarely (the calibration learns its surprise); a one-row spike of
    # 40 spreads pages within two rows (the clipped residual needs a second row to be sure).
    assert any(2900 <= i <= 2902 for i in alerts) and len(alerts) <= 6


def test_the_bucket_width_is_the_median_gap_not_the_first():
    # The first gap is 1 s (a clock settling), the rest 300 s: the model must be
    # built for 300 s buckets, so its one-day warm-up ends after 288 rows, not 86,400.
    rows = [("1400000000", 10.0), ("1400000001", 10.0)]
    rows += [(str(1_400_000_001 + 300 * i), 10.0 + (i % 5)) for i in range(1, 600)]
    rows.append((str(1_400_000_001 + 300 * 600), 500.0))
    out = list(score_series(rows, "metric", "both"))
    assert len(out) == len(rows) and out[-1]["alert"] == 1
