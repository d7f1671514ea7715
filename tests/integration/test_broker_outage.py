"""The broker hangs for ~20 s while reports keep coming: health says so, and nothing is lost.

The fault is modelled with SIGSTOP/SIGCONT on a broker of this test's own
(the session broker is shared, so it is left alone). A stopped broker keeps
its TCP connections open and its sockets keep accepting bytes into the
kernel's buffers, but nothing answers: to every client it looks exactly like
a hung broker or a network partition that drops no connection, which is the
nasty case (a refused connection is noticed at once; silence only by
timeouts). Killing and restarting it instead would not do: the embedded
broker keeps its log in memory, so a restart is a new, empty cluster rather
than a broker coming back.

While it is stopped, the test's producer keeps sending into its buffer (its
request timeout outlasts the pause, so nothing is re-sent and nothing
doubled); the detector's health probe must turn 503 (its watcher asks for
metadata every 5 s with a 5 s timeout), return to 200 after SIGCONT, and in
the end every report must be counted exactly once and the outage's alerts
must be the ones an offline replay of the same reports gives.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream_detector.app import serve
from stream_detector.backtest import replay_events
from stream_detector.embedded import EmbeddedBroker
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    MINUTE,
    T0,
    create_topic,
    detector_settings,
    encode,
    http_get,
    read_all,
    scrape,
    traffic,
)

pytestmark = pytest.mark.integration

PAUSE_SECONDS = 20


@pytest.fixture
def own_broker():
    with EmbeddedBroker() as running:
        yield running
        # Never leave it stopped, whatever the test did.
        if running.process is not None and running.process.poll() is None:
            os.kill(running.process.pid, signal.SIGCONT)


async def status(port: int, path: str) -> int:
    return (await asyncio.to_thread(http_get, port, path))[0]


async def test_broker_hang_turns_health_red_then_green_and_loses_nothing(own_broker, unique):
    broker = own_broker
    # Buckets close on event time only, as in the replay.
    settings = detector_settings(broker.bootstrap_servers, unique, model="ewma",
                                 idle_timeout="1h", checkpoint_interval="1s")
    reports = traffic(random.Random(31), 150, outage=range(100, 112))
    values, keys = encode(reports)

    def cut(minute: int) -> int:
        return next(i for i, r in enumerate(reports) if r["ts"] >= T0 + minute * MINUTE)

    before, during = cut(70), cut(120)

    await create_topic(broker.bootstrap_servers, settings.reports_topic, 2)

    stop = asyncio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop, on_listening=listening.set_result))
    # Longer than the pause, so a request stuck in the hung broker is waited
    # for, not re-sent (a re-send would be a second copy once it answers).
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers,
                                enable_idempotence=False, linger_ms=5,
                                request_timeout_ms=(PAUSE_SECONDS + 30) * 1000)
    await producer.start()
    futures: list[asyncio.Future] = []

    async def send(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            futures.append(await producer.send(settings.reports_topic, values[i], key=keys[i]))

    async def accepted() -> float:
        metrics = await scrape(port)
        return metrics.get(("stream_detector_reports_total", (("outcome", "accepted"),)), 0)

    try:
        port = await asyncio.wait_for(listening, 30)
        await wait_for(lambda: _equals(status(port, "/readyz"), 200), 30)
        assert await status(port, "/healthz") == 200
        await send(0, before)
        await wait_for(lambda: _equals(accepted(), before), 30, every=0.2)

        os.kill(broker.process.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            # Reports keep coming while the broker hangs; they wait in the buffer.
            sending = asyncio.create_task(send(before, during))
            await wait_for(lambda: _equals(status(port, "/healthz"), 503), PAUSE_SECONDS - 2,
                           every=0.5)
            metrics = await scrape(port)
            assert metrics[("stream_detector_kafka_connected", ())] == 0
            assert futures[before:] and not any(f.done() for f in futures[before:])
            # Hold the fault for its full length: the point is a long outage.
            await asyncio.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - paused_at)))
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)

        await asyncio.wait_for(sending, 60)
        await send(during, len(reports))
        await asyncio.wait_for(asyncio.gather(*futures), 60)  # every one acknowledged
        await wait_for(lambda: _equals(status(port, "/healthz"), 200), 20, every=0.5)
        await wait_for(lambda: _equals(accepted(), len(reports)), 60, every=0.5)

        def resolved(messages) -> bool:
            return any(orjson.loads(m.value)["status"] == "resolved" for m in messages)

        messages = await read_all(broker.bootstrap_servers, settings.alerts_topic, resolved)
        metrics = await scrape(port)
        assert not task.done()
    finally:
        await producer.stop()
        stop.set()
        await asyncio.wait_for(task, 30)

    # Counted once each: not fewer (lost) and not more (re-sent or replayed twice).
    outcomes = {dict(labels)["outcome"]: v for (name, labels), v in metrics.items()
                if name == "stream_detector_reports_total"}
    assert outcomes.get("accepted") == len(reports)
    assert outcomes.get("duplicate", 0) == outcomes.get("late", 0) == 0
    assert metrics[("stream_detector_kafka_connected", ())] == 1

    online = [orjson.loads(m.value) for m in messages]
    offline = [orjson.loads(a.to_json())
               for b in replay_events(iter(values), settings.detector_config()) for a in b.alerts]
    resolved_online = {(a["alert_id"], a["started_at"], a["ended_at"])
                       for a in online if a["status"] == "resolved"}
    resolved_offline = {(a["alert_id"], a["started_at"], a["ended_at"])
                        for a in offline if a["status"] == "resolved"}
    assert resolved_online == resolved_offline != set()
    assert {a["alert_id"] for a in online} == {"x/*/2026-01-05T01:40:00Z"}
    firing_offline = {orjson.dumps(a) for a in offline
                      if a["alert_id"] in {x[0] for x in resolved_online}}
    assert {orjson.dumps(a) for a in online} == firing_offline


async def _equals(value, expected) -> bool:
    return (await value) == expected
