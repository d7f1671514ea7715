"""The core driven by hand-made reports and a hand-moved clock."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.core.detector import (
    ACCEPTED,
    DUPLICATE,
    INVALID,
    LATE,
    DetectorConfig,
    PartitionDetector,
)
from stream_detector.core.events import InvalidReport, decode_report
from stream_detector.core.incidents import Change, IncidentPolicy
from stream_detector.core.reporters import reporter_key

T0 = 1_767_571_200_000  # Monday 2026-01-05 00:00 UTC
MINUTE = 60_000


def report(service="x", ts=T0, region=None, problem=None, reporter=None) -> bytes:
    doc = {"service": service, "ts": ts}
    for name, value in (("region", region), ("problem", problem), ("reporter", reporter)):
        if value is not None:
            doc[name] = value
    return orjson.dumps(doc)


def detector(**kw) -> PartitionDetector:
    # The baseline warms up in an hour; these tests are about the core's
    # mechanics, not about how good a model is (tests/unit/test_models.py).
    kw.setdefault("model", "ewma")
    kw.setdefault("lateness_ms", 5_000)
    return PartitionDetector(DetectorConfig(**kw))


def test_bucket_closes_only_when_watermark_passes_its_end():
    d = detector()
    d.add(report(ts=T0 + 1_000))
    d.add(report(ts=T0 + MINUTE + 4_000))  # watermark T0+59s: first bucket still open
    assert d.advance() == []
    d.add(report(ts=T0 + MINUTE + 5_000))  # watermark reaches T0+60s
    closed = d.advance()
    assert [(b.start_ms, b.counts["x"][0]) for b in closed] == [(T0, 1)]


def test_report_within_lateness_counts_and_later_is_late():
    d = detector()
    d.add(report(ts=T0 + MINUTE + 2_000))
    assert d.add(report(ts=T0 + 58_000)) == ACCEPTED  # 4 s late, within 5 s
    d.add(report(ts=T0 + 2 * MINUTE + 30_000))
    assert d.add(report(ts=T0 + 59_000)) == LATE
    closed = d.advance()
    assert [b.counts["x"][0] for b in closed] == [1, 1]


def test_wall_clock_closes_buckets_of_a_quiet_partition():
    d = detector(idle_timeout_ms=10_000)
    d.add(report(ts=T0 + 30_000), wall_ms=T0 + 30_000)
    assert d.advance(wall_ms=T0 + 35_000) == []  # quiet, but not for long
    closed = d.advance(wall_ms=T0 + 70_000)  # 40 s quiet: event time assumed T0+70s
    assert [b.start_ms for b in closed] == [T0]


def test_a_report_stamped_ahead_of_the_wall_clock_does_not_make_honest_ones_late():
    d = detector(idle_timeout_ms=10_000)
    wall = T0 + 30_000
    # Within max_future (an hour), so it is a report, not an error.
    assert d.add(report(ts=T0 + 55 * MINUTE), wall_ms=wall) == ACCEPTED
    assert d.advance(wall_ms=wall) == []  # the watermark did not jump ahead
    for k in range(5):
        assert d.add(report(ts=wall + k * 1_000), wall_ms=wall + k * 1_000) == ACCEPTED
    # Honest time moves on; the first minute closes with its five reports, and
    # the early report waits in its own bucket until time gets there.
    assert d.add(report(ts=T0 + 2 * MINUTE), wall_ms=T0 + 2 * MINUTE) == ACCEPTED
    closed = d.advance(wall_ms=T0 + 2 * MINUTE)
    assert [(b.start_ms, b.counts["x"][0]) for b in closed] == [(T0, 5)]
    later = d.advance(wall_ms=T0 + 57 * MINUTE)  # quiet since: the wall clock closes them
    assert [(b.start_ms, b.counts["x"][0]) for b in later if "x" in b.counts] == [
        (T0 + 2 * MINUTE, 1), (T0 + 55 * MINUTE, 1)]


def test_without_a_wall_clock_event_time_is_taken_as_it_comes():
    d = detector()
    d.add(report(ts=T0 + 55 * MINUTE))
    assert d.add(report(ts=T0 + 30_000)) == LATE  # a replay: the file's order is the truth


def test_reporter_counts_once_per_service_per_hour():
    d = detector()
    assert d.add(report(ts=T0 + 1, reporter="a")) == ACCEPTED
    assert d.add(report(ts=T0 + 2, reporter="a")) == DUPLICATE
    assert d.add(report(service="y", ts=T0 + 3, reporter="a")) == ACCEPTED
    assert d.add(report(ts=T0 + 4)) == ACCEPTED  # no reporter: always counts
    assert d.add(report(ts=T0 + 5)) == ACCEPTED
    assert d.add(report(ts=T0 + 3_600_000, reporter="a")) == ACCEPTED  # next hour


# Around an hour boundary, so reporters repeat within and across hours; out
# of order, so reports are late by event time or by a wall-clock close.
VALID = st.builds(
    report,
    service=st.sampled_from(["x", "y"]),
    ts=st.integers(T0 + 55 * MINUTE, T0 + 65 * MINUTE),
    region=st.sampled_from([None, "US", "GB", ""]),
    problem=st.sampled_from([None, "login", ""]),
    reporter=st.sampled_from([None, "a", "b", ""]),
)
INVALID_MESSAGES = st.sampled_from([
    b'{"service": "x", "ts": 17',
    b"[1, 2]",
    report(service=""),
    report(ts=True),
    report(ts="2026-01-05T01:00:00"),
    report(region=7),
    report(ts=T0 + 3 * 3_600_000),  # more than an hour ahead of every wall clock used
    report(reporter="r" * 300),
    report(ts=T0 + 56 * MINUTE, problem="p" * 20_000),
])
MIXED = st.one_of(
    VALID,
    VALID,
    st.builds(lambda ts: report(ts=ts.isoformat()), st.datetimes(
        min_value=datetime(2026, 1, 5, 0, 55), max_value=datetime(2026, 1, 5, 1, 5),
        timezones=st.just(UTC))),
    # Longer than any field may be, so the field lengths are checked one by one.
    st.builds(lambda raw: raw[:-1] + b', "pad": "' + b"z" * 300 + b'"}', VALID),
    INVALID_MESSAGES,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(MIXED, max_size=30), max_size=5), st.booleans())
def test_add_many_is_add_one_by_one(batches, with_wall_clock):
    one, many = detector(), detector()
    for n, batch in enumerate(batches):
        # Quiet stretches of wall time close buckets before event time does.
        wall_ms = T0 + (50 + 5 * n) * MINUTE if with_wall_clock else None
        outcomes: Counter[str] = Counter()
        rejected = []
        for index, raw in enumerate(batch):
            try:
                outcomes[one.add(raw, wall_ms)] += 1
            except InvalidReport as exc:
                outcomes[INVALID] += 1
                rejected.append((index, exc.reason, exc.detail))
        counts, invalid = many.add_many(batch, wall_ms)
        assert counts == {o: outcomes[o] for o in (ACCEPTED, INVALID, LATE, DUPLICATE)}
        assert [(index, exc.reason, exc.detail) for index, exc in invalid] == rejected
        assert many.counter.open == one.counter.open
        assert many.reporters.state() == one.reporters.state()
        assert (many.clock.max_event_ms, many.clock.wall_at_max_ms) == (
            one.clock.max_event_ms, one.clock.wall_at_max_ms)
        assert [(b.start_ms, b.counts) for b in many.advance(wall_ms)] == [
            (b.start_ms, b.counts) for b in one.advance(wall_ms)]


@settings(max_examples=300, deadline=None)
@given(MIXED)
def test_add_counts_exactly_what_decode_report_reads(raw):
    """The detector checks the common shape of a report inline; it must agree
    with decode_report, which defines what a report is."""
    d = detector()
    try:
        service, ts, region, problem, reporter = decode_report(raw)
    except InvalidReport as exc:
        with pytest.raises(InvalidReport) as info:
            d.add(raw)
        assert (info.value.reason, info.value.detail) == (exc.reason, exc.detail)
        return
    assert d.add(raw) == ACCEPTED
    regions = {region: 1} if region else {}
    problems = {problem: 1} if problem else {}
    assert d.counter.open == {ts - ts % MINUTE: {service: [1, regions, problems]}}
    assert len(d.reporters) == (1 if reporter else 0)
    if reporter:
        assert reporter_key(service, reporter) in d.reporters.hours[ts // 3_600_000]


def test_region_and_problem_breakdowns_are_counted():
    d = detector()
    for region, problem in [("US", "login"), ("US", "app"), ("GB", "login"), (None, None)]:
        d.add(report(region=region, problem=problem))
    (bucket,) = d.flush()[:1]
    total, regions, problems = bucket.counts["x"]
    assert (total, regions, problems) == (4, {"US": 2, "GB": 1}, {"login": 2, "app": 1})


def steady_traffic(d: PartitionDetector, minutes: range, per_minute, rng, region="US"):
    """Per-minute traffic; returns every alert produced while feeding it."""
    alerts = []
    for minute in minutes:
        for _ in range(per_minute(minute)):
            ts = T0 + minute * MINUTE + rng.randrange(MINUTE)
            d.add(report(ts=ts, region=region, reporter=f"{rng.getrandbits(48):x}"))
        for bucket in d.advance():
            alerts.extend(bucket.alerts)
    return alerts


def test_outage_opens_one_incident_which_resolves():
    rng = random.Random(7)
    d = detector(policy=IncidentPolicy(calm_buckets=3))
    alerts = steady_traffic(d, range(0, 400),
                            lambda m: 400 if 300 <= m < 320 else rng.randint(15, 25), rng)
    alerts += [a for b in d.flush() for a in b.alerts]
    ids = {a.alert_id for a in alerts}
    assert ids == {"x/*/2026-01-05T05:00:00Z"}
    assert [a.change for a in alerts].count(Change.OPENED) == 1
    assert [a.status for a in alerts].count("resolved") == 1
    assert alerts[0].change is Change.OPENED and alerts[-1].change is Change.RESOLVED
    assert alerts[0].severity == "critical"
    assert alerts[0].regions[0][0] == "US"
    assert b'"ended_at":"2026-01-05T05:20:00Z"' in alerts[-1].to_json()


def test_single_reporter_flood_opens_nothing():
    """5,000 reports from one reporter within 20 minutes, on time, among the usual
    traffic: the reporter counts once per service and hour, so nothing pages. Without
    the reporter rule, the same traffic opens an incident."""
    rng = random.Random(3)
    d = detector()
    alerts = steady_traffic(d, range(0, 150), lambda m: rng.randint(15, 25), rng)
    flood = Counter()
    for minute in range(150, 170):
        # The flood's 250 reports of this minute are mixed into its traffic, in time
        # order with it, so each one arrives while its bucket is open.
        stamps = [(rng.randrange(MINUTE), f"{rng.getrandbits(48):x}")
                  for _ in range(rng.randint(15, 25))]
        stamps += [(rng.randrange(MINUTE), "angry-user") for _ in range(250)]
        for offset, reporter in sorted(stamps):
            outcome = d.add(report(ts=T0 + minute * MINUTE + offset, region="US",
                                   reporter=reporter))
            if reporter == "angry-user":
                flood[outcome] += 1
        for bucket in d.advance():
            alerts.extend(bucket.alerts)
    alerts += steady_traffic(d, range(170, 230), lambda m: rng.randint(15, 25), rng)
    # 150-169 minutes lie in hours 2 (minutes 120-179): the first report counts.
    assert flood == {ACCEPTED: 1, DUPLICATE: 4_999}
    assert alerts == []


def test_regional_outage_names_its_region():
    rng = random.Random(11)
    d = detector()
    alerts = []
    for minute in range(300):
        for region, n in (("US", 30), ("DE", 3)):
            n = 60 if (region == "DE" and 250 <= minute < 270) else n
            for _ in range(rng.randint(n - n // 5, n + n // 5)):
                ts = T0 + minute * MINUTE + rng.randrange(MINUTE)
                d.add(report(ts=ts, region=region))
        alerts.extend(a for b in d.advance() for a in b.alerts)
    regional = [a for a in alerts if a.region is not None]
    assert regional and {a.region for a in regional} == {"DE"}
    assert regional[0].regions[0][0] == "DE"


def _shuffle_within(offsets: list[int], lateness: int, rnd) -> list[int]:
    shuffled = list(offsets)
    # Swap neighbours only when they are within the lateness of each other.
    for i in range(len(shuffled) - 1):
        if rnd.random() < 0.5 and shuffled[i + 1] - shuffled[i] < lateness:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    return shuffled


def _replay(order: list[int], lateness: int, reporter) -> dict[int, int]:
    d = detector(lateness_ms=lateness, regions=False)
    closed = []
    for off in order:
        assert d.add(report(ts=T0 + off, reporter=reporter(off))) != LATE
        closed.extend(d.advance())
    closed.extend(d.flush())
    return {b.start_ms: b.counts.get("x", [0])[0] for b in closed}


LATENESS = 2 * MINUTE
OFFSETS = st.lists(st.integers(0, 10 * MINUTE), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(OFFSETS, st.randoms())
def test_any_order_within_lateness_gives_the_same_bucket_counts(offsets, rnd):
    base = sorted(offsets)
    shuffled = _shuffle_within(base, LATENESS, rnd)
    def unique(off):
        return f"r{off}"
    assert _replay(shuffled, LATENESS, unique) == _replay(base, LATENESS, unique)


@settings(max_examples=40, deadline=None)
@given(OFFSETS, st.randoms())
def test_any_order_gives_the_same_hourly_totals_with_repeating_reporters(offsets, rnd):
    """Which bucket a repeat reporter's one counted report lands in depends on
    arrival; how many count in the hour does not."""
    base = sorted(offsets)
    shuffled = _shuffle_within(base, LATENESS, rnd)
    def few(off):
        return f"r{off % 7}"
    def hourly(counts):
        totals: dict[int, int] = {}
        for start, n in counts.items():
            totals[start // 3_600_000] = totals.get(start // 3_600_000, 0) + n
        return totals
    assert hourly(_replay(shuffled, LATENESS, few)) == hourly(_replay(base, LATENESS, few))


def test_decaying_tail_after_resolve_does_not_reopen_within_cooldown():
    """An outage that ends with a slowly fading tail pages once, not again and again."""
    from stream_detector.core.incidents import IncidentTracker
    from stream_detector.core.models.base import Scored

    t = IncidentTracker(IncidentPolicy(calm_buckets=2, cooldown_buckets=10))
    key = ("x", None)
    statuses = []
    # outage, two calm buckets (resolve), then a 3x tail: high score, above the band
    for minute, (reports, score) in enumerate(
        [(200, 1.0), (200, 1.0), (10, 0.2), (10, 0.2), (30, 1.0), (30, 1.0), (200, 1.0)]
    ):
        alert, _ = t.observe(key, minute * MINUTE, MINUTE, reports, Scored(score, 10.0, 3.0),
                             {}, {})
        statuses.append(alert and alert.status)
    assert statuses == ["firing", "firing", "firing", "resolved", None, None, "firing"]


def test_anomalous_buckets_page_only_when_the_evidence_reaches_the_bound():
    from stream_detector.core.incidents import IncidentTracker
    from stream_detector.core.models.base import Scored

    policy = IncidentPolicy(false_alarm_rate=0.01)
    t = IncidentTracker(policy)
    key = ("x", None)
    anomalous = Scored(0.9995, 10.0, 3.0)  # unusual, far from the page bound
    paging = Scored(policy.page_score(MINUTE), 10.0, 3.0)
    assert t.observe(key, 0, MINUTE, 30, anomalous, {}, {}) == (None, 0.0)
    assert t.observe(key, MINUTE, MINUTE, 10, Scored(0.1, 10.0, 3.0), {}, {}) == (None, 1.0)
    assert t.observe(key, 2 * MINUTE, MINUTE, 30, anomalous, {}, {}) == (None, 0.0)
    # At the bound, but with fewer reports behind it than `min_reports`: no page.
    assert t.observe(key, 3 * MINUTE, MINUTE, 30, paging, {}, {}, excess_reports=4) == (
        None, 0.0)
    alert, weight = t.observe(key, 4 * MINUTE, MINUTE, 30, paging, {}, {})
    # The incident starts with the first bucket of the anomalous run it ends.
    assert alert.change is Change.OPENED and alert.started_ms == 2 * MINUTE
    assert alert.bucket_start_ms == 4 * MINUTE  # confirmed: opened after its start
    assert weight == 0.0


def test_an_anomaly_at_the_time_of_day_of_recent_incidents_is_learned():
    """An outage teaches the model nothing; the same anomaly on a third day is a rhythm."""
    from stream_detector.core.incidents import DAY_MS, IncidentTracker
    from stream_detector.core.models.base import Scored

    policy = IncidentPolicy(calm_buckets=1, recurrence_count=2)
    t = IncidentTracker(policy)
    key = ("x", None)
    evening = 18 * 60 * MINUTE
    hot, calm = Scored(1.0, 10.0, 3.0), Scored(0.1, 10.0, 3.0)

    def weight_at(ms: int) -> float:
        _, weight = t.observe(key, ms, MINUTE, 40, hot, {}, {})
        t.observe(key, ms + MINUTE, MINUTE, 10, calm, {}, {})  # resolves it again
        return weight

    assert weight_at(evening) == 0.0  # the first time, an outage
    assert weight_at(DAY_MS + evening + 5 * MINUTE) == 0.0  # twice may be chance
    assert weight_at(2 * DAY_MS + 12 * 60 * MINUTE) == 0.0  # another time of day
    assert weight_at(2 * DAY_MS + evening - 5 * MINUTE) == policy.recurring_weight
    # Past the recurrence horizon, the evening is news again.
    assert weight_at((policy.recurrence_days + 4) * DAY_MS + evening) == 0.0


def test_a_daily_peak_pages_at_first_and_is_learned_within_a_week():
    """A 3-fold evening hour every day from day 3 is news, then, within a week, the normal."""
    rng = np.random.default_rng(5)
    d = PartitionDetector(DetectorConfig(regions=False, lateness_ms=5_000))
    day = 24 * 60
    first_day_of_incidents: Counter[int] = Counter()
    for minute in range(18 * day):
        evening = (minute % day) // 60 == 18 and minute >= 3 * day
        for i in range(rng.poisson(15.0 if evening else 5.0)):
            d.add(report(ts=T0 + minute * MINUTE + i))
        for bucket in d.advance():
            for alert in bucket.alerts:
                if alert.change is Change.RESOLVED:
                    first_day_of_incidents[(alert.started_ms - T0) // (day * MINUTE)] += 1
    incidents_by_day = [first_day_of_incidents[n] for n in range(18)]
    assert incidents_by_day[3] == 1, incidents_by_day  # the first evening pages
    assert sum(incidents_by_day[:3]) == 0, incidents_by_day
    assert sum(incidents_by_day[10:17]) == 0, incidents_by_day  # a week later it is normal



# JSON texts of reports with at most one odd part each, written by hand so
# that they vary in what a byte reader could get wrong: spacing, escapes,
# text that is not UTF-8, duplicate keys, nested and odd-typed values, and
# numbers of every form. A plain part is one the reader handles itself; an
# odd one is what it must leave to orjson and decode_report.
_SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
_PLAIN_TEXT = st.sampled_from(['"x"', '"US"', '"a81f"', '"東京"', '"login"'])
_ODD_TEXT = st.one_of(
    st.sampled_from(['""', '"caf\\u00e9"', '"a\\"b"', '"\\ud83d\\ude00"', '"tab\\tin"',
                     '"\\u0000"', '"x\u0001"', '"a@NOT-UTF-8@"', '"@NOT-UTF-8@"']),
    st.text(max_size=6).map(lambda t: orjson.dumps(t).decode()),
)
_ODD_NUMBER = st.sampled_from(["-1", "0", "01", "1.5", "1e3", "-", "1767571200971.0", "1E+2",
                               "17675712009710000000000", "-0.5e-3", str(-T0), "1767571200001x",
                               "1e999", "-1.0e309", "9" * 400])
_ODD_VALUE = st.one_of(_ODD_TEXT, _ODD_NUMBER, st.sampled_from(
    ["null", "true", "false", "[]", '{"a": [1]}', "nul", "NaN", '"x" "y"', "", "{"]))
_ODD_KEY = st.sampled_from(['"caf\\u00e9"', '"ünï"', '"servic\\u0065"', '"a@NOT-UTF-8@"',
                            '"extra"', "extra", '""'])
_PLACES = ["service", "ts", "region", "problem", "reporter"]


@st.composite
def _json_objects(draw) -> bytes:
    fields = [("service", draw(_PLAIN_TEXT)), ("ts", str(T0 + 1))]
    fields += [(name, draw(_PLAIN_TEXT)) for name in ("region", "problem", "reporter")
               if draw(st.booleans())]
    odd = draw(st.sampled_from(["none", "value", "extra", "duplicate", "key", "around",
                                "not UTF-8"]))
    if odd == "not UTF-8":  # in any field's value, known or not
        name = draw(st.sampled_from([*_PLACES, "extra"]))
        fields = [(n, v) for n, v in fields if n != name] + [(name, '"a@NOT-UTF-8@"')]
    elif odd == "value":  # one of the five fields holds an odd value
        name = draw(st.sampled_from(_PLACES))
        fields = [(n, v) for n, v in fields if n != name] + [(name, draw(_ODD_VALUE))]
    elif odd == "extra":  # an unknown field, with any value
        fields.append(("extra", draw(st.one_of(_PLAIN_TEXT, _ODD_VALUE))))
    elif odd == "duplicate":  # a field again; JSON's last one wins, the first is checked
        name = draw(st.sampled_from([n for n, _ in fields]))
        if draw(st.booleans()):
            fields = [(n, '"a@NOT-UTF-8@"' if n == name else v) for n, v in fields]
        fields.append((name, draw(st.one_of(st.just("null"), _PLAIN_TEXT, _ODD_VALUE))))
    fields = draw(st.permutations(fields))
    items = [f'"{name}"{draw(_SPACE)}:{draw(_SPACE)}{value}' for name, value in fields]
    if odd == "key":  # an odd field name
        items.append(f"{draw(_ODD_KEY)}:{draw(_PLAIN_TEXT)}")
    sep = draw(_SPACE)
    text = sep + "{" + sep + f"{sep},{sep}".join(items) + sep + "}" + draw(_SPACE)
    if odd == "around":  # something before or after the object
        text = draw(st.sampled_from(["[", "", "\ufeff"])) + text + draw(
            st.sampled_from(["", "}", ",", "x", "\x00"]))
    # Bytes that are not UTF-8: a stray byte, a cut sequence, a surrogate.
    not_utf8 = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
    return text.encode().replace(b"@NOT-UTF-8@", not_utf8)


@st.composite
def _mutated(draw) -> bytes:
    raw = bytearray(draw(VALID))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw) - 1))
        change = draw(st.sampled_from(["drop", "replace", "insert"]))
        if change == "drop":
            del raw[at]
        else:
            byte = draw(st.sampled_from(b' "{}:,\\0-9a\x00\x7f\xc3\xa9\xff'))
            raw[at:at + (change == "replace")] = bytes([byte])
    return bytes(raw)


@settings(max_examples=600, deadline=None)
@given(st.one_of(_json_objects(), _mutated()))
def test_reading_report_bytes_agrees_with_orjson_and_decode_report(raw):
    """Counting reads common reports from their bytes; what it accepts, and the
    reason it gives for what it refuses, must be exactly decode_report's."""
    _agrees_with_decode_report(raw)


