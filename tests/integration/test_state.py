"""Durable state: restarts continue, crashes lose and double nothing, bad state is refused."""

from __future__ import annotations

import asyncio
import random
import signal

import orjson
import pytest

from stream_detector.io.service import DetectorService, StateUnusable
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    MINUTE,
    T0,
    committed_total,
    encode,
    offline_alerts,
    produce,
    read_all,
    replay_settings,
    start_detector,
    traffic,
)

pytestmark = pytest.mark.integration


def settings_for(broker, unique: str, **overrides):
    return replay_settings(broker.bootstrap_servers, unique, **overrides)


async def run_until(settings, condition) -> DetectorService:
    """Run a detector in this process until `condition(service)` holds, then stop it cleanly."""
    service = DetectorService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await wait_for(lambda: condition(service))
    stop.set()
    await task
    return service


def models_of(service: DetectorService, key: tuple) -> list:
    """The (per-series EWMA) model of series `key` in each partition that holds it."""
    detectors = service.state.detectors.values()
    return [d.bank.models[d.row_of(key)] for d in detectors if d.row_of(key) is not None]


async def test_restart_continues_from_learned_state(broker, unique):
    settings = settings_for(broker, unique)
    reports = traffic(random.Random(21), 120, outage=range(0))
    await produce(broker.bootstrap_servers, settings.reports_topic, *encode(reports))

    first = await run_until(settings, lambda s: s.state.messages_seen == len(reports))
    t = (T0 + 119 * MINUTE) / 1000
    (before,) = models_of(first, ("x", None))
    expected_before = before.score_one(t, 0).expected
    assert before.seen > 100  # well past warm-up

    second = await run_until(settings, lambda s: s.ready())
    restored = models_of(second, ("x", None))
    assert len(restored) == 1
    assert restored[0].score_one(t, 0).expected == expected_before
    assert restored[0].seen == before.seen  # no second warm-up
    assert second.state.messages_seen == 0  # nothing re-read: it resumed at the committed offset


async def test_incompatible_state_is_refused_with_the_setting_named(broker, unique):
    settings = settings_for(broker, unique)
    reports = traffic(random.Random(4), 10, outage=range(0))
    await produce(broker.bootstrap_servers, settings.reports_topic, *encode(reports))
    await run_until(settings, lambda s: s.state.messages_seen == len(reports))

    wider = settings_for(broker, unique, bucket="120s")
    with pytest.raises(StateUnusable, match="state_topic.*120s"):
        await asyncio.wait_for(DetectorService(wider).run(asyncio.Event()), 60)


async def test_sigkill_mid_run_loses_nothing_and_doubles_nothing(broker, unique, tmp_path):
    settings = settings_for(broker, unique)
    reports = traffic(random.Random(9), 160, outage=range(100, 115))
    cut = next(i for i, r in enumerate(reports) if r["ts"] >= T0 + 107 * MINUTE)
    await produce(broker.bootstrap_servers, settings.reports_topic, *encode(reports[:cut]))

    log = (tmp_path / "detector.log").open("ab")
    proc = start_detector(settings, log)
    try:
        # Kill it once it is inside the outage and has checkpointed some of it.
        await read_all(broker.bootstrap_servers, settings.alerts_topic, lambda m: len(m) >= 3)
        await wait_for(lambda: committed_total(settings), timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await produce(broker.bootstrap_servers, settings.reports_topic, *encode(reports[cut:]))
        proc = start_detector(settings, log)

        def resolved(messages):
            return any(orjson.loads(m.value)["status"] == "resolved" for m in messages)

        messages = await read_all(broker.bootstrap_servers, settings.alerts_topic, resolved)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)

    online = [orjson.loads(m.value) for m in messages]
    offline = offline_alerts(reports, settings)
    # Re-sent alerts after the crash are byte-for-byte duplicates of ones already sent.
    assert {orjson.dumps(a) for a in online} == {orjson.dumps(a) for a in offline}

    def incidents(alerts):
        return {(a["alert_id"], a["started_at"], a["ended_at"])
                for a in alerts if a["status"] == "resolved"}

    assert incidents(online) == incidents(offline) != set()
    # Per-bucket counts are exact: every firing update carries its bucket's count.
    counts_online = {(a["alert_id"], a["bucket_start"]): a["reports"] for a in online}
    counts_offline = {(a["alert_id"], a["bucket_start"]): a["reports"] for a in offline}
    assert counts_online == counts_offline
