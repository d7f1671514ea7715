"""The consume loop: fetch a batch, count it, close buckets, publish their alerts, checkpoint.

Per report the loop does no `await` and no logging: messages arrive in
batches from `getmany`, and everything slow happens once per batch. A crash
anywhere replays reports onto the state that did not count them yet: alerts
may be re-sent, with the same `alert_id` and content, and nothing is counted
twice (the checkpoint's rule, `io/checkpoint.py`).
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from stream_detector.core.detector import OUTCOMES, ClosedBucket
from stream_detector.io.checkpoint import Checkpointer, Position
from stream_detector.io.clocks import Clocks
from stream_detector.io.health import BrokerHealth
from stream_detector.io.metrics import DetectorMetrics
from stream_detector.io.partitions import OwnedPartitions, PartitionState
from stream_detector.io.publisher import Publisher
from stream_detector.io.reports_log import record_mark

MAX_BATCH = 10_000
FETCH_TIMEOUT_MS = 200


class ConsumerLoop:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        state: PartitionState,
        owned: OwnedPartitions,
        publisher: Publisher,
        checkpointer: Checkpointer,
        health: BrokerHealth,
        metrics: DetectorMetrics,
        clocks: Clocks,
    ):
        self.consumer = consumer
        self.state = state
        self.owned = owned
        self.publisher = publisher
        self.checkpointer = checkpointer
        self.health = health
        self.metrics = metrics
        self.clocks = clocks

    async def run(self, stop: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self.owned.fatal is not None:
                    raise self.owned.fatal
                fetch = asyncio.ensure_future(
                    self.consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=MAX_BATCH)
                )
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                try:
                    batch = fetch.result()
                except OffsetOutOfRangeError as exc:
                    for tp, offset in exc.args[0].items():
                        await self.owned.reset(tp, offset, "outside the log's offsets")
                    continue
                except NoOffsetForPartitionError as exc:
                    (tp,) = exc.args
                    await self.owned.seek_unsought(tp)
                    continue
                await self.count(batch)
                await self.close_buckets()
                if self.checkpointer.due():
                    await self.owned.checkpoint()
                    self.health.update_lag(self.consumer, self.state.positions)
        finally:
            stop_wait.cancel()

    async def count(self, batch: dict[TopicPartition, list]) -> None:
        """Count a fetched batch; its invalid reports become dead letters."""
        state = self.state
        counts = dict.fromkeys(OUTCOMES, 0)
        now = self.clocks.wall_ms()
        for tp, messages in batch.items():
            if tp in state.restoring or not messages:
                continue  # fetched before the pause; read again after the seek
            detector = state.detector(tp.partition)
            outcomes, invalid = detector.add_many([msg.value for msg in messages], now)
            for outcome, n in outcomes.items():
                counts[outcome] += n
            for index, exc in invalid:
                await self.publisher.send_dead_letter(messages[index], exc)
            # The first record of the batch: the broker served a fetch from
            # its offset, so it can be read back (see io/reports_log.py).
            state.positions[tp] = Position(messages[-1].offset + 1, record_mark(messages[0]))
            state.messages_seen += len(messages)
            state.dirty.add(tp.partition)
        self.metrics.count_outcomes(counts)

    async def close_buckets(self) -> None:
        """Close the buckets event time (or idle wall time) has passed; publish their alerts."""
        state = self.state
        now = self.clocks.wall_ms()
        closed: list[ClosedBucket] = []
        for partition, detector in list(state.detectors.items()):
            started = self.clocks.perf()
            buckets = detector.advance(now)
            if buckets:
                state.dirty.add(partition)
                per_bucket = (self.clocks.perf() - started) / len(buckets)
                for _ in buckets:
                    self.metrics.scoring_seconds.observe(per_bucket)
                self.metrics.observe_buckets(buckets, partition)
                closed.extend(buckets)
            watermark = detector.clock.watermark(now)
            if watermark is not None:
                self.metrics.watermark.labels(str(partition)).set(watermark / 1000)
        if not closed:
            return
        self.metrics.series_active.set(sum(len(d.bank) for d in state.detectors.values()))
        for bucket in closed:
            for alert in bucket.alerts:
                await self.publisher.publish_alert(alert)
