"""The correlate stage on the embedded broker: detectors' alerts in, outage events out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_detector.app import serve_correlate
from stream_detector.outage_backtest import correlate_alerts
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    create_topic,
    detector_settings,
    encode,
    offline_alerts,
    produce,
    read_all,
    running_detector,
    scrape,
    traffic,
)

pytestmark = pytest.mark.integration

# A provider and three services on it go down in the same minutes; "calm" does not.
SERVICES = {"cloudhost": 20, "shop": 12, "mail": 12, "video": 12, "calm": 8}
DOWN = ("cloudhost", "shop", "mail", "video")


def correlate_settings(bootstrap: str, unique: str, **overrides):
    """This test's own topics, groups and outages topic."""
    return detector_settings(bootstrap, unique, outages_topic=f"{unique}-outages",
                             correlate_group_id=f"{unique}-correlate", **overrides)


def provider_traffic(seed: int = 7) -> list[dict]:
    return traffic(random.Random(seed), minutes=150, outage=range(100, 115),
                   services=SERVICES, outaged=DOWN)


def has_resolved(messages) -> bool:
    return any(orjson.loads(m.value)["status"] == "resolved" for m in messages)


@contextlib.asynccontextmanager
async def running_correlate(settings):
    stop = asyncio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_correlate(settings, stop,
                                               on_listening=listening.set_result))
    try:
        yield await asyncio.wait_for(listening, 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_two_detectors_and_correlate_make_one_event_naming_the_provider(broker, unique):
    settings = correlate_settings(broker.bootstrap_servers, unique, model="ewma",
                                 idle_timeout="2s", checkpoint_interval="1s",
                                 providers="cloudhost")
    await create_topic(broker.bootstrap_servers, settings.reports_topic, 2)
    await create_topic(broker.bootstrap_servers, settings.alerts_topic, 2)
    reports = provider_traffic()
    async with running_detector(settings), running_detector(settings), \
            running_correlate(settings):
        await produce(broker.bootstrap_servers, settings.reports_topic, *encode(reports))
        messages = await read_all(broker.bootstrap_servers, settings.outages_topic,
                                  has_resolved, timeout=120)
    events = [orjson.loads(m.value) for m in messages]
    assert {e["event_id"] for e in events} == {events[0]["event_id"]}
    assert {m.key for m in messages} == {events[0]["event_id"].encode()}
    statuses = [e["status"] for e in events]
    assert statuses[0] == "firing" and statuses.count("resolved") == 1
    assert statuses[-1] == "resolved"
    last = events[-1]
    assert last["suspected_cause"] == "cloudhost"
    assert {s for s, _, _ in last["services"]} == set(DOWN)
    assert last["started_at"].endswith("Z") and last["ended_at"].endswith("Z")
    assert last["problems"][0][0] == "login"
    assert set(last) == {"event_id", "status", "started_at", "ended_at", "services",
                         "suspected_cause", "regions", "problems", "reports"}


async def replay_offsets_committed(settings) -> bool:
    """Whether the correlate group has committed a replay offset on every alerts partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                group_id=settings.correlate_group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.alerts_topic) or set()
        offsets = [await consumer.committed(TopicPartition(settings.alerts_topic, p))
                   for p in partitions]
        return bool(offsets) and None not in offsets
    finally:
        await consumer.stop()


async def test_run_with_correlate_true_publishes_the_event_and_its_metrics(broker, unique):
    settings = correlate_settings(broker.bootstrap_servers, unique, model="ewma",
                                 idle_timeout="2s", checkpoint_interval="1s",
                                 correlate="true", providers="cloudhost")
    async with running_detector(settings) as port:
        await produce(broker.bootstrap_servers, settings.reports_topic,
                      *encode(provider_traffic(seed=11)))
        messages = await read_all(broker.bootstrap_servers, settings.outages_topic,
                                  has_resolved, timeout=120)
        last = orjson.loads(messages[-1].value)
        assert last["status"] == "resolved" and last["suspected_cause"] == "cloudhost"

        async def counted() -> bool:
            metrics = await scrape(port)
            return metrics.get(("stream_detector_outage_events_total",
                                (("status", "resolved"),))) == 1
        await wait_for(counted)
        metrics = await scrape(port)
        assert metrics[("stream_detector_outage_events_open", ())] == 0
        assert metrics[("stream_detector_outage_events_total", (("status", "firing"),))] == 1
        assert ("stream_detector_reports_total", (("outcome", "accepted"),)) in metrics


def start_correlate(settings, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_DETECTOR_")}
    env.update({
        "STREAM_DETECTOR_ALERTS_TOPIC": settings.alerts_topic,
        "STREAM_DETECTOR_OUTAGES_TOPIC": settings.outages_topic,
        "STREAM_DETECTOR_CORRELATE_GROUP_ID": settings.correlate_group_id,
        "STREAM_DETECTOR_PROVIDERS": "cloudhost",
        "STREAM_DETECTOR_IDLE_TIMEOUT": "1s",
        "STREAM_DETECTOR_CHECKPOINT_INTERVAL": "200ms",
        "STREAM_DETECTOR_LOG_FORMAT": "json",
    })
    return subprocess.Popen(
        [sys.executable, "-m", "stream_detector", "correlate", "--bootstrap-servers",
         settings.bootstrap_servers, "--metrics-port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=log)


async def test_sigkill_resends_the_same_events_and_loses_none(broker, unique, tmp_path):
    settings = correlate_settings(broker.bootstrap_servers, unique, model="ewma",
                                 providers="cloudhost")
    alerts = offline_alerts(provider_traffic(), settings)
    expected = correlate_alerts(alerts, settings.correlation_policy())
    assert [e["status"] for e in expected].count("resolved") == 1
    # Kill while the event is open: after its firing messages, before it resolves.
    # Split between two buckets, as a killed stage would see a detector's stream.
    resolved = next(a for a in alerts if a["status"] == "resolved")
    cut = next(i for i, a in enumerate(alerts) if a["bucket_start"] == resolved["bucket_start"])
    first, rest = alerts[:cut], alerts[cut:]
    await create_topic(broker.bootstrap_servers, settings.alerts_topic, 3)
    values = [orjson.dumps(a) for a in alerts]
    keys = [a["service"].encode() for a in alerts]
    # A message that is not an alert, amid them: skipped, and said so.
    await produce(broker.bootstrap_servers, settings.alerts_topic,
                  values[:len(first) // 2] + [b"not an alert", b'{"alert_id": 5}']
                  + values[len(first) // 2:len(first)],
                  keys[:len(first) // 2] + [b"x", b"x"] + keys[len(first) // 2:len(first)])

    log = (tmp_path / "correlate.log").open("wb")
    proc = start_correlate(settings, log)
    try:
        await read_all(broker.bootstrap_servers, settings.outages_topic, bool, timeout=60)
        await wait_for(lambda: replay_offsets_committed(settings), 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        before = len(await read_all(broker.bootstrap_servers, settings.outages_topic, bool))
        await produce(broker.bootstrap_servers, settings.alerts_topic, values[len(first):],
                      keys[len(first):])
        proc = start_correlate(settings, log)
        messages = await read_all(broker.bootstrap_servers, settings.outages_topic,
                                  has_resolved, timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()
    assert (tmp_path / "correlate.log").read_text().count("is not an alert; skipped") >= 2
    online = [orjson.loads(m.value) for m in messages]
    distinct = {orjson.dumps(e) for e in online}
    # Nothing lost, nothing made up: the messages are exactly those of the offline run...
    assert distinct == {orjson.dumps(e) for e in expected}
    # ... with the open event's messages sent again after the restart, under the same id.
    after = online[before:]
    assert {e["event_id"] for e in after} == {expected[0]["event_id"]}
    resent = {orjson.dumps(e) for e in online[:before]} & {orjson.dumps(e) for e in after}
    assert resent, "the restart replayed nothing"
    assert len(rest) > 0


def test_unreachable_broker_is_one_sentence_naming_the_setting():
    result = subprocess.run(
        [sys.executable, "-m", "stream_detector", "correlate", "--bootstrap-servers",
         "127.0.0.1:1", "--startup-timeout", "0", "--metrics-port", "0", "--log-format", "text"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("STREAM_DETECTOR_")})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "bootstrap_servers=127.0.0.1:1" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr
