"""Faults: oversized messages, a broker refusing writes, a loop that fails, a broker reset.

Each test holds the promise "a crash loses no report and counts none twice;
bad input never stops the consumer" under one fault, on a real broker.
Where the fault needs a broker of its own (refused writes, a restart that
loses everything), the test starts one; the rest share the session's.
"""

from __future__ import annotations

import asyncio
import logging
import random

import orjson
import pytest

from stream_detector.core.incidents import Alert
from stream_detector.embedded import EmbeddedBroker, free_port
from stream_detector.io.publisher import DLQ_MAX_VALUE
from stream_detector.io.service import DetectorService
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    MINUTE,
    T0,
    committed_total,
    create_topic,
    encode,
    offline_alerts,
    produce,
    read_all,
    replay_settings,
    traffic,
)
from tests.integration.kafka_proxy import KafkaProxy

pytestmark = pytest.mark.integration

# How long the broker refuses writes: the fault, not a wait for a condition.
# Longer than the producer's own 30 s retry window (request_timeout_ms), so
# sends fail for good and must be sent again by the Publisher.
REFUSAL_SECONDS = 40


def distinct(messages) -> set[bytes]:
    """Alert messages as sent; a replay after a crash re-sends identical bytes."""
    return {m.value for m in messages}


def as_sent(alerts: list[dict]) -> set[bytes]:
    return {orjson.dumps(a) for a in alerts}


async def at_least(total, n: int) -> bool:
    return await total >= n


def resolved(messages) -> bool:
    return any(orjson.loads(m.value)["status"] == "resolved" for m in messages)


