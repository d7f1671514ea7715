"""The traffic simulator: determinism, order, and that each injected shape looks as labelled."""

from __future__ import annotations

import io
import random
from collections import Counter
from itertools import pairwise

import orjson
import pytest

from stream_detector.sim import (
    DEFAULT_START_MS,
    SHAPES,
    Outage,
    generate_reports,
    make_services,
    plan_outages,
    simulate,
    write_jsonl,
    write_labels,
)
from stream_detector.sim.scenarios import DAY_MS, HOUR_MS, MINUTE_MS, WARMUP_MS, weekday
from stream_detector.sim.traffic import poisson

START = DEFAULT_START_MS + 18 * HOUR_MS  # Monday evening UTC: busy, so baselines are not zero


@pytest.fixture(scope="module")
def services():
    return make_services(8, random.Random(11))


def by_name(services, name):
    return next(s for s in services if s.name == name)


def run(services, outages, hours=3.0, seed=5, start=START):
    return list(generate_reports(services, outages, start, hours / 24, random.Random(seed)))


def in_window(reports, service, start, end):
    return [r for r in reports if r["service"] == service and start <= r["ts"] < end]


def test_same_seed_same_reports_and_another_seed_differs():
    first = list(simulate(5, 0.2, seed=3)[2])
    assert first == list(simulate(5, 0.2, seed=3)[2])
    assert first != list(simulate(5, 0.2, seed=4)[2])


def test_reports_come_in_event_time_order_inside_the_run():
    _, _, reports = simulate(6, 0.5, seed=2, outages=0)
    stamps = [r["ts"] for r in reports]
    assert stamps == sorted(stamps)
    assert stamps[0] >= DEFAULT_START_MS and stamps[-1] < DEFAULT_START_MS + DAY_MS // 2


def test_reports_follow_the_contract():
    _, _, reports = simulate(6, 0.5, seed=2, outages=0)
    reports = list(reports)
    allowed = {"service", "ts", "region", "problem", "reporter"}
    assert all({"service", "ts"} <= r.keys() <= allowed for r in reports)
    assert all(type(r["ts"]) is int for r in reports)
    without_reporter = sum("reporter" not in r for r in reports) / len(reports)
    assert 0.01 < without_reporter < 0.06
    # Random ids: a reporter almost never shows up twice.
    reporters = Counter(r["reporter"] for r in reports if "reporter" in r)
    assert reporters.most_common(1)[0][1] <= 2


def test_services_span_a_few_reports_a_day_to_many_a_minute():
    services = make_services(30, random.Random(1))
    rates = [s.peak_rate for s in services]
    assert services[0].name == "x" and rates[0] == max(rates)
    assert min(rates) * 24 * 60 < 10  # under ten a day even if every minute were the peak
    assert max(rates) >= 50
    assert len({s.name for s in services}) == 30
    assert all(abs(sum(share for _, share in s.regions) - 1) < 1e-9 for s in services)


