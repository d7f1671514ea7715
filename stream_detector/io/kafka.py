"""The asyncio shell: consume reports, feed the core, publish alerts and dead letters.

One `DetectorService` owns one consumer (in the group, so instances share the
partitions), one producer, a `PartitionDetector` per assigned partition and the
metrics. Per report the loop does no `await` and no logging: messages arrive
in batches from `getmany`, and everything slow happens once per batch.

What is sent goes through the `Publisher` (`io/publisher.py`), which delivers
it for sure or stops the process; when the loop may declare reports done is
the `Checkpointer`'s rule (`io/checkpoint.py`). A crash anywhere replays
reports onto the state that did not count them yet: alerts may be re-sent,
with the same `alert_id` and content, and nothing is counted twice.

On assign, a partition is restored from its snapshot and consumption resumes
at the offset the snapshot covers, once `ReportsLog` (`io/reports_log.py`) has
checked that the log is still the one the snapshot counted; every checkpoint
checks the same. A broker that came back empty, a re-created topic or
retention that removed unread reports fails that check (or makes the fetch
fail with an offset out of range); the partition then restarts from its
earliest offset, with a WARNING and `stream_detector_offset_resets_total`,
instead of skipping reports in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from stream_detector.config import Settings
from stream_detector.core import snapshot
from stream_detector.core.detector import OUTCOMES, ClosedBucket, PartitionDetector
from stream_detector.io.checkpoint import Checkpointer, Position
from stream_detector.io.clients import (
    BrokerUnreachable,
    build_consumer,
    build_producer,
    start_client,
)
from stream_detector.io.metrics import DetectorMetrics
from stream_detector.io.publisher import DeliveryFailed, Publisher
from stream_detector.io.reports_log import ReportsLog, record_mark
from stream_detector.io.state import KafkaSnapshotStore, LocalSnapshotStore

log = logging.getLogger("stream_detector")

MAX_BATCH = 10_000
NOT_THE_LOG = "not in the log it was counted from (its last record is gone or differs)"


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
        self.publisher: Publisher | None = None
        self.checkpointer: Checkpointer | None = None
        self.positions: dict[TopicPartition, Position] = {}
        self.reports_log: ReportsLog | None = None
        # Where `restore` or a reset last sought each partition.
        self.sought: dict[TopicPartition, int] = {}
        # State kept through an offset reset, until the partition's next restore.
        self.kept_after_reset: dict[TopicPartition, PartitionDetector] = {}
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
        if s.state_store == "local":
            self.store = LocalSnapshotStore(s.state_dir)  # refused before any client starts
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
        self.publisher = Publisher(self.producer, self.metrics, s.delivery_timeout)
        self.reports_log = ReportsLog(self.consumer, s.kafka_client_options())
        self.checkpointer = Checkpointer(
            self.publisher.deliver, self.reports_log, self.store, s.checkpoint_interval,
            store_timeout=s.delivery_timeout,
            on_store_retry=self.metrics.send_retries.labels("snapshot").inc,
        )
        self.consumer.subscribe([s.reports_topic], listener=_Rebalance(self))
        self.connected = True
        self.metrics.kafka_connected.set(1)

    async def stop(self, checkpoint: bool = True) -> None:
        """Checkpoint (unless the loop failed), and leave the group."""
        if checkpoint and self.checkpointer is not None and not self.checkpointer.failed:
            try:
                await asyncio.wait_for(self._checkpoint(), self.settings.shutdown_timeout)
            except (TimeoutError, KafkaError, DeliveryFailed) as exc:
                log.warning("final checkpoint failed; a restart replays what it did not cover",
                            extra={"error": repr(exc)})
        for client in (self.consumer, self.reports_log, self.producer):
            if client is None:
                continue
            try:
                await client.stop()
            except (asyncio.CancelledError, KafkaError) as exc:
                # aiokafka lets its fetcher's cancellation escape a stop while
                # the broker is unreachable; nothing is left to save by then.
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise
                log.warning("a Kafka client did not close cleanly", extra={"error": repr(exc)})
        self.metrics.kafka_connected.set(0)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        health = asyncio.create_task(self._watch_broker(stop))
        failed = False
        try:
            await self._consume(stop)
        except BaseException:
            # Whatever was counted or sent halfway must not be stored or
            # committed: the restart replays it (see io/checkpoint.py).
            failed = True
            assert self.checkpointer is not None
            self.checkpointer.fail()
            raise
        finally:
            health.cancel()
            await self.stop(checkpoint=not failed)

    def healthy(self) -> bool:
        return self.connected

    def ready(self) -> bool:
        return self.connected and self.assigned

    # -- the loop --------------------------------------------------------

    async def _consume(self, stop: asyncio.Event) -> None:
        assert self.consumer is not None and self.checkpointer is not None
        consumer = self.consumer
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
                try:
                    batch = fetch.result()
                except OffsetOutOfRangeError as exc:
                    for tp, offset in exc.args[0].items():
                        await self.reset_partition(tp, offset, "outside the log's offsets")
                    continue
                except NoOffsetForPartitionError as exc:
                    # aiokafka looked for a committed offset before `restore`
                    # sought the partition, and kept the answer: seek again.
                    (tp,) = exc.args
                    if tp in self.sought:
                        self._seek(tp, self.sought[tp])
                    else:  # not sought yet: where a partition never consumed starts
                        self._seek(tp, (await consumer.beginning_offsets([tp]))[tp])
                    continue
                await self.process_batch(batch)
                await self.close_buckets()
                if self.checkpointer.due():
                    await self._checkpoint()
                    self._update_lag()
        finally:
            stop_wait.cancel()

    async def process_batch(self, batch: dict[TopicPartition, list]) -> None:
        assert self.publisher is not None
        counts = dict.fromkeys(OUTCOMES, 0)
        now = wall_ms()
        for tp, messages in batch.items():
            if tp in self.restoring or not messages:
                continue  # fetched before the pause; read again after the seek
            detector = self.detectors.get(tp.partition)
            if detector is None:
                detector = self.detectors[tp.partition] = PartitionDetector(self.detector_config)
            outcomes, invalid = detector.add_many([msg.value for msg in messages], now)
            for outcome, n in outcomes.items():
                counts[outcome] += n
            for index, exc in invalid:
                await self.publisher.send_dead_letter(self.settings.dlq_topic, messages[index], exc)
            # The first record of the batch: the broker served a fetch from
            # its offset, so it can be read back (see io/reports_log.py).
            self.positions[tp] = Position(messages[-1].offset + 1, record_mark(messages[0]))
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
        assert self.publisher is not None
        await self.publisher.send_alert(
            self.settings.alerts_topic, orjson.dumps(alert), alert["service"].encode()
        )
        self.metrics.observe_alert(alert, time.time() - bucket_end_s)
        if alert["status"] == "resolved" or alert["bucket_start"] == alert["started_at"]:
            log.info(
                "incident %s", alert["status"],
                extra={k: alert[k] for k in ("alert_id", "service", "region", "severity",
                                             "reports", "expected", "score")},
            )
        if self.on_alert is not None:
            await self.on_alert(alert)

    # -- offsets and partitions -----------------------------------------

    async def _checkpoint(self, partitions: list[TopicPartition] | None = None) -> None:
        """One checkpoint of `partitions` (default: all); the order is io/checkpoint.py's."""
        assert self.checkpointer is not None
        positions = {
            tp: p for tp, p in self.positions.items() if partitions is None or tp in partitions
        }
        changed = await self.checkpointer.checkpoint(positions, self._snapshot_if_changed)
        for tp in changed:
            await self.reset_partition(tp, positions[tp].offset, NOT_THE_LOG)

    def _snapshot_if_changed(self, partition: int) -> bytes | None:
        detector = self.detectors.get(partition)
        if detector is None or partition not in self.dirty:
            return None
        self.dirty.discard(partition)
        return snapshot.encode(detector, self.settings.model)

    async def reset_partition(self, tp: TopicPartition, stored: int, why: str) -> None:
        """Restart `tp` from its earliest offset: its stored position `stored` is `why`."""
        assert self.consumer is not None
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        end = (await self.consumer.end_offsets([tp]))[tp]
        keep = self.settings.offset_reset_state == "keep"
        log.warning(
            "partition %d: stored offset %d is %s (the log holds %d to %d); restarting from "
            "offset %d, %s the counted state", tp.partition, stored, why, begin, end, begin,
            "keeping" if keep else "discarding",
            extra={"partition": tp.partition, "stored_offset": stored, "log_start": begin,
                   "log_end": end},
        )
        self.metrics.offset_resets.labels(str(tp.partition)).inc()
        self.positions.pop(tp, None)
        assert self.checkpointer is not None
        self.checkpointer.forget([tp])
        if keep:
            # A new cluster usually brings a rebalance, whose restore finds
            # no snapshot there (the changelog went with the log): it takes
            # this state instead of starting from nothing.
            if tp.partition in self.detectors:
                self.kept_after_reset[tp] = self.detectors[tp.partition]
        else:
            self.detectors.pop(tp.partition, None)
        self._seek(tp, begin)
        # A reset often means a new cluster, where the producer's cached
        # metadata names topics that do not exist yet; a broker may even
        # acknowledge writes to them (tansu does) that no reader ever sees.
        # Fresh metadata creates them (or fails the sends, which are retried),
        # and the next restore makes sure of the changelog's settings again.
        assert self.producer is not None
        await self.producer.client.force_metadata_update()
        self.store_ready = False

    async def restore(self, assigned: list[TopicPartition]) -> None:
        """Load assigned partitions' snapshots and resume each where it stopped counting."""
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
                self.detectors.pop(tp.partition, None)
                self.positions.pop(tp, None)
                kept = self.kept_after_reset.pop(tp, None)
                if stored is None:
                    if kept is not None:
                        self.detectors[tp.partition] = kept
                        log.info("partition resumes with the state kept through its reset",
                                 extra={"partition": tp.partition, "series": len(kept.bank)})
                    if committed is None or kept is not None:  # never consumed, or reset
                        self._seek(tp, (await self.consumer.beginning_offsets([tp]))[tp])
                    else:
                        self._seek(tp, committed)  # checked by the fetch's range only
                    continue
                self.detectors[tp.partition] = snapshot.decode(
                    stored.data, self.detector_config, wall_ms()
                )
                log.info("partition restored", extra={
                    "partition": tp.partition, "offset": stored.offset,
                    "committed": committed, "series": len(self.detectors[tp.partition].bank),
                })
                position = Position(stored.offset, stored.mark)
                assert self.reports_log is not None
                if await self.reports_log.unmatched({tp: position}):
                    await self.reset_partition(tp, stored.offset, NOT_THE_LOG)
                else:
                    self.positions[tp] = position
                    assert self.checkpointer is not None
                    self.checkpointer.restored(tp, position)
                    self._seek(tp, stored.offset)
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

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        assert self.consumer is not None
        self.sought[tp] = offset
        self.consumer.seek(tp, offset)

    async def release(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        assert self.checkpointer is not None
        log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in revoked)})
        if not self.checkpointer.failed:
            try:
                await self._checkpoint(revoked)
            except (KafkaError, DeliveryFailed) as exc:
                # Not stored, not committed: the next owner replays these
                # reports. This process may not go on (the listener only
                # logs what it raises): the loop stops on it.
                log.warning("checkpoint on revoke failed", extra={"error": repr(exc)})
                self.fatal = exc
        self.checkpointer.forget(revoked)
        for tp in revoked:
            self.detectors.pop(tp.partition, None)
            self.positions.pop(tp, None)
            self.sought.pop(tp, None)
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
            position = self.positions.get(tp)
            lag = end - position.offset if position is not None else end
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
