"""The partitions this process owns: their detectors, how far each is counted, and the
moves that change ownership (assign, revoke, reset), with the checkpoint between.

On assign, a partition is restored from its snapshot and consumption resumes
at the offset the snapshot covers, once `ReportsLog` (`io/reports_log.py`) has
checked that the log is still the one the snapshot counted; every checkpoint
checks the same. A broker that came back empty, a re-created topic or
retention that removed unread reports fails that check (or makes the fetch
fail with an offset out of range); the partition then restarts from its
earliest offset, with a WARNING and `stream_detector_offset_resets_total`,
instead of skipping reports in silence.

`OwnedPartitions` is also the consumer's rebalance listener: aiokafka calls
it between fetches, so nothing here runs while the loop counts a batch.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from stream_detector.config import Settings
from stream_detector.core import snapshot
from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.io.checkpoint import Checkpointer, Position, SnapshotStore
from stream_detector.io.clocks import Clocks
from stream_detector.io.health import BrokerHealth
from stream_detector.io.metrics import DetectorMetrics
from stream_detector.io.publisher import DeliveryFailed
from stream_detector.io.reports_log import ReportsLog

log = logging.getLogger("stream_detector")

NOT_THE_LOG = "not in the log it was counted from (its last record is gone or differs)"


class StateUnusable(RuntimeError):
    """Stored state exists but cannot be used with these settings."""


class PartitionState:
    """The counted state of the owned partitions, and no I/O: what a checkpoint stores."""

    def __init__(self, config: DetectorConfig):
        self.config = config
        self.detectors: dict[int, PartitionDetector] = {}
        self.positions: dict[TopicPartition, Position] = {}
        # Partitions that counted or closed something since their last snapshot.
        self.dirty: set[int] = set()
        # Assigned partitions not restored yet: their fetched records wait for the seek.
        self.restoring: set[TopicPartition] = set()
        # State kept through an offset reset, until the partition's next restore.
        self.kept_after_reset: dict[TopicPartition, PartitionDetector] = {}
        self.messages_seen = 0

    def detector(self, partition: int) -> PartitionDetector:
        detector = self.detectors.get(partition)
        if detector is None:
            detector = self.detectors[partition] = PartitionDetector(self.config)
        return detector

    def snapshot_if_changed(self, partition: int, model: str) -> bytes | None:
        detector = self.detectors.get(partition)
        if detector is None or partition not in self.dirty:
            return None
        self.dirty.discard(partition)
        return snapshot.encode(detector, model)


class OwnedPartitions(ConsumerRebalanceListener):
    def __init__(
        self,
        settings: Settings,
        state: PartitionState,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        store: SnapshotStore | None,
        reports_log: ReportsLog,
        checkpointer: Checkpointer,
        health: BrokerHealth,
        metrics: DetectorMetrics,
        clocks: Clocks,
    ):
        self.settings = settings
        self.state = state
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.reports_log = reports_log
        self.checkpointer = checkpointer
        self.health = health
        self.metrics = metrics
        self.clocks = clocks
        self.store_ready = False
        # Where `restore` or a reset last sought each partition.
        self.sought: dict[TopicPartition, int] = {}
        # Raised inside the rebalance listener, which would only log it; the
        # consume loop picks it up and stops the service.
        self.fatal: Exception | None = None

    # -- the listener ------------------------------------------------------

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        log.info("partitions assigned", extra={"partitions": partitions})
        await self.restore(assigned)
        self.health.assigned = True

    # -- the checkpoint ----------------------------------------------------

    async def checkpoint(self, partitions: list[TopicPartition] | None = None) -> None:
        """One checkpoint of `partitions` (default: all); the order is io/checkpoint.py's."""
        positions = {
            tp: p for tp, p in self.state.positions.items()
            if partitions is None or tp in partitions
        }
        changed = await self.checkpointer.checkpoint(
            positions, lambda partition: self.state.snapshot_if_changed(partition,
                                                                        self.settings.model)
        )
        for tp in changed:
            await self.reset(tp, positions[tp].offset, NOT_THE_LOG)

    # -- moves -------------------------------------------------------------

    async def reset(self, tp: TopicPartition, stored: int, why: str) -> None:
        """Restart `tp` from its earliest offset: its stored position `stored` is `why`."""
        state = self.state
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
        state.positions.pop(tp, None)
        self.checkpointer.forget([tp])
        if keep:
            # A new cluster usually brings a rebalance, whose restore finds
            # no snapshot there (the changelog went with the log): it takes
            # this state instead of starting from nothing.
            if tp.partition in state.detectors:
                state.kept_after_reset[tp] = state.detectors[tp.partition]
        else:
            state.detectors.pop(tp.partition, None)
        self.seek(tp, begin)
        # A reset often means a new cluster, where the producer's cached
        # metadata names topics that do not exist yet; a broker may even
        # acknowledge writes to them (tansu does) that no reader ever sees.
        # Fresh metadata creates them (or fails the sends, which are retried),
        # and the next restore makes sure of the changelog's settings again.
        await self.producer.client.force_metadata_update()
        self.store_ready = False

    async def restore(self, assigned: list[TopicPartition]) -> None:
        """Load assigned partitions' snapshots and resume each where it stopped counting."""
        state = self.state
        # aiokafka may already fetch for new partitions while this listener
        # runs; paused, none of their records reach the loop before the seek.
        self.consumer.pause(*assigned)
        state.restoring.update(assigned)
        try:
            if self.store is not None and not self.store_ready:
                count = len(self.consumer.partitions_for_topic(self.settings.reports_topic) or ())
                await self.store.ensure_topic(max(count, 1))
                self.store_ready = True
            for tp in assigned:
                await self._restore_one(tp)
        except snapshot.SnapshotError as exc:
            self.fatal = StateUnusable(
                f"setting state_topic: stored state in {self.settings.state_topic} "
                f"cannot be used: {exc}"
            )
        finally:
            state.restoring.difference_update(assigned)
            self.consumer.resume(*assigned)

    async def _restore_one(self, tp: TopicPartition) -> None:
        state = self.state
        committed = await self.consumer.committed(tp)
        stored = await self.store.load(tp.partition, committed) if self.store else None
        state.detectors.pop(tp.partition, None)
        state.positions.pop(tp, None)
        kept = state.kept_after_reset.pop(tp, None)
        if stored is None:
            if kept is not None:
                state.detectors[tp.partition] = kept
                log.info("partition resumes with the state kept through its reset",
                         extra={"partition": tp.partition, "series": len(kept.bank)})
            begin = (await self.consumer.beginning_offsets([tp]))[tp]
            if committed is None or kept is not None:  # never consumed, or reset
                self.seek(tp, begin)
                return
            if self.store is not None and committed > begin:
                # Reports before the committed offset were counted into a state
                # that is gone: say so rather than start from nothing in silence.
                log.warning(
                    "partition %d: no stored snapshot in %s is usable at committed offset %d "
                    "(the log starts at %d); resuming there with empty state, so what was "
                    "learned from the reports before it is lost", tp.partition,
                    self.settings.state_topic if self.settings.state_store == "kafka"
                    else self.settings.state_dir, committed, begin,
                    extra={"partition": tp.partition, "committed": committed,
                           "log_start": begin},
                )
            self.seek(tp, committed)  # checked by the fetch's range only
            return
        detector = snapshot.decode(stored.data, state.config, self.clocks.wall_ms())
        state.detectors[tp.partition] = detector
        log.info("partition restored", extra={
            "partition": tp.partition, "offset": stored.offset,
            "committed": committed, "series": len(detector.bank),
        })
        position = Position(stored.offset, stored.mark)
        if await self.reports_log.unmatched({tp: position}):
            await self.reset(tp, stored.offset, NOT_THE_LOG)
        else:
            state.positions[tp] = position
            self.checkpointer.restored(tp, position)
            self.seek(tp, stored.offset)

    async def seek_unsought(self, tp: TopicPartition) -> None:
        """aiokafka looked for a committed offset before `restore` sought `tp`, and kept
        the answer: seek again, or where a partition never consumed starts."""
        if tp in self.sought:
            self.seek(tp, self.sought[tp])
        else:
            self.seek(tp, (await self.consumer.beginning_offsets([tp]))[tp])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset
        self.consumer.seek(tp, offset)

    async def release(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        state = self.state
        log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in revoked)})
        if not self.checkpointer.failed:
            try:
                await self.checkpoint(revoked)
            except (KafkaError, DeliveryFailed) as exc:
                # Not stored, not committed: the next owner replays these
                # reports. This process may not go on (the listener only
                # logs what it raises): the loop stops on it.
                log.warning("checkpoint on revoke failed", extra={"error": repr(exc)})
                self.fatal = exc
        self.checkpointer.forget(revoked)
        for tp in revoked:
            state.detectors.pop(tp.partition, None)
            state.positions.pop(tp, None)
            self.sought.pop(tp, None)
            state.dirty.discard(tp.partition)
            self.metrics.services.forget(tp.partition)
            self.health.forget(tp)
