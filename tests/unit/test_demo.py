"""What the demo prints: alert lines, the progress line, the summary."""

from __future__ import annotations

import io
from dataclasses import replace

from stream_detector.core.incidents import Change
from stream_detector.core.times import iso_ms
from stream_detector.demo import DemoProgress, _line, _summary
from stream_detector.sim.scenarios import Outage
from tests.alerts import make_alert

BR = make_alert(
    service="aws", region="BR", severity="critical", started_at="2026-01-08T10:53:00Z",
    bucket_start="2026-01-08T11:09:00Z", reports=5, expected=0.43, score=1.0,
    regions=(("BR", 31),), problems=(("server connection", 11), ("login", 10)),
)
T0 = 1_767_830_400_000  # 2026-01-08T00:00:00Z


def test_a_firing_line_keeps_this_minute_apart_from_the_incident_so_far():
    line = _line(BR)
    assert "this minute 5 (usually 0.4); since 10:53Z: BR 31; problems server connection 11" \
        in line
    assert "score" not in line and "1.0000" not in line
    assert line.split()[:4] == ["FIRING", "aws", "in", "BR"]


def test_a_resolved_line_says_how_long_it_lasted():
    resolved = replace(BR, change=Change.RESOLVED, ended_ms=iso_ms("2026-01-08T12:07:00Z"))
    assert _line(resolved).endswith("2026-01-08 10:53Z .. 12:07Z (74 min)")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_line_redrawn_under_the_alerts(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = Terminal()
    incidents = {"a": [BR]}
    progress = DemoProgress(out, incidents, warmup_ms=2 * 86_400_000)
    sent = list(progress.count([{"ts": T0, "service": "x"}, {"ts": T0 + 3_600_000,
                                                             "service": "x"}]))
    assert len(sent) == 2 and progress.sent == 2
    progress.show()
    progress.print("  FIRING    x")
    progress.end()
    text = out.getvalue()
    assert text.startswith("\r\033[Kprogress: simulated 2026-01-08 01:00Z  2 reports")
    assert "models warming up, 47 h to go  1 incident open" in text
    # The alert clears the progress line, takes a line of its own, and the progress returns.
    assert "\r\033[K  FIRING    x\nprogress: " in text
    assert text.endswith("open\n")


def test_progress_elsewhere_is_plain_lines():
    out = io.StringIO()
    progress = DemoProgress(out, {}, warmup_ms=0)
    list(progress.count([{"ts": T0, "service": "x"}]))
    progress.show()
    progress.print("  FIRING    x")
    progress.end()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()
    assert lines[1] == "  FIRING    x"
    assert lines[0].startswith("progress: simulated 2026-01-08 00:00Z  1 reports (")
    assert lines[2].startswith("progress: ") and lines[2].endswith("models ready  0 incidents open")


def test_the_summary_gives_the_page_delay_and_names_the_false_alert():
    outage = Outage(service="aws", start_ms=iso_ms("2026-01-08T10:44:00Z"),
                    end_ms=iso_ms("2026-01-08T12:10:00Z"), shape="regional",
                    peak_multiplier=30.0, region="BR", ramp_ms=180_000)
    first = replace(BR, change=Change.OPENED, bucket_start_ms=iso_ms("2026-01-08T10:55:00Z"),
                    severity="warning")
    resolved = replace(BR, change=Change.RESOLVED, ended_ms=iso_ms("2026-01-08T12:07:00Z"))
    false = replace(BR, change=Change.OPENED, service="gmail", region=None,
                    started_ms=iso_ms("2026-01-07T23:37:00Z"),
                    bucket_start_ms=iso_ms("2026-01-07T23:37:00Z"), severity="warning")
    out = io.StringIO()
    _summary(100, [outage], {"br": [first, BR, resolved], "gmail": [false]}, 76.0, out)
    text = out.getvalue()
    # 10:55 bucket ends 10:56: 12 minutes after 10:44; the incident is dated 10:53 (+9).
    assert "paged +12 min after it began (incident dated from +9 min), critical" in text
    assert "false alert: gmail 2026-01-07 23:37Z (warning), matches no injected outage" in text
    assert "false alerts: none" not in text
    # With no false alert the summary says so, rather than saying nothing.
    clean = io.StringIO()
    _summary(100, [outage], {"br": [first, BR, resolved]}, 76.0, clean)
    assert clean.getvalue().endswith(
        "  false alerts: none, every incident matches an injected outage\n")


def test_on_a_narrow_terminal_the_progress_line_is_cut_not_wrapped(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    out = Terminal()
    progress = DemoProgress(out, {}, warmup_ms=0)
    list(progress.count([{"ts": T0, "service": "x"}]))
    progress.show()
    shown = out.getvalue().removeprefix("\r\033[K")
    assert len(shown) == 39 and shown.startswith("progress: simulated 2026-01-08")
