"""Prometheus running our config and rules against an exposition with the contract's metrics.

The exposition here is hand-made from the metric contract, not the running
detector: it checks that rules.yml, prometheus.yml, alertmanager.yml and the
dashboard agree with the contract's names and labels, and that every
dashboard query is PromQL that Prometheus accepts and answers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tests.observability.conftest import (
    DETECTOR_JOB,
    RunningProgram,
    free_port,
    start_prometheus,
    wait_until,
)
from tests.observability.dashboard_queries import dashboard_queries

pytestmark = pytest.mark.integration

SERVICE = "live-shop"


def contract_registry() -> CollectorRegistry:
    """One series of each contract metric; `live-shop` has an open critical incident."""
    r = CollectorRegistry()
    reports = Counter("stream_detector_reports", "", ["outcome"], registry=r)
    for outcome, n in (("accepted", 900), ("invalid", 3), ("late", 2), ("duplicate", 1)):
        reports.labels(outcome).inc(n)
    Counter("stream_detector_dlq_messages", "", ["reason"], registry=r).labels("not_json").inc(3)
    Counter("stream_detector_alerts_published", "", ["status", "severity"],
            registry=r).labels("firing", "critical").inc()
    Gauge("stream_detector_incidents_open", "", registry=r).set(1)
    Counter("stream_detector_buckets_closed", "", registry=r).inc(10)
    Gauge("stream_detector_series_active", "", registry=r).set(2)
    per_service = {
        "stream_detector_service_reports": (1280, 12),
        "stream_detector_service_expected_reports": (14.5, 11.0),
        "stream_detector_service_spread_reports": (3.8, 3.3),
        "stream_detector_service_anomaly_score": (0.99999, 0.2),
        "stream_detector_service_incident_firing": (1, 0),
        "stream_detector_service_incident_severity": (2, 0),
    }
    for name, (outaged, calm) in per_service.items():
        gauge = Gauge(name, "", ["service"], registry=r)
        gauge.labels(SERVICE).set(outaged)
        gauge.labels("calm-bank").set(calm)
    regions = Gauge("stream_detector_service_region_reports", "", ["service", "region"],
                    registry=r)
    regions.labels(SERVICE, "US").set(1200)
    regions.labels(SERVICE, "GB").set(80)
    Gauge("stream_detector_service_problem_reports", "", ["service", "problem"],
          registry=r).labels(SERVICE, "login").set(900)
    Gauge("stream_detector_consumer_lag_messages", "", ["topic", "partition"],
          registry=r).labels("reports", "0").set(12)
    Gauge("stream_detector_watermark_timestamp_seconds", "", ["partition"],
          registry=r).labels("0").set_to_current_time()
    scoring = Histogram("stream_detector_bucket_scoring_seconds", "", registry=r)
    latency = Histogram("stream_detector_detection_latency_seconds", "", registry=r)
    for _ in range(5):
        scoring.observe(0.002)
        latency.observe(3.0)
    Gauge("stream_detector_kafka_connected", "", registry=r).set(1)
    Gauge("stream_detector_build_info", "", ["version"], registry=r).labels("0.0.0").set(1)
    return r


@pytest.fixture(scope="module")
def fake_detector() -> Iterator[str]:
    """host:port serving the contract exposition at /metrics."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=contract_registry())
    yield f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, alertmanager, fake_detector) -> Iterator[RunningProgram]:
    """One Prometheus for the module: the tests only read from it."""
    program = start_prometheus(tmp_path_factory.mktemp("prometheus"), [fake_detector],
                               alertmanager=alertmanager.url)

    def scraped() -> bool:
        result = program.get_json("/api/v1/query", query=f'up{{job="{DETECTOR_JOB}"}} == 1')
        return bool(result["data"]["result"])

    try:
        wait_until(scraped, 30, "a successful scrape of the contract exposition")
        yield program
    finally:
        program.stop()


def firing_alerts(prometheus: RunningProgram) -> list[dict]:
    alerts = prometheus.get_json("/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["state"] == "firing"]


def test_detector_gauges_fire_a_critical_incident_through_to_alertmanager(
    prometheus, alertmanager
):
    firing = wait_until(lambda: firing_alerts(prometheus), 30, "a firing alert in Prometheus")
    assert [(a["labels"]["alertname"], a["labels"]["service"], a["labels"]["severity"])
            for a in firing] == [("ServiceIncidentOpen", SERVICE, "critical")]

    def in_alertmanager() -> list:
        return alertmanager.get_json(
            "/api/v2/alerts", filter=['alertname="ServiceIncidentOpen"', f'service="{SERVICE}"'],
        )

    received = wait_until(in_alertmanager, 30, "Prometheus's alert in Alertmanager")
    assert received[0]["labels"]["severity"] == "critical"


def test_recording_rules_produce_series(prometheus):
    groups = prometheus.get_json("/api/v1/rules")["data"]["groups"]
    records = [r["name"] for g in groups for r in g["rules"] if r["type"] == "recording"]
    assert records, "rules.yml has no recording rules"

    def all_recorded() -> list[str] | None:
        missing = [name for name in records
                   if not prometheus.get_json("/api/v1/query", query=name)["data"]["result"]]
        return None if missing else records

    try:
        wait_until(all_recorded, 30, "every recording rule to produce a series")
    except AssertionError:
        missing = [name for name in records
                   if not prometheus.get_json("/api/v1/query", query=name)["data"]["result"]]
        raise AssertionError(f"recording rules with no series: {missing}") from None


def test_every_dashboard_query_is_answered(prometheus):
    queries = dashboard_queries(variables={"service": SERVICE})

    def unanswered() -> list[str]:
        missing = []
        for q in queries:
            result = prometheus.get_json("/api/v1/query", query=q.expr)
            if result["status"] != "success" or not result["data"]["result"]:
                missing.append(f"{q.where}: {q.expr}")
        return missing

    # rate() needs two scrapes inside its window, so give the first few a moment.
    try:
        wait_until(lambda: not unanswered(), 30, "every dashboard query to return data")
    except AssertionError:
        raise AssertionError("dashboard queries with no data:\n" + "\n".join(unanswered())) \
            from None