@pytest.mark.parametrize("raw", [
    # A field given twice: orjson checks the first value too.
    b'{"service":"a\xff","service":"x","ts":1767571200000}',
    b'{"service":"x","ts":1767571200000,"region":"\xed\xa0\x80","region":null}',
    b'{"service":"x","ts":1767571200000,"ts":1767571200001}',
    # Numbers beyond a double's range, which orjson refuses, in any field.
    b'{"service":"s","":1e999,"ts":1767571200000}',
    b'{"service":"s","n":1.0e309,"ts":1767571200000}',
    b'{"service":"s","n":' + b"9" * 400 + b',"ts":1767571200000}',
    b'{"service":"s","n":-0.5e-3,"ts":1767571200000}',
    b'{"service":"s","n":' + b"9" * 19 + b',"ts":1767571200000}',
])
def test_reading_report_bytes_agrees_on_cases_a_review_found(raw):
    _agrees_with_decode_report(raw)


def _agrees_with_decode_report(raw: bytes) -> None:
    d = detector()
    try:
        service, ts, region, problem, reporter = decode_report(raw)
    except InvalidReport as exc:
        with pytest.raises(InvalidReport) as info:
            d.add(raw, wall_ms=T0)
        assert (info.value.reason, info.value.detail) == (exc.reason, exc.detail)
        return
    if ts > T0 + 3_600_000:
        return  # refused as in the future, which decode_report does not know
    assert d.add(raw, wall_ms=T0) == ACCEPTED
    regions = {region: 1} if region else {}
    problems = {problem: 1} if problem else {}
    assert d.counter.open == {ts - ts % MINUTE: {service: [1, regions, problems]}}


def test_a_message_without_a_value_is_refused_and_the_batch_goes_on():
    d = detector()
    counts, invalid = d.add_many([None, report(ts=T0 + 1)])
    assert counts[ACCEPTED] == 1 and counts[INVALID] == 1
    assert [(index, exc.reason) for index, exc in invalid] == [(0, "not_json")]
