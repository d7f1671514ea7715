"""Alerts made by hand for tests of what reads them."""

from __future__ import annotations

from dataclasses import replace

from stream_detector.core.incidents import WARNING, Alert, Change
from stream_detector.core.times import iso_ms

BASE = Alert(
    change=Change.UPDATED, service="svc", region=None, severity=WARNING,
    started_ms=iso_ms("2026-01-08T10:00:00Z"), bucket_start_ms=iso_ms("2026-01-08T10:05:00Z"),
    bucket_ms=60_000, reports=40, expected=4.0, score=1.0, regions=(("US", 30),),
    problems=(("login", 20),),
)


def make_alert(**fields) -> Alert:
    """`BASE` with `fields` changed; times may be given as ISO text (`started_at=...`)."""
    for text, ms in (("started_at", "started_ms"), ("bucket_start", "bucket_start_ms"),
                     ("ended_at", "ended_ms")):
        if text in fields:
            value = fields.pop(text)
            fields[ms] = None if value is None else iso_ms(value)
    return replace(BASE, **fields)
