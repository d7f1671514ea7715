"""Per-service metrics: which services get series, read back from the exposition."""

from __future__ import annotations

import orjson
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.incidents import IncidentPolicy
from stream_detector.io.metrics import DetectorMetrics

T0 = 1_767_571_200_000  # Monday 2026-01-05 00:00 UTC
MINUTE = 60_000


def feed(d: PartitionDetector, metrics: DetectorMetrics, minutes: range, rates,
         partition: int = 0) -> None:
    """Send `rates(minute)` = {service: reports} for each minute, closing buckets as they pass."""
    for minute in minutes:
        for service, n in rates(minute).items():
            for i in range(n):
                ts = T0 + minute * MINUTE + i * MINUTE // n
                d.add(orjson.dumps({"service": service, "ts": ts, "region": "US",
                                    "problem": "login"}))
        metrics.observe_buckets(d.advance(), partition)


def scrape(metrics: DetectorMetrics) -> dict[str, dict[tuple[str, ...], float]]:
    """Each family's samples by label values: the service, then its region or problem."""
    text = metrics.exposition().decode()
    return {f.name: {_values(s.labels): s.value for s in f.samples}
            for f in text_string_to_metric_families(text)}


def _values(labels: dict[str, str]) -> tuple[str, ...]:
    # The exposition sorts label names; "service" comes first in the metrics' own order.
    return tuple(v for _, v in sorted(labels.items(), key=lambda item: item[0] != "service"))


def services(samples: dict[str, dict[tuple[str, ...], float]]) -> set[str]:
    return {service for service, in samples["stream_detector_service_reports"]}


def test_top_services_and_the_firing_one_get_series_until_it_resolves():
    d = PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000,
                                         policy=IncidentPolicy(calm_buckets=3)))
    metrics = DetectorMetrics(max_services=2)
    steady = {"a": 100, "b": 80, "c": 60, "x": 2}
    feed(d, metrics, range(100), lambda m: steady)
    assert services(scrape(metrics)) == {"a", "b"}

    # A small service's outage: it fires, and gets its series while it does.
    feed(d, metrics, range(100, 104), lambda m: {**steady, "x": 60})
    samples = scrape(metrics)
    assert services(samples) == {"a", "b", "x"}
    assert samples["stream_detector_incidents_open"][()] == 1
    assert samples["stream_detector_service_incident_firing"][("x",)] == 1
    assert samples["stream_detector_service_incident_severity"][("x",)] == 2
    assert samples["stream_detector_service_reports"][("x",)] == 60
    assert samples["stream_detector_service_region_reports"][("x", "US")] == 60
    assert samples["stream_detector_service_problem_reports"][("x", "login")] == 60
    assert {s for s, _ in samples["stream_detector_service_region_reports"]} == {"a", "b", "x"}

    # Resolved, it is no longer counted, nor exported: it is not in the top two.
    feed(d, metrics, range(104, 130), lambda m: steady)
    samples = scrape(metrics)
    assert samples["stream_detector_incidents_open"][()] == 0
    assert services(samples) == {"a", "b"}
    assert {s for s, _ in samples["stream_detector_service_problem_reports"]} == {"a", "b"}


def test_quiet_services_drop_out_and_are_forgotten():
    d = PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000))
    metrics = DetectorMetrics(max_services=2)
    feed(d, metrics, range(60), lambda m: {"a": 100, "b": 80, "c": 60})
    assert services(scrape(metrics)) == {"a", "b"}

    # "a" goes quiet: "c" takes its place as soon as it is busier...
    feed(d, metrics, range(60, 70), lambda m: {"b": 80, "c": 60})
    assert services(scrape(metrics)) == {"b", "c"}
    assert "a" in metrics.services.known
    # ...and "a" is forgotten once its volume has decayed away.
    feed(d, metrics, range(70, 200), lambda m: {"b": 80, "c": 60})
    assert services(scrape(metrics)) == {"b", "c"}
    assert set(metrics.services.known) == {"b", "c"}


def test_memory_stays_bounded_without_scrapes():
    d = PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000))
    metrics = DetectorMetrics(max_services=10)
    # 20 new services a minute, each reporting once: about 45 minutes' worth
    # (900) are above the quiet threshold at any time.
    feed(d, metrics, range(300), lambda m: {f"s{m}-{i}": 1 for i in range(20)})
    assert len(metrics.services.known) <= 2 * 900 + 10
    assert len(services(scrape(metrics))) == 10
    assert len(metrics.services.known) <= 900


def test_a_revoked_partition_takes_its_services_out_of_the_scrape():
    metrics = DetectorMetrics(max_services=10)
    detectors = [PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000))
                 for _ in range(2)]
    for minute in range(5):
        for partition, service in enumerate(("a", "b")):
            d = detectors[partition]
            d.add(orjson.dumps({"service": service, "ts": T0 + minute * MINUTE}))
            metrics.observe_buckets(d.advance(T0 + minute * MINUTE + MINUTE // 2), partition)
    assert services(scrape(metrics)) == {"a", "b"}
    metrics.services.forget(1)
    assert services(scrape(metrics)) == {"a"}


def test_a_service_in_two_partitions_is_one_series_with_its_newest_values():
    """Reports keyed by something else than the service, or a topic that gained
    partitions, put one service in several partitions: still one series each."""
    metrics = DetectorMetrics(max_services=10)
    detectors = [PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000))
                 for _ in range(2)]
    # Partition 1 has 7 reports a minute, but only in the first two minutes.
    for minute in range(5):
        for partition, n in ((0, 3), (1, 7 if minute < 2 else 0)):
            d = detectors[partition]
            for _ in range(n):
                d.add(orjson.dumps({"service": "shared", "ts": T0 + minute * MINUTE,
                                    "region": "US"}))
            metrics.observe_buckets(d.advance(T0 + minute * MINUTE + MINUTE // 2), partition)
    text = metrics.exposition().decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["stream_detector_service_reports"]] == [3]
    assert [s.value for s in families["stream_detector_service_region_reports"]] == [3]
    assert metrics.services.known == ["shared"]


def test_a_service_firing_in_one_of_its_partitions_is_firing_once():
    """The other partition closes the same minutes without an incident: that must not hide it."""
    metrics = DetectorMetrics(max_services=5)
    calm, outage = (PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000))
                    for _ in range(2))
    for minute in range(104):
        feed(calm, metrics, range(minute, minute + 1), lambda m: {"x": 2}, partition=0)
        feed(outage, metrics, range(minute, minute + 1),
             lambda m: {"x": 60 if m >= 100 else 2}, partition=1)
    samples = scrape(metrics)
    assert samples["stream_detector_incidents_open"][()] == 1
    assert samples["stream_detector_service_incident_firing"] == {("x",): 1}
    assert samples["stream_detector_service_incident_severity"] == {("x",): 2}


def test_a_restored_partition_starts_its_services_afresh():
    metrics = DetectorMetrics(max_services=5)
    before = PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000))
    feed(before, metrics, range(3), lambda m: {"a": 5})
    # The partition's detector is replaced, as by a restore: its ids mean other services.
    after = PartitionDetector(DetectorConfig(model="ewma", lateness_ms=5_000))
    feed(after, metrics, range(3, 6), lambda m: {"b": 5})
    assert services(scrape(metrics)) == {"b"}
