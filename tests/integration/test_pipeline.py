"""The whole path on the embedded broker: reports in, alerts, dead letters and metrics out."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from stream_detector.backtest import replay_events
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    MINUTE,
    T0,
    detector_settings,
    http_get,
    produce,
    read_all,
    running_detector,
    scrape,
    traffic,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def detector(broker, unique):
    """A detector in this process with its own topics and group; yields (settings, port)."""
    settings = detector_settings(broker.bootstrap_servers, unique, model="ewma",
                                 idle_timeout="2s", checkpoint_interval="1s")
    async with running_detector(settings) as port:
        yield settings, port


async def test_outage_fires_then_resolves_with_breakdowns(broker, detector):
    settings, port = detector
    rng = random.Random(5)
    reports = traffic(rng, minutes=150, outage=range(100, 115))
    await produce(broker.bootstrap_servers, settings.reports_topic,
                  [orjson.dumps(r) for r in reports], [r["service"].encode() for r in reports])

    def resolved(messages):
        return any(orjson.loads(m.value)["status"] == "resolved" for m in messages)

    messages = await read_all(broker.bootstrap_servers, settings.alerts_topic, resolved)
    alerts = [orjson.loads(m.value) for m in messages]
    assert {a["service"] for a in alerts} == {"x"}
    assert {m.key for m in messages} == {b"x"}
    (alert_id,) = {a["alert_id"] for a in alerts}
    assert alert_id == "x/*/2026-01-05T01:40:00Z"
    first, last = alerts[0], alerts[-1]
    assert first["status"] == "firing" and first["ended_at"] is None
    assert last["status"] == "resolved" and last["ended_at"] == "2026-01-05T01:55:00Z"
    assert [a["status"] for a in alerts].count("resolved") == 1
    assert last["problems"][0][0] == "login"
    assert [r for r, _ in last["regions"]][:1] == ["US"]
    assert set(first) >= {"alert_id", "status", "service", "severity", "started_at", "ended_at",
                          "bucket_start", "bucket_seconds", "reports", "expected", "score",
                          "regions", "problems"}
    assert first["bucket_seconds"] == 60 and 0 <= first["score"] <= 1

    metrics = await scrape(port)
    accepted = metrics[("stream_detector_reports_total", (("outcome", "accepted"),))]
    assert accepted == len(reports)
    assert metrics[("stream_detector_alerts_published_total",
                    (("severity", last["severity"]), ("status", "resolved")))] == 1
    assert metrics[("stream_detector_service_incident_firing", (("service", "x"),))] == 0
    assert ("stream_detector_service_expected_reports", (("service", "y"),)) in metrics
    assert metrics[("stream_detector_bucket_scoring_seconds_count", ())] > 0

    async def caught_up():
        lags = [v for (name, _), v in (await scrape(port)).items()
                if name == "stream_detector_consumer_lag_messages"]
        return lags and not any(lags)

    await wait_for(caught_up)

    # Offline equals online: backtest over the same reports publishes the same alerts.
    offline = replay_events((orjson.dumps(r) for r in reports), settings.detector_config())
    assert [a.to_json() for bucket in offline for a in bucket.alerts] == [
        m.value for m in messages]


async def test_bad_late_and_duplicate_reports(broker, detector):
    settings, port = detector
    good = [{"service": "z", "ts": T0 + i * 1000, "reporter": f"r{i}"} for i in range(100)]
    values = [orjson.dumps(r) for r in good]
    bad = [b"not json", b'{"service": "z"}', b'{"service": 5, "ts": 1}',
           b'{"service": "z", "ts": "yesterday"}', b"[]"]
    values[10:10] = bad
    values.append(orjson.dumps({"service": "z", "ts": T0 + 95_000, "reporter": "r95"}))  # dup
    values.append(orjson.dumps({"service": "z", "ts": T0 + 10 * MINUTE}))
    values.append(orjson.dumps({"service": "z", "ts": T0 + 1_000}))  # late by 10 minutes
    await produce(broker.bootstrap_servers, settings.reports_topic, values, [b"z"] * len(values))

    dlq = await read_all(broker.bootstrap_servers, settings.dlq_topic,
                         lambda m: len(m) >= len(bad))
    assert sorted(m.value for m in dlq) == sorted(bad)
    reasons = {m.value: dict(m.headers)["error.reason"].decode() for m in dlq}
    assert reasons[b"not json"] == "not_json"
    assert reasons[b'{"service": "z"}'] == "missing_field"
    assert reasons[b"[]"] == "not_object"
    assert all(dict(m.headers)["source.topic"] == settings.reports_topic.encode() for m in dlq)

    def outcome(metrics, name):
        return metrics.get(("stream_detector_reports_total", (("outcome", name),)), 0)

    async def late_counted():
        return outcome(await scrape(port), "late") == 1

    await wait_for(late_counted)
    metrics = await scrape(port)
    assert outcome(metrics, "accepted") == 101
    assert outcome(metrics, "duplicate") == 1
    assert outcome(metrics, "invalid") == len(bad)
    assert metrics[("stream_detector_dlq_messages_total", (("reason", "not_json"),))] == 1


async def test_health_endpoints(detector):
    _, port = detector

    async def ready():
        status, _ = await asyncio.to_thread(http_get, port, "/readyz")
        return status == 200

    await wait_for(ready)
    assert (await asyncio.to_thread(http_get, port, "/healthz"))[0] == 200
    assert (await asyncio.to_thread(http_get, port, "/nothing"))[0] == 404