async def run_service(service: DetectorService, condition, timeout: float = 60) -> None:
    """Run `service` until `condition()` holds, then stop it cleanly; it must not fail."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await wait_for(lambda: task.done() or condition(), timeout)
    finally:
        stop.set()
    await asyncio.wait_for(task, 30)  # raises what the service raised


async def test_oversized_messages_go_to_the_dlq_and_what_follows_is_counted(broker, unique):
    settings = replay_settings(broker.bootstrap_servers, unique)
    reports = traffic(random.Random(31), 100, outage=range(60, 72))
    values, keys = encode(reports)
    # A stock producer and a stock Kafka accept both; neither fits in one
    # dead letter of aiokafka's default 1 MiB request once headers are added.
    just_too_large = b"{" + b"x" * (1_048_400 - 1)
    huge = orjson.dumps({"service": "x", "ts": T0, "pad": "y" * 3_000_000})
    third = len(values) // 3
    values[third:third] = [just_too_large]
    keys[third:third] = [b"x"]
    values[2 * third:2 * third] = [huge]
    keys[2 * third:2 * third] = [b"x"]
    await create_topic(broker.bootstrap_servers, settings.reports_topic, 1)
    await produce(broker.bootstrap_servers, settings.reports_topic, values, keys,
                  max_request_size=8 * 1024 * 1024)

    service = DetectorService(settings)
    await run_service(service, lambda: service.state.messages_seen == len(values))

    dead = await read_all(broker.bootstrap_servers, settings.dlq_topic, lambda m: len(m) >= 2)
    assert len(dead) == 2
    for msg, original, offset in zip(dead, (just_too_large, huge), (third, 2 * third),
                                     strict=True):
        headers = dict(msg.headers)
        assert headers["error.reason"] == b"too_large"
        assert headers["original.size"] == str(len(original)).encode()
        assert headers["source.offset"] == str(offset).encode()
        assert msg.value == original[:DLQ_MAX_VALUE]
    # Every report after them was counted: the alerts are those of an
    # offline replay of the valid reports alone.
    alerts = await read_all(broker.bootstrap_servers, settings.alerts_topic, resolved)
    assert distinct(alerts) == as_sent(offline_alerts(reports, settings)) != set()


async def test_writes_refused_for_30s_lose_no_alert_and_count_nothing_twice(unique):
    broker_port = free_port()
    proxy = KafkaProxy(broker_port)
    with EmbeddedBroker(port=broker_port, advertised_port=proxy.port):
        async with proxy:
            bootstrap = f"127.0.0.1:{proxy.port}"
            settings = replay_settings(bootstrap, unique)
            reports = traffic(random.Random(32), 110, outage=range(60, 75))
            await create_topic(bootstrap, settings.reports_topic, 1)
            await produce(bootstrap, settings.reports_topic, *encode(reports))

            proxy.refuse_produce = True
            service = DetectorService(settings)
            stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop))
            try:
                await wait_for(lambda: proxy.refused > 0 or task.done(), 60)
                await asyncio.sleep(REFUSAL_SECONDS)
                assert not task.done(), "the detector stopped while writes were refused"
                proxy.refuse_produce = False
                alerts = await read_all(bootstrap, settings.alerts_topic, resolved, timeout=120)
                await wait_for(lambda: service.state.messages_seen == len(reports), 60)
            finally:
                stop.set()
            await asyncio.wait_for(task, 60)

            assert distinct(alerts) == as_sent(offline_alerts(reports, settings)) != set()
            retried = sum(service.metrics.send_retries.labels(kind)._value.get()
                          for kind in ("alert", "snapshot"))
            assert retried > 0


async def test_a_loop_that_fails_stores_no_snapshot_after_the_failure(broker, unique, tmp_path):
    settings = replay_settings(broker.bootstrap_servers, unique, state_store="local",
                               state_dir=str(tmp_path))
    reports = traffic(random.Random(33), 110, outage=range(60, 75))
    await create_topic(broker.bootstrap_servers, settings.reports_topic, 1)
    await produce(broker.bootstrap_servers, settings.reports_topic, *encode(reports))

    class AlertHookFailed(RuntimeError):
        pass

    def stored() -> list[bytes]:
        return sorted(p.read_bytes() for p in tmp_path.glob("*.snap"))

    at_failure: list[list[bytes]] = []

    async def fail_on_first_alert(alert: Alert) -> None:
        at_failure.append(stored())
        raise AlertHookFailed(alert.alert_id)

    failing = DetectorService(settings, on_alert=fail_on_first_alert)
    with pytest.raises(AlertHookFailed):
        await asyncio.wait_for(failing.run(asyncio.Event()), 60)
    # The loop failed between publishing an alert and its checkpoint: the
    # store holds what it held at the failure, nothing written after it.
    assert stored() == at_failure[0]

    # The restart replays from the last checkpoint: nothing lost, nothing twice.
    second = DetectorService(settings)
    await run_service(second, lambda: second.state.messages_seen > 0 and second.state.positions and
                      next(iter(second.state.positions.values())).offset == len(reports))
    alerts = await read_all(broker.bootstrap_servers, settings.alerts_topic, resolved)
    assert distinct(alerts) == as_sent(offline_alerts(reports, settings)) != set()
    assert stored() != at_failure[0]  # the healthy run did checkpoint


async def test_a_broker_restarted_empty_is_detected_and_every_new_report_counted(
    unique, caplog
):
    port = free_port()
    settings = replay_settings(f"127.0.0.1:{port}", unique)
    old = [orjson.dumps({"service": "x", "ts": T0 + i * 1000}) for i in range(5_000)]
    new = [orjson.dumps({"service": "x", "ts": T0 + 10 * MINUTE * 60 + i * 10})
           for i in range(25_000)]
    keys = [b"x"] * len(new)
    caplog.set_level(logging.INFO, logger="stream_detector")

    first = EmbeddedBroker(port=port).start()
    service = DetectorService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await create_topic(settings.bootstrap_servers, settings.reports_topic, 1)
        await produce(settings.bootstrap_servers, settings.reports_topic, old, keys[:len(old)])
        await wait_for(lambda: service.state.messages_seen == len(old), 60)
        await wait_for(lambda: at_least(committed_total(settings), 1), 30)
        (partition,) = [p for p, d in service.state.detectors.items() if len(d.bank)]
        learned = service.state.detectors[partition]

        # The broker comes back with nothing: no topics, no groups, no offsets.
        first.stop()
        second = EmbeddedBroker(port=port).start()
        try:
            await create_topic(settings.bootstrap_servers, settings.reports_topic, 1)
            await produce(settings.bootstrap_servers, settings.reports_topic, new, keys)
            await wait_for(
                lambda: service.state.messages_seen == len(old) + len(new) or task.done(), 120)
            assert not task.done(), "the detector stopped"
            # Committed in the new cluster: exactly its log, not the old offsets.
            await wait_for(lambda: at_least(committed_total(settings), len(new)), 60)
            assert await committed_total(settings) == len(new)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
            second.stop()
    finally:
        first.stop()

    resets = [r for r in caplog.records if r.levelno == logging.WARNING
              and "restarting from offset 0" in r.getMessage()]
    assert resets, "no WARNING named the reset"
    assert service.metrics.offset_resets.labels(str(partition))._value.get() >= 1
    # offset_reset_state = keep: the baselines learned before the reset go on,
    # through the rebalance the new cluster brought.
    assert service.state.detectors[partition] is learned
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
