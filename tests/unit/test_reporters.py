"""The reporter filter: one report per reporter, service and clock hour."""

from __future__ import annotations

import random

from stream_detector.core.reporters import HOUR_MS, ReporterFilter, reporter_key


def test_a_reporter_counts_once_per_service_and_hour():
    f = ReporterFilter()
    assert f.first_report(1_000, "x", "a81f")
    assert not f.first_report(HOUR_MS - 1, "x", "a81f")
    assert f.first_report(HOUR_MS, "x", "a81f")  # the next clock hour
    assert f.first_report(1_000, "y", "a81f")  # another service
    assert f.first_report(1_000, "x", "b2c3")  # another reporter
    assert len(f) == 4
    f.forget_before(HOUR_MS)
    assert sorted(f.hours) == [1] and len(f) == 1


def test_keys_tell_apart_pairs_that_concatenate_alike_and_any_text():
    assert reporter_key("ab", "c") != reporter_key("a", "bc")
    assert reporter_key("東京-bank", "é") != reporter_key("東京-bank", "e")
    assert reporter_key("x", "a81f") == reporter_key("x", "a81f")


def test_a_busy_hour_keeps_every_pair_through_its_growth():
    """Far more pairs than the table's first size: each is kept, none is lost or doubled."""
    rng = random.Random(5)
    pairs = {(f"svc-{rng.randrange(500)}", f"{rng.getrandbits(40):x}") for _ in range(50_000)}
    f = ReporterFilter()
    assert all(f.first_report(0, service, reporter) for service, reporter in pairs)
    assert not any(f.first_report(0, service, reporter) for service, reporter in pairs)
    assert len(f) == len(pairs)
    copy = ReporterFilter()
    copy.load_state(f.state())
    assert copy.state() == f.state()
    assert not any(copy.first_report(0, service, reporter) for service, reporter in pairs)
