"""NAB scoring and outage evaluation on hand-made cases, and scoring one CSV series."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.evaluation import (
    NabFile,
    nab_best_threshold,
    nab_score,
    nab_window_rows,
)
from stream_detector.series_backtest import (
    read_series_csv,
    score_series,
    score_series_file,
    write_scored_csv,
)

ROWS = 1000  # probation: the first 150 rows


def one_file(detections: list[int], windows=((400, 499),), rows=ROWS) -> NabFile:
    scores = [0.0] * rows
    for i in detections:
        scores[i] = 1.0
    return NabFile("f", scores, list(windows))


# --- NAB standard profile ----------------------------------------------------


def test_detection_at_the_left_edge_of_a_window_earns_one():
    assert nab_score([one_file([400])], 0.5).total == pytest.approx(1.0)


def test_detection_in_the_middle_earns_less_and_at_the_right_edge_almost_nothing():
    middle = nab_score([one_file([450])], 0.5).total
    right = nab_score([one_file([499])], 0.5).total
    assert middle == pytest.approx(0.86, abs=0.01)
    assert 0.0 < right < 0.03  # one row before the edge: 2 sigmoid(0.05) - 1


def test_a_missed_window_costs_one():
    assert nab_score([one_file([])], 0.5).total == -1.0


def test_only_the_earliest_detection_in_a_window_counts():
    assert nab_score([one_file([400, 420, 460])], 0.5).total == pytest.approx(1.0)


def test_a_far_false_positive_costs_the_full_weight():
    # Before the first window, and long after it.
    before = nab_score([one_file([400, 200])], 0.5).total
    after = nab_score([one_file([400, 950], windows=((400, 449),))], 0.5).total
    assert before == pytest.approx(1.0 - 0.11)
    assert after == pytest.approx(1.0 - 0.11)


def test_a_false_positive_just_after_a_window_costs_little():
    total = nab_score([one_file([400, 501])], 0.5).total
    assert 1.0 - 0.01 < total < 1.0


def test_probation_rows_are_not_scored():
    assert nab_score([one_file([400, 10, 100])], 0.5).total == pytest.approx(1.0)


def test_window_rows_come_from_timestamps():
    stamps = [f"2015-03-01 00:{m:02d}:00" for m in range(0, 60, 5)]
    assert nab_window_rows(stamps, [("2015-03-01 00:12:00.0", "2015-03-01 00:30:00.0")]) == [
        (3, 6)
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=300, max_size=300), st.integers(160, 250))
def test_the_threshold_sweep_finds_the_best_shared_threshold(levels, left):
    files = [
        NabFile("a", [v / 5 for v in levels], [(left, left + 20)]),
        NabFile("b", [v / 5 for v in reversed(levels)], [(200, 230), (260, 280)]),
    ]
    best = nab_best_threshold(files)
    brute = max(nab_score(files, t).total for t in {v / 5 for v in levels} | {2.0})
    assert best.total == pytest.approx(brute)
    assert nab_score(files, best.threshold).total == pytest.approx(best.total)


# --- scoring one pre-bucketed series -------------------------------------------


def series_rows(n: int, seed: int = 1) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        value = rng.randint(5, 15) + (150 if i == n - 40 else 0)
        rows.append((str(1_424_990_000 + 300 * i), float(value)))
    return rows


def test_scoring_is_online_a_prefix_scores_the_same():
    rows = series_rows(900)
    full = list(score_series(rows))
    prefix = list(score_series(rows[:700]))
    assert prefix == full[:700]
    assert full[-40]["alert"] == 1


def test_csv_round_trip_and_scored_columns(tmp_path):
    src = tmp_path / "series.csv"
    src.write_text(
        "timestamp,value\n"
        + "".join(f"2015-02-26 {h:02d}:{m:02d}:53,{(h * 7 + m) % 9}\n"
                  for h in range(24) for m in range(0, 60, 5))
    )
    rows = read_series_csv(src)
    assert rows[0] == ("2015-02-26 00:00:53", 0.0) and len(rows) == 288
    out = tmp_path / "scored.csv"
    assert write_scored_csv(out, score_series(rows, direction="both")) == 288
    header, first = out.read_text().splitlines()[:2]
    assert header == "timestamp,value,anomaly_score,expected,alert"
    assert first.startswith("2015-02-26 00:00:53,0,0.000000,")
    assert score_series_file(src, tmp_path / "again.csv", "down", None, progress=None) == 288


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,count\n1,2\n", "line 1: the header must name"),
        ("timestamp,value\n2015-02-26 21:42:53,3\nyesterday,4\n", "line 3: 'yesterday' is not"),
        ("timestamp,value\n2015-02-26T21:42:53Z,three\n", "line 2: 'three' is not a number"),
        ("timestamp,value\n1424986973,nan\n", "line 2: the value nan is not a finite"),
        ("timestamp,value\n1424986973,1\n1424986970,2\n", "line 3: timestamp 1424986970"),
    ],
)
def test_a_bad_file_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_series_csv(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_one_clear_sentence(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        read_series_csv(tmp_path / "nope.csv")
