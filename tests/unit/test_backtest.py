"""Backtest against labels: the evaluation numbers on a case with a known answer, and --plot."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream_detector.backtest import (
    IncidentSpan,
    Label,
    evaluate_labels,
    incident_spans,
    load_labels,
    run_labelled_backtest,
)
from stream_detector.cli import main
from stream_detector.core.detector import DetectorConfig
from stream_detector.core.incidents import CRITICAL, Change
from stream_detector.core.times import iso_utc as iso
from tests.alerts import make_alert

T0 = 1_767_571_200_000  # 2026-01-05T00:00Z
MIN = 60_000
HOURS = 4


def per_minute(service: str, minute: int) -> int:
    """Hand-made traffic: a steady 8-12 reports a minute, with the injected events."""
    n = 8 + 2 * (minute % 3)
    if service == "shop" and 150 <= minute < 180:  # an outage, caught
        n = 80
    if service == "chat" and 200 <= minute < 215:  # a burst nobody labelled
        n = 80
    return n


def write_case(tmp_path: Path) -> tuple[Path, Path]:
    events = tmp_path / "reports.jsonl"
    serial = 0
    with events.open("wb") as out:
        for minute in range(HOURS * 60):
            for service in ("shop", "bank", "chat"):
                n = per_minute(service, minute)
                for k in range(n):
                    serial += 1
                    out.write(orjson.dumps({
                        "service": service, "ts": T0 + minute * MIN + k * MIN // n,
                        "region": "US", "problem": "login", "reporter": f"r{serial}",
                    }) + b"\n")
            if 100 <= minute < 120:  # one reporter hammering "bank": a flood, no outage
                for k in range(40):
                    out.write(orjson.dumps({
                        "service": "bank", "ts": T0 + minute * MIN + k * 1000,
                        "region": "US", "reporter": "angry",
                    }) + b"\n")

    def label(service, start, end, shape, is_outage=True):
        return {"service": service, "region": None, "start": iso(T0 + start * MIN),
                "end": iso(T0 + end * MIN), "shape": shape, "peak_multiplier": 8.0,
                "is_outage": is_outage}

    labels = tmp_path / "labels.json"
    labels.write_bytes(orjson.dumps([
        # Labelled two minutes before the traffic rises: the delay is 2 buckets.
        label("shop", 148, 180, "sudden"),
        # Labelled, but the traffic never shows it: missed.
        label("bank", 150, 180, "sudden"),
        label("bank", 100, 120, "flood", is_outage=False),
    ]))
    return events, labels


def test_label_evaluation_has_the_known_answer(tmp_path):
    events, labels_path = write_case(tmp_path)
    labels = load_labels(labels_path)
    run = run_labelled_backtest(events, tmp_path / "alerts.jsonl",
                                DetectorConfig(model="ewma"), labels, progress=None)
    ev = run.evaluation
    assert ev is not None
    assert [(i.service, i.region) for i in run.incidents] == [("shop", None), ("chat", None)]
    assert (ev.detected, len(ev.outages), ev.recall) == (1, 2, 0.5)
    assert [i.service for i in ev.false_incidents] == ["chat"]
    assert ev.delays == [2.0]
    # Paged at the end of the bucket of the incident's first firing message,
    # which is at the earliest the end of the incident's first bucket.
    first_firing = next(a for a in run.alerts if a.service == "shop")
    assert first_firing.change is Change.OPENED
    paged = (first_firing.bucket_end_ms - (T0 + 148 * MIN)) / MIN
    assert ev.page_delays == [paged] and paged >= 3.0
    assert ev.series["shop"].recall == 1.0 and ev.series["bank"].recall == 0.0
    assert ev.series["chat"].false_incidents == 1
    assert (len(ev.floods), ev.flood_incidents) == (1, [])
    assert ev.by_shape() == {"sudden": (1, 2)}
    # One window caught near its start, one missed, one false detection.
    assert ev.nab is not None and ev.nab.windows == 2 and ev.nab.false_positives == 1
    assert ev.nab_normalized == pytest.approx(100 * (ev.nab.total + 2) / 4)
    assert 40 < ev.nab_normalized < 50


def test_page_delay_is_the_end_of_the_first_firing_bucket():
    def alert(change, bucket_minute, started_minute=10):
        return make_alert(change=change, service="x", severity=CRITICAL,
                          started_ms=T0 + started_minute * MIN,
                          ended_ms=T0 + 20 * MIN if change is Change.RESOLVED else None,
                          bucket_start_ms=T0 + bucket_minute * MIN)

    # Back-dated to minute 10, first sent with the bucket of minute 13.
    spans = incident_spans([alert(Change.OPENED, 13), alert(Change.UPDATED, 14),
                            alert(Change.RESOLVED, 24)])
    assert [(s.start_ms, s.paged_ms) for s in spans] == [(T0 + 10 * MIN, T0 + 14 * MIN)]
    ev = evaluate_labels([Label("x", None, T0 + 9 * MIN, T0 + 30 * MIN, "sudden", True)],
                         spans, MIN)
    assert ev.delays == [1.0] and ev.page_delays == [5.0]


def test_gzipped_events_file_is_read_as_its_lines(tmp_path):
    import gzip

    events, _ = write_case(tmp_path)
    packed = tmp_path / "reports.jsonl.gz"
    packed.write_bytes(gzip.compress(events.read_bytes()))
    config = DetectorConfig(model="ewma")
    plain = run_labelled_backtest(events, tmp_path / "a.jsonl", config, progress=None)
    zipped = run_labelled_backtest(packed, tmp_path / "b.jsonl", config, progress=None)
    assert zipped.alerts == plain.alerts and len(plain.alerts) > 0


def span(service, start, end, region=None):
    return IncidentSpan(f"{service}/{region}/{start}", service, region, start * MIN, end * MIN,
                        "critical")


def test_regional_outage_is_covered_by_its_region_or_the_service_only():
    outage = Label("cdn", "BR", 100 * MIN, 160 * MIN, "regional", True)
    for incident, caught in [
        (span("cdn", 105, 120, "BR"), True),
        (span("cdn", 105, 120), True),
        (span("cdn", 105, 120, "US"), False),
        (span("web", 105, 120, "BR"), False),
        (span("cdn", 160, 170, "BR"), True),  # may start as late as the window's end
        (span("cdn", 161, 170, "BR"), False),
        (span("cdn", 80, 101), True),  # already open: delay 0
    ]:
        ev = evaluate_labels([outage], [incident], MIN)
        assert ev.detected == caught, incident
        assert len(ev.false_incidents) == (not caught), incident
    assert evaluate_labels([outage], [span("cdn", 80, 101)], MIN).delays == [0.0]


def test_backtest_cli_prints_the_table_and_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    events, labels = write_case(tmp_path)
    png = tmp_path / "why.png"
    code = main(["backtest", "--events", str(events), "--output", str(tmp_path / "alerts.jsonl"),
                 "--model", "ewma", "--labels", str(labels), "--plot", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split() == ["total", "2", "1", "50%", "1", "2", "2"]
    assert "MISSED" in out and "flood: no incident" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_with_input_is_a_usage_error(tmp_path, capsys):
    code = main(["backtest", "--input", str(tmp_path / "s.csv"), "--output",
                 str(tmp_path / "o.csv"), "--labels", str(tmp_path / "l.json")])
    assert code == 2
    assert "--labels and --plot go with --events" in capsys.readouterr().err


def test_unreadable_labels_file_is_one_sentence(tmp_path, capsys):
    events, _ = write_case(tmp_path)
    bad = tmp_path / "labels.json"
    bad.write_text("{not json")
    code = main(["backtest", "--events", str(events), "--output", str(tmp_path / "a.jsonl"),
                 "--labels", str(bad)])
    assert code == 2
    assert "labels file" in capsys.readouterr().err