def test_an_outage_raises_its_window_far_above_the_same_window_without_it(services):
    outage = Outage("x", START + HOUR_MS, START + 2 * HOUR_MS, "sudden", 20.0, None, 2 * MINUTE_MS)
    with_outage, without = run(services, [outage]), run(services, [])
    hit = in_window(with_outage, "x", outage.start_ms + 5 * MINUTE_MS, outage.end_ms - HOUR_MS // 4)
    calm = in_window(without, "x", outage.start_ms + 5 * MINUTE_MS, outage.end_ms - HOUR_MS // 4)
    assert len(hit) > 12 * len(calm) > 0
    # Normal traffic is the same stream with or without the outage.
    def untouched(reports):
        return [r for r in reports if r["service"] != "x" or r["ts"] < outage.start_ms]

    assert untouched(with_outage) == untouched(without)
    # People who cannot get in say so.
    problems = Counter(r.get("problem") for r in hit)
    assert problems["server connection"] + problems["login"] > len(hit) / 2


def test_a_gradual_outage_builds_over_its_ramp(services):
    outage = Outage("x", START, START + 2 * HOUR_MS, "gradual", 5.0, None, HOUR_MS)
    reports = run(services, [outage])
    quarters = [len(in_window(reports, "x", START + q * 15 * MINUTE_MS,
                              START + (q + 1) * 15 * MINUTE_MS)) for q in range(4)]
    assert quarters == sorted(quarters)
    assert quarters[3] > 2.5 * quarters[0]


def test_a_regional_outage_adds_reports_only_in_its_region(services):
    service = by_name(services, "x")
    region = service.regions[3][0]
    outage = Outage("x", START + HOUR_MS, START + 2 * HOUR_MS, "regional", 40.0, region, MINUTE_MS)
    with_outage, without = run(services, [outage]), run(services, [])
    regions_with = Counter(r.get("region") for r in in_window(with_outage, "x", outage.start_ms,
                                                              outage.end_ms))
    regions_without = Counter(r.get("region") for r in in_window(without, "x", outage.start_ms,
                                                                 outage.end_ms))
    assert regions_with[region] > 15 * regions_without[region] > 0
    # Every other region sees exactly its normal reports; a few reports name no region.
    for counts in (regions_with, regions_without):
        del counts[region], counts[None]
    assert regions_with == regions_without


def test_a_flood_is_hundreds_of_reports_from_one_reporter(services):
    service = by_name(services, "youtube")
    outage = Outage("youtube", START + HOUR_MS, START + HOUR_MS + 30 * MINUTE_MS, "flood",
                    1 + 15 / service.rate_at(START + HOUR_MS), None, 0)
    assert not outage.is_outage
    with_outage, without = run(services, [outage]), run(services, [])
    extra = Counter(r.get("reporter") for r in in_window(with_outage, "youtube", outage.start_ms,
                                                         outage.end_ms))
    extra.subtract(r.get("reporter") for r in in_window(without, "youtube", outage.start_ms,
                                                        outage.end_ms))
    flooder = [reporter for reporter, n in extra.items() if n > 0]
    assert len(flooder) == 1 and flooder[0] is not None
    assert 300 < extra[flooder[0]] < 600


def test_planned_outages_cover_every_shape_after_the_warm_up_without_overlap():
    services = make_services(30, random.Random(4))
    days = 10
    outages = plan_outages(services, DEFAULT_START_MS, days, random.Random(4), 30)
    assert len(outages) == 30
    assert {o.shape for o in outages} == set(SHAPES)
    assert all(o.start_ms >= DEFAULT_START_MS + WARMUP_MS for o in outages)
    assert all(o.end_ms <= DEFAULT_START_MS + days * DAY_MS for o in outages)
    for name in {o.service for o in outages}:
        mine = sorted((o.start_ms, o.end_ms) for o in outages if o.service == name)
        assert all(end <= next_start for (_, end), (next_start, _) in pairwise(mine))
    assert all(o.is_outage == (o.shape != "flood") for o in outages)
    big = next(o for o in outages if o.shape == "x_outage")
    assert big.service == "x" and weekday(big.start_ms) >= 5


def test_the_x_outage_reaches_tens_of_thousands_per_quarter_hour():
    services = make_services(3, random.Random(6))
    outages = plan_outages(services, DEFAULT_START_MS, 7, random.Random(6), 6)
    big = next(o for o in outages if o.shape == "x_outage")
    x = [by_name(services, "x")]
    reports = run(x, [big], hours=4, start=big.start_ms - HOUR_MS)
    quarters = Counter((r["ts"] - big.start_ms) // (15 * MINUTE_MS) for r in reports)
    assert max(quarters.values()) > 20_000
    assert quarters[-1] < 2_000  # the hour before was ordinary


def test_a_tiny_outage_brings_tens_of_reports_to_a_service_that_gets_a_few_a_day():
    services = make_services(30, random.Random(8))
    outages = plan_outages(services, DEFAULT_START_MS, 5, random.Random(8), 6)
    tiny = next(o for o in outages if o.shape == "tiny")
    service = [by_name(services, tiny.service)]
    assert service[0].peak_rate * 24 * 60 < 100
    reports = run(service, [tiny], hours=2, start=tiny.start_ms - HOUR_MS)
    assert 20 <= len(in_window(reports, tiny.service, tiny.start_ms, tiny.end_ms)) <= 150


def test_default_run_has_every_shape_and_describes_each_on_one_line():
    _, outages, _ = simulate(30, 4, seed=1)
    assert {o.shape for o in outages} == set(SHAPES)
    for o in outages:
        line = o.describe()
        assert "\n" not in line and o.service in line and o.shape in line


def test_labels_file(tmp_path):
    outages = [
        Outage("x", DEFAULT_START_MS, DEFAULT_START_MS + HOUR_MS, "regional", 40.0, "GB", 60_000),
        Outage("shop", DEFAULT_START_MS, DEFAULT_START_MS + 600_000, "flood", 30.0, None, 0),
    ]
    write_labels(outages, tmp_path / "labels.json")
    assert orjson.loads((tmp_path / "labels.json").read_bytes()) == [
        {"service": "x", "region": "GB", "start": "2026-01-05T00:00:00Z",
         "end": "2026-01-05T01:00:00Z", "shape": "regional", "peak_multiplier": 40.0,
         "is_outage": True},
        {"service": "shop", "region": None, "start": "2026-01-05T00:00:00Z",
         "end": "2026-01-05T00:10:00Z", "shape": "flood", "peak_multiplier": 30.0,
         "is_outage": False},
    ]


def test_write_jsonl_round_trips_and_shows_progress(tmp_path):
    _, _, reports = simulate(4, 0.1, seed=9, outages=0)
    reports = list(reports)
    progress = io.StringIO()
    n = write_jsonl(iter(reports), tmp_path / "r.jsonl", progress=progress, every=100)
    lines = (tmp_path / "r.jsonl").read_bytes().splitlines()
    assert n == len(reports) == len(lines)
    assert [orjson.loads(line) for line in lines] == reports
    assert progress.getvalue().count("\r") > 1 and progress.getvalue().endswith("\n")


def test_unwritable_output_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot write the reports file"):
        write_jsonl([], tmp_path / "missing" / "r.jsonl")


@pytest.mark.parametrize("lam", [0.02, 3.0, 12.0, 80.0, 2500.0])
def test_poisson_counts_have_the_right_mean_and_variance(lam):
    rng = random.Random(int(lam * 100))
    draws = [poisson(lam, rng) for _ in range(4000)]
    mean = sum(draws) / len(draws)
    variance = sum((d - mean) ** 2 for d in draws) / (len(draws) - 1)
    assert abs(mean - lam) < 4 * (lam / len(draws)) ** 0.5
    assert 0.85 < variance / lam < 1.15
