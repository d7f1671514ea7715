"""Scale out and in: partitions move between processes and the incidents stay exactly the same.

Three detector processes share one consumer group over a 6-partition reports
topic. Mid-run one is stopped with SIGTERM (its partitions are checkpointed on
revoke and restored by the others) and later a fourth joins (it takes
partitions away from the survivors, which checkpoint them first). Every
partition's detector therefore moves between processes at least once, and
the alerts published must be the ones a single detector computes offline
over the same reports.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_detector.backtest import replay_events
from stream_detector.config import Settings
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    MINUTE,
    T0,
    create_topic,
    detector_settings,
    encode,
    start_detector,
    traffic,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6
ASSIGNED = re.compile(r'"partitions assigned","partitions":\[\d')
# Twelve services, every one with at least a few reports each minute, so no
# partition ever has an empty bucket that a single offline detector would not.
SERVICES = {f"svc-{i:02d}": rate for i, rate in enumerate(
    [30, 22, 18, 15, 12, 10, 9, 8, 7, 6, 6, 5])}
OUTAGED = ("svc-01", "svc-04", "svc-09")


def settings_for(broker, unique: str) -> Settings:
    # Buckets close on event time only, so the run is comparable to a replay.
    return detector_settings(broker.bootstrap_servers, unique, model="ewma", idle_timeout="1h")


async def committed(settings: Settings) -> dict[int, int]:
    """The group's committed offset per reports partition (0 where none yet)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                group_id=settings.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(settings.reports_topic, p)) or 0
                for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def produce_acked(bootstrap: str, topic: str, reports: list[dict]) -> dict[int, int]:
    """Produce `reports` and return, per partition, the offset after the last one acked.

    Taken from the broker's acknowledgements because tansu answers ListOffsets
    (`end_offsets`) with the last record batch's base offset + 1, not the
    high watermark.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key)
                   for value, key in zip(*encode(reports), strict=True)]
        ends: dict[int, int] = {}
        for meta in await asyncio.gather(*futures):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()


async def read_to_end(bootstrap: str, topic: str) -> list:
    """Every message now in `topic` (nothing is producing to it any more).

    Reads until each position passes the listed end offset; fetches return
    whole batches, so that includes the last batch even where the broker
    lists its base offset as the end (see `produce_acked`).
    """
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    messages: list = []
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)

        async def done() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                messages.extend(msgs)
            return all([await consumer.position(tp) >= end for tp, end in ends.items()])

        await wait_for(done, 30)
    finally:
        await consumer.stop()
    return messages


def partitions_with_progress(before: dict[int, int], after: dict[int, int]) -> set[int]:
    return {p for p in after if after[p] > before[p]}


def incidents(alerts: list[dict]) -> set[tuple]:
    return {(a["alert_id"], a["started_at"], a["ended_at"])
            for a in alerts if a["status"] == "resolved"}


async def test_processes_join_and_leave_and_incidents_match_one_detector(
    broker, unique, tmp_path: Path
):
    settings = settings_for(broker, unique)
    bootstrap = settings.bootstrap_servers
    reports = traffic(random.Random(77), 150, outage=range(90, 104),
                      services=SERVICES, outaged=OUTAGED)

    def cut(minute: int) -> int:
        return next(i for i, r in enumerate(reports) if r["ts"] >= T0 + minute * MINUTE)

    first, second = cut(60), cut(96)
    await create_topic(bootstrap, settings.reports_topic, PARTITIONS)

    logs = [(tmp_path / f"detector-{i}.log").open("ab") for i in range(4)]
    procs = [start_detector(settings, log) for log in logs[:3]]
    try:
        # All six partitions consumed and checkpointed up to the first cut.
        target = await produce_acked(bootstrap, settings.reports_topic, reports[:first])

        async def caught_up() -> bool:
            done = await committed(settings)
            return all(done[p] >= end for p, end in target.items())

        await wait_for(caught_up, 45, every=0.5)

        # Scale in: one process leaves cleanly while the rest of the outage arrives.
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(30) == 0
        before = await committed(settings)
        await produce_acked(bootstrap, settings.reports_topic, reports[first:second])
        # The two survivors own all six partitions, including the leaver's.
        await wait_for(lambda: _all_progressed(settings, before), 45, every=0.5)

        # Scale out: a fourth process joins and the rest arrives.
        procs.append(start_detector(settings, logs[3]))
        joiner_log = tmp_path / "detector-3.log"
        # Wait for the rebalance that hands it partitions (the survivors notice
        # the new member at their next heartbeat) before the rest arrives.
        await wait_for(lambda: ASSIGNED.search(joiner_log.read_text()), 45, every=0.5)
        target = await produce_acked(bootstrap, settings.reports_topic, reports[second:])
        assert sum(target.values()) == len(reports)
        await wait_for(caught_up, 60, every=0.5)
        assert all(p.poll() is None for p in procs[1:]), "a detector process died"
        messages = await read_to_end(bootstrap, settings.alerts_topic)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()

    # State really moved: the joiner restored partitions others had checkpointed.
    joiner = joiner_log.read_text()
    assert '"partition restored"' in joiner, joiner[-2000:]

    online = [orjson.loads(m.value) for m in messages]
    values, _ = encode(reports)
    offline = [orjson.loads(a.to_json())
               for b in replay_events(iter(values), settings.detector_config()) for a in b.alerts]

    assert incidents(offline) != set()
    assert set(OUTAGED) <= {a["service"] for a in offline}
    assert incidents(online) == incidents(offline)
    # Re-sent alerts (a partition replayed after moving) are exact duplicates.
    assert {orjson.dumps(a) for a in online} == {orjson.dumps(a) for a in offline}
    # Exactly one resolved message per incident, even across the moves.
    resolved = [a["alert_id"] for a in online if a["status"] == "resolved"]
    assert sorted(resolved) == sorted(set(resolved))


async def _all_progressed(settings: Settings, before: dict[int, int]) -> bool:
    return partitions_with_progress(before, await committed(settings)) == set(range(PARTITIONS))
