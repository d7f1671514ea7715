"""The asyncio shell: consume reports, feed the core, publish alerts and dead letters.

One `DetectorService` owns one consumer (in the group, so instances share the
partitions), one producer, a `PartitionDetector` per assigned partition and the
metrics. Per report the loop does no `await` and no logging: messages arrive
in batches from `getmany`, and everything slow happens once per batch.

The checkpoint protocol, in this order and for these reasons:
1. wait until every alert and dead letter produced so far is delivered, so
   no output is lost behind a committed offset;
2. store each changed partition's snapshot, tagged with the offset of the
   next report it has not seen, and wait for its delivery, so the offset
   is never committed ahead of the state that counted those reports;
3. commit those offsets.
A crash anywhere in between replays reports onto the state that did not
count them yet: alerts may be re-sent, with the same `alert_id` and content,
and nothing is counted twice. On assign, a partition is restored from its
snapshot and consumption resumes at the offset the snapshot covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from stream_detector.config import Settings
from stream_detector.core import snapshot
from stream_detector.core.detector import OUTCOMES, ClosedBucket, PartitionDetector
from stream_detector.core.events import InvalidReport
from stream_detector.io.clients import (
    BrokerUnreachable,
    build_consumer,
    build_producer,
    start_client,
)
from stream_detector.io.metrics import DetectorMetrics
from stream_detector.io.state import KafkaSnapshotStore, LocalSnapshotStore

log = logging.getLogger("stream_detector")

MAX_BATCH = 10_000


class StateUnusable(RuntimeError):
    """Stored state exists but cannot be used with these settings."""


def wall_ms() -> int:
    return int(time.time() * 1000)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: DetectorService):
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        log.info("partitions assigned", extra={"partitions": partitions})
        await self.service.restore(assigned)
        self.service.assigned = True


AlertHook = Callable[[dict], Awaitable[None]]


class DetectorService:
    def __init__(
        self,
        settings: Settings,
        metrics: DetectorMetrics | None = None,
        on_alert: AlertHook | None = None,
    ):
        self.settings = settings
        self.metrics = metrics or DetectorMetrics.for_settings(settings)
        self.on_alert = on_alert
        self.detector_config = settings.detector_config()
        self.detectors: dict[int, PartitionDetector] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.pending: list[asyncio.Future] = []
        self.next_offsets: dict[TopicPartition, int] = {}
        self.messages_seen = 0
        self.connected = False
        self.assigned = False
        self.store: KafkaSnapshotStore | LocalSnapshotStore | None = None
        self.store_ready = False
        self.dirty: set[int] = set()
        self.restoring: set[TopicPartition] = set()
        self.fatal: Exception | None = None

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.producer = build_producer(s)
        try:
            await start_client(self.producer, s)
        except BrokerUnreachable:
            await self.producer.stop()
            raise
        self.consumer = build_consumer(s)
        try:
            await start_client(self.consumer, s)
        except BrokerUnreachable:
            await self.producer.stop()
            raise
        if s.state_store == "kafka":
            self.store = KafkaSnapshotStore(self.producer, s.kafka_client_options(), s.state_topic)
        elif s.state_store == "local":
            self.store = LocalSnapshotStore(s.state_dir)
        self.consumer.subscribe([s.reports_topic], listener=_Rebalance(self))
        self.connected = True
        self.metrics.kafka_connected.set(1)

    async def stop(self) -> None:
        """Deliver what is pending, commit, and leave the group."""
        try:
            await asyncio.wait_for(self._checkpoint(), self.settings.shutdown_timeout)
        except (TimeoutError, KafkaError) as exc:
            log.warning("final commit failed", extra={"error": repr(exc)})
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        self.metrics.kafka_connected.set(0)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        health = asyncio.create_task(self._watch_broker(stop))
        try:
            await self._consume(stop)
        finally:
            health.cancel()
            await self.stop()

    def healthy(self) -> bool:
        return self.connected

    def ready(self) -> bool:
        return self.connected and self.assigned

    # -- the loop --------------------------------------------------------

    async def _consume(self, stop: asyncio.Event) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        last_commit = time.monotonic()
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self.fatal is not None:
                    raise self.fatal
                fetch = asyncio.ensure_future(
                    consumer.getmany(timeout_ms=200, max_records=MAX_BATCH)
                )
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                await self.process_batch(fetch.result())
                await self.close_buckets()
                if time.monotonic() - last_commit >= self.settings.checkpoint_interval:
                    await self._checkpoint()
                    self._update_lag()
                    last_commit = time.monotonic()
        finally:
            stop_wait.cancel()

    async def process_batch(self, batch: dict[TopicPartition, list]) -> None:
        counts = dict.fromkeys(OUTCOMES, 0)
        now = wall_ms()
        for tp, messages in batch.items():
            if tp in self.restoring:
                continue  # fetched before the pause; read again after the seek
            detector = self.detectors.get(tp.partition)
            if detector is None:
                detector = self.detectors[tp.partition] = PartitionDetector(self.detector_config)
            outcomes, invalid = detector.add_many([msg.value for msg in messages], now)
            for outcome, n in outcomes.items():
                counts[outcome] += n
            for index, exc in invalid:
                await self._dead_letter(messages[index], exc)
            if messages:
                self.next_offsets[tp] = messages[-1].offset + 1
                self.messages_seen += len(messages)
                self.dirty.add(tp.partition)
        self.metrics.count_outcomes(counts)

    async def close_buckets(self) -> None:
        now = wall_ms()
        closed: list[ClosedBucket] = []
        for partition, detector in list(self.detectors.items()):
            started = time.perf_counter()
            buckets = detector.advance(now)
            if buckets:
                self.dirty.add(partition)
                per_bucket = (time.perf_counter() - started) / len(buckets)
                for _ in buckets:
                    self.metrics.scoring_seconds.observe(per_bucket)
                self.metrics.observe_buckets(buckets, partition)
                closed.extend(buckets)
            watermark = detector.clock.watermark(now)
            if watermark is not None:
                self.metrics.watermark.labels(str(partition)).set(watermark / 1000)
        if not closed:
            return
        self.metrics.series_active.set(sum(len(d.bank) for d in self.detectors.values()))
        for bucket in closed:
            bucket_end_s = (bucket.start_ms + self.detector_config.bucket_ms) / 1000
            for alert in bucket.alerts:
                await self.publish_alert(alert, bucket_end_s)

    async def publish_alert(self, alert: dict, bucket_end_s: float) -> None:
        assert self.producer is not None
        future = await self.producer.send(
            self.settings.alerts_topic, orjson.dumps(alert), key=alert["service"].encode()
        )
        self.pending.append(future)
        self.metrics.observe_alert(alert, time.time() - bucket_end_s)
        if alert["status"] == "resolved" or alert["bucket_start"] == alert["started_at"]:
            log.info(
                "incident %s", alert["status"],
                extra={k: alert[k] for k in ("alert_id", "service", "region", "severity",
                                             "reports", "expected", "score")},
            )
        if self.on_alert is not None:
            await self.on_alert(alert)

    async def _dead_letter(self, msg, exc: InvalidReport) -> None:
        assert self.producer is not None
        headers = [
            ("error.reason", exc.reason.encode()),
            ("error.detail", exc.detail.encode()[:512]),
            ("source.topic", msg.topic.encode()),
            ("source.partition", str(msg.partition).encode()),
            ("source.offset", str(msg.offset).encode()),
        ]
        future = await self.producer.send(
            self.settings.dlq_topic, msg.value, key=msg.key, headers=headers
        )
        self.pending.append(future)
        self.metrics.dlq.labels(exc.reason).inc()

    # -- offsets and partitions -----------------------------------------

    async def _checkpoint(self, partitions: list[TopicPartition] | None = None) -> None:
        """Deliver outputs, store changed snapshots, then commit (see the module docstring)."""
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)
        offsets = {
            tp: off for tp, off in self.next_offsets.items()
            if partitions is None or tp in partitions
        }
        if self.store is not None:
            model = self.settings.model
            for tp, offset in offsets.items():
                detector = self.detectors.get(tp.partition)
                if detector is not None and tp.partition in self.dirty:
                    await self.store.save(tp.partition, snapshot.encode(detector, model), offset)
                    self.dirty.discard(tp.partition)
        if offsets and self.consumer is not None:
            await self.consumer.commit(offsets)

    async def restore(self, assigned: list[TopicPartition]) -> None:
        """Load assigned partitions' snapshots and resume each at the offset it covers."""
        assert self.consumer is not None
        # aiokafka may already fetch for new partitions while this listener
        # runs; paused, none of their records reach the loop before the seek.
        self.consumer.pause(*assigned)
        self.restoring.update(assigned)
        try:
            if isinstance(self.store, KafkaSnapshotStore) and not self.store_ready:
                count = len(self.consumer.partitions_for_topic(self.settings.reports_topic) or ())
                await self.store.ensure_topic(max(count, 1))
                self.store_ready = True
            for tp in assigned:
                committed = await self.consumer.committed(tp)
                stored = await self.store.load(tp.partition, committed) if self.store else None
                if stored is None:
                    self.detectors.pop(tp.partition, None)
                    continue
                self.detectors[tp.partition] = snapshot.decode(
                    stored.data, self.detector_config, wall_ms()
                )
                self.next_offsets[tp] = stored.offset
                self.consumer.seek(tp, stored.offset)
                log.info("partition restored", extra={
                    "partition": tp.partition, "offset": stored.offset, "committed": committed,
                    "series": len(self.detectors[tp.partition].bank),
                })
        except snapshot.SnapshotError as exc:
            # Raised from inside the rebalance listener, which would only log
            # it; the consume loop picks it up and stops the service.
            self.fatal = StateUnusable(
                f"setting state_topic: stored state in {self.settings.state_topic} "
                f"cannot be used: {exc}"
            )
        finally:
            self.restoring.difference_update(assigned)
            self.consumer.resume(*assigned)

    async def release(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in revoked)})
        try:
            await self._checkpoint(revoked)
        except KafkaError as exc:
            log.warning("commit on revoke failed", extra={"error": repr(exc)})
        for tp in revoked:
            self.detectors.pop(tp.partition, None)
            self.next_offsets.pop(tp, None)
            self.dirty.discard(tp.partition)
            self.metrics.services.forget(tp.partition)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))

    def _update_lag(self) -> None:
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is None:
                continue
            position = self.next_offsets.get(tp)
            lag = end - position if position is not None else end
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))

    async def _watch_broker(self, stop: asyncio.Event) -> None:
        """Ask the broker for metadata now and then; /healthz reports the answer."""
        assert self.consumer is not None
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.consumer.topics(), 5)
                connected = True
            except (TimeoutError, KafkaError, OSError):
                connected = False
            if connected != self.connected:
                log.warning("broker %s", "reachable again" if connected else "unreachable")
            self.connected = connected
            self.metrics.kafka_connected.set(1 if connected else 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)
