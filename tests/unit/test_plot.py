"""Which stretches `backtest --plot` draws, and the picture itself."""

from __future__ import annotations

import pytest

from stream_detector.backtest import IncidentSpan, Label, SeriesHistory, evaluate_labels
from stream_detector.plot import choose_panels, plot_backtest

MIN = 60_000
DAY = 1440


def span(service, start, end, region=None, paged=None):
    return IncidentSpan(f"{service}/{region}/{start}", service, region, start * MIN, end * MIN,
                        "critical", paged_ms=None if paged is None else paged * MIN)


# Two sudden outages (one caught, one missed), a gradual and a regional one
# (caught), a flood, and six false incidents on six services.
LABELS = [
    Label("web", None, 100, 200, "sudden", True, 20.0),
    Label("api", None, DAY + 100, DAY + 200, "sudden", True, 20.0),
    Label("mail", None, 2 * DAY, 2 * DAY + 300, "gradual", True, 4.0),
    Label("cdn", "BR", 3 * DAY, 3 * DAY + 80, "regional", True, 30.0),
    Label("chat", None, 4 * DAY, 4 * DAY + 15, "flood", False),
]
LABELS = [Label(lb.service, lb.region, lb.start_ms * MIN, lb.end_ms * MIN, lb.shape,
                lb.is_outage, lb.peak_multiplier) for lb in LABELS]
CAUGHT = [span("web", 102, 150, paged=104), span("mail", 2 * DAY + 90, 2 * DAY + 200),
          span("cdn", 3 * DAY + 5, 3 * DAY + 60, "BR", paged=3 * DAY + 8)]
FALSE = [span(f"s{n}", 5 * DAY + 10 * n, 5 * DAY + 10 * n + 4) for n in range(6)]


def _evaluation():
    return evaluate_labels(LABELS, CAUGHT + FALSE, MIN)


def test_every_kind_of_event_and_every_false_incident_gets_a_panel():
    panels, left_out = choose_panels(LABELS, CAUGHT + FALSE, _evaluation())
    assert left_out == 0
    kinds = {lb.shape for p in panels for lb in p.labels}
    assert kinds == {"sudden", "gradual", "regional", "flood"}
    # Of the two sudden outages, the missed one is drawn: it is the one to look at.
    (sudden,) = [p for p in panels if any(lb.shape == "sudden" for lb in p.labels)]
    assert sudden.service == "api" and sudden.title == "api: sudden outage x20: MISSED"
    drawn = {i.alert_id for p in panels for i in p.incidents}
    assert {i.alert_id for i in FALSE} <= drawn
    assert [p.title for p in panels if p.service == "s0"] == ["s0: false incident"]
    (regional,) = [p for p in panels if p.region == "BR"]
    assert regional.title == "cdn in BR: regional outage x30, paged +8 min"
    assert [p.start_ms for p in panels] == sorted(p.start_ms for p in panels)


def test_false_incidents_past_the_cap_are_counted_not_dropped_silently():
    panels, left_out = choose_panels(LABELS, CAUGHT + FALSE, _evaluation(), max_panels=6)
    assert len(panels) == 6
    assert left_out == 4  # 4 kinds first, then 2 of the 6 false incidents


def test_the_picture_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    history = SeriesHistory([("cdn", "BR")])
    png = tmp_path / "plot.png"
    drawn = plot_backtest(png, history, LABELS, CAUGHT + FALSE, _evaluation(), MIN, 2.0)
    assert drawn == 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
