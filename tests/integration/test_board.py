"""The status board on the embedded broker: a real detector's alerts and an outage
event on the topics, the JSON API answering them, the same after a restart."""

from __future__ import annotations

import asyncio
import random
from urllib.parse import quote

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    board_settings,
    create_topic,
    detector_settings,
    encode,
    http_get,
    produce,
    read_all,
    running_board,
    running_detector,
    traffic,
)

pytestmark = pytest.mark.integration


async def get(port: int, path: str) -> tuple[int, dict]:
    status, body = await asyncio.to_thread(http_get, port, path)
    return status, orjson.loads(body)


def outage_event(members: list[dict], status: str = "firing") -> dict:
    """An event in issue 17's format over the given incidents' first messages."""
    first = min(members, key=lambda a: (a["started_at"], a["service"]))
    return {
        "event_id": f"{first['started_at']}/{first['service']}", "status": status,
        "started_at": first["started_at"],
        "ended_at": "2026-01-05T02:10:00Z" if status == "resolved" else None,
        "services": [[a["service"], a["region"], a["alert_id"]] for a in members],
        "suspected_cause": "x", "regions": [["US", 1200]], "problems": [["login", 900]],
        "reports": sum(a["reports"] for a in members),
    }


async def read_to_end(bootstrap: str, topic: str) -> list:
    """Every message on `topic`, up to the end offsets it has now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        total = sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()
    return await read_all(bootstrap, topic, lambda messages: len(messages) >= total)


API = ("/api/v1/incidents", "/api/v1/incidents?status=open", "/api/v1/incidents?status=resolved",
       "/api/v1/incidents?status=resolved&service=x", "/api/v1/outages", "/api/v1/services/x",
       "/api/v1/board")


async def test_the_api_returns_a_detectors_alerts_and_an_outage_event_and_a_restart_the_same(
    broker, unique
):
    settings = detector_settings(broker.bootstrap_servers, unique, model="ewma",
                                 idle_timeout="2s", checkpoint_interval="1s",
                                 outages_topic=f"{unique}-outages")
    assert settings.alerts_topic == f"{unique}-alerts"
    await create_topic(broker.bootstrap_servers, settings.alerts_topic, 3)
    await create_topic(broker.bootstrap_servers, settings.outages_topic, 1)
    rng = random.Random(18)
    # x is down from minute 100 to 115 and resolves; y goes down at minute 140 and is
    # still firing when the traffic ends.
    reports = sorted(traffic(rng, 150, range(100, 115), {"x": 20}, outaged=("x",))
                     + traffic(rng, 150, range(140, 150), {"y": 20}, outaged=("y",)),
                     key=lambda r: r["ts"])
    values, keys = encode(reports)

    async with running_detector(settings):
        await produce(broker.bootstrap_servers, settings.reports_topic, values, keys)

        def both_seen(messages) -> bool:
            alerts = [orjson.loads(m.value) for m in messages]
            return (any(a["service"] == "x" and a["status"] == "resolved" for a in alerts)
                    and any(a["service"] == "y" for a in alerts))

        await read_all(broker.bootstrap_servers, settings.alerts_topic, both_seen)
    # Stopped: now nothing more arrives, and the whole topic is what the board will read.
    alerts = [orjson.loads(m.value) for m in await read_to_end(broker.bootstrap_servers,
                                                               settings.alerts_topic)]
    latest: dict[str, dict] = {}
    for a in alerts:  # one partition per service, so topic order is the detector's order
        latest[a["alert_id"]] = a
    x_resolved = [a for a in latest.values() if a["service"] == "x"]
    y_open = [a for a in latest.values() if a["service"] == "y"]
    assert [a["status"] for a in x_resolved] == ["resolved"]
    assert [a["status"] for a in y_open] == ["firing"]

    first_of = {a["alert_id"]: a for a in reversed(alerts)}
    event = outage_event([first_of[a["alert_id"]] for a in x_resolved + y_open])
    await produce(broker.bootstrap_servers, settings.outages_topic, [orjson.dumps(event)],
                  [event["event_id"].encode()])

    board = board_settings(broker.bootstrap_servers, unique)  # the detector's topics
    async with running_board(board) as port:
        status, body = await get(port, "/api/v1/incidents?status=open")
        assert status == 200 and body == {"incidents": y_open}
        _, body = await get(port, "/api/v1/incidents?status=resolved")
        assert body == {"incidents": x_resolved}
        _, body = await get(port, "/api/v1/incidents?status=open&service=x")
        assert body == {"incidents": []}
        _, body = await get(port, "/api/v1/outages")
        assert body == {"outages": [event]}
        status, body = await get(port, "/api/v1/services/x")
        assert status == 200 and [i["alert"] for i in body["incidents"]] == x_resolved
        assert body["outages"] == [event] and body["grafana"] is None
        # Each firing and resolved message carries the bucket's reports and expected.
        buckets = sorted({(a["bucket_start"], a["reports"], a["expected"]) for a in alerts
                          if a["service"] == "x"})
        points = body["incidents"][0]["points"]
        assert list(zip(points["reports"], points["expected"], strict=True)) == [
            (r, e) for _, r, e in buckets]
        _, feed = await get(port, "/api/v1/board")
        assert feed["open"][0]["event_id"] == event["event_id"] and feed["caught_up"]
        before = {path: await asyncio.to_thread(http_get, port, path) for path in API}
        assert (await get(port, "/api/v1/incidents?status=later"))[0] == 400
        assert (await get(port, "/api/v1/services/nobody"))[0] == 404
        assert (await asyncio.to_thread(http_get, port, "/healthz"))[0] == 200

    # A restart reads the topics again from their beginning: the same view.
    async with running_board(board) as port:
        after = {path: await asyncio.to_thread(http_get, port, path) for path in API}
    assert after == before


async def test_the_board_follows_new_messages_and_skips_what_it_cannot_read(broker, unique):
    settings = board_settings(broker.bootstrap_servers, unique,
                              grafana_url="http://grafana.example:3000/")
    await create_topic(broker.bootstrap_servers, settings.alerts_topic, 1)
    hostile = "<img src=x onerror=alert(1)>/a b"
    firing = {
        "alert_id": f"{hostile}/*/2026-01-05T01:40:00Z", "status": "firing",
        "service": hostile, "region": None, "severity": "warning",
        "started_at": "2026-01-05T01:40:00Z", "ended_at": None,
        "bucket_start": "2026-01-05T01:40:00Z", "bucket_seconds": 60, "reports": 40,
        "expected": 3.5, "score": 1.0, "regions": [["US", 40]], "problems": [["app", 40]],
    }
    await produce(broker.bootstrap_servers, settings.alerts_topic,
                  [b"not json", b'{"alert_id": 1}', orjson.dumps(firing)], [b"a", b"a", b"a"])
    async with running_board(settings) as port:
        path = f"/api/v1/incidents?service={quote(hostile, safe='')}"
        assert (await get(port, path))[1] == {"incidents": [firing]}
        _, detail = await get(port, f"/api/v1/services/{quote(hostile, safe='')}")
        assert detail["grafana"] == ("http://grafana.example:3000/d/stream-detector?var-service="
                                     + quote(hostile, safe=""))
        _, feed = await get(port, "/api/v1/board")
        assert feed["skipped"] == 2
        # Asked before the change, so the answer is cached; the change must replace it.
        assert (await get(port, "/api/v1/incidents?status=open"))[1] == {"incidents": [firing]}

        resolved = {**firing, "status": "resolved", "ended_at": "2026-01-05T01:47:00Z",
                    "bucket_start": "2026-01-05T01:46:00Z", "reports": 3}
        await produce(broker.bootstrap_servers, settings.alerts_topic,
                      [orjson.dumps(resolved)], [b"a"])

        async def shows_resolved() -> bool:
            return (await get(port, "/api/v1/incidents?status=resolved"))[1] == {
                "incidents": [resolved]}

        await wait_for(shows_resolved, timeout=10)
        assert (await get(port, "/api/v1/incidents?status=open"))[1] == {"incidents": []}


async def test_a_broker_back_with_new_logs_is_read_again_from_their_beginning(unique):
    """The embedded broker keeps its logs in memory, so one restarted comes back
    empty; the topics are made again and offsets start at 0. The board must show
    what the new logs hold, as a board started now would, not the incidents of
    the old logs plus the new messages past the old offsets."""
    from stream_detector.embedded import EmbeddedBroker
    from tests.unit.test_board_view import alert

    async def publish(bootstrap: str, services: list[str]) -> None:
        await produce(bootstrap, f"{unique}-alerts",
                      [orjson.dumps(alert(s, 0, 0)) for s in services],
                      [s.encode() for s in services])

    async def shown(port: int) -> set[str]:
        _, body = await get(port, "/api/v1/incidents?status=open")
        return {a["service"] for a in body["incidents"]}

    broker = EmbeddedBroker().start()
    try:
        for topic in ("alerts", "outages"):
            await create_topic(broker.bootstrap_servers, f"{unique}-{topic}", 1)
        await publish(broker.bootstrap_servers, [f"old{i}" for i in range(5)])
        settings = board_settings(broker.bootstrap_servers, unique)
        async with running_board(settings) as port:
            assert await shown(port) == {f"old{i}" for i in range(5)}
            broker.stop()
            await wait_for(lambda: asyncio.to_thread(
                lambda: http_get(port, "/healthz")[0] == 503))
            broker.start()
            for topic in ("alerts", "outages"):
                await create_topic(broker.bootstrap_servers, f"{unique}-{topic}", 1)
            new = [f"new{i}" for i in range(8)]
            await publish(broker.bootstrap_servers, new)

            async def rebuilt() -> bool:
                ready = (await asyncio.to_thread(http_get, port, "/readyz"))[0] == 200
                return ready and await shown(port) == set(new)

            await wait_for(rebuilt, timeout=60, every=0.5)

            # Back again faster than the board's watch looks (every 5 s), with
            # fewer messages than the board had read: its position is past the
            # new log's end, which is taken as new logs, not skipped.
            broker.stop()
            broker.start()
            for topic in ("alerts", "outages"):
                await create_topic(broker.bootstrap_servers, f"{unique}-{topic}", 1)
            new = [f"newer{i}" for i in range(3)]
            await publish(broker.bootstrap_servers, new)
            await wait_for(rebuilt, timeout=60, every=0.5)
    finally:
        broker.stop()
