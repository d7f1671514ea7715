"""The running detector, wired in one place: the parts of the asyncio shell and their order.

- `ConsumerLoop` (`io/consumer_loop.py`): fetch, count, close buckets, publish,
  checkpoint when due;
- `Publisher` (`io/publisher.py`): alerts and dead letters, delivered for sure
  or the process stops;
- `Checkpointer` (`io/checkpoint.py`): deliver, check the log, store, commit;
- `OwnedPartitions` (`io/partitions.py`): restore on assign, checkpoint on
  revoke, reset a stale position;
- `BrokerHealth` (`io/health.py`): /healthz, /readyz, consumer lag.

One `DetectorService` owns one consumer (in the group, so instances share the
partitions) and one producer; every part gets its clocks from one `Clocks`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream_detector.config import Settings
from stream_detector.io.checkpoint import Checkpointer, SnapshotStore
from stream_detector.io.clients import (
    BrokerUnreachable,
    build_consumer,
    build_producer,
    start_client,
    stop_client,
)
from stream_detector.io.clocks import Clocks
from stream_detector.io.consumer_loop import ConsumerLoop
from stream_detector.io.health import BrokerHealth
from stream_detector.io.metrics import DetectorMetrics
from stream_detector.io.partitions import OwnedPartitions, PartitionState, StateUnusable
from stream_detector.io.publisher import AlertHook, DeliveryFailed, Publisher
from stream_detector.io.reports_log import ReportsLog
from stream_detector.io.state import KafkaSnapshotStore, LocalSnapshotStore

log = logging.getLogger("stream_detector")

__all__ = ["DetectorService", "StateUnusable"]


@dataclass
class Shell:
    """The parts of one running service, made by `wire`."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    store: SnapshotStore | None
    reports_log: ReportsLog
    publisher: Publisher
    checkpointer: Checkpointer
    owned: OwnedPartitions
    loop: ConsumerLoop


def wire(
    settings: Settings,
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    store: SnapshotStore | None,
    state: PartitionState,
    health: BrokerHealth,
    metrics: DetectorMetrics,
    clocks: Clocks,
    on_alert: AlertHook | None = None,
) -> Shell:
    """Every part of the shell, from started clients; nothing here does I/O."""
    s = settings
    publisher = Publisher(producer, metrics, s.delivery_timeout, s.alerts_topic, s.dlq_topic,
                          on_alert, clock=clocks.monotonic, wall_clock=clocks.wall_seconds,
                          sleep=clocks.sleep)
    reports_log = ReportsLog(consumer, s.kafka_client_options())
    checkpointer = Checkpointer(
        publisher.deliver, reports_log, store, s.checkpoint_interval,
        store_timeout=s.delivery_timeout, clock=clocks.monotonic, sleep=clocks.sleep,
        on_store_retry=metrics.send_retries.labels("snapshot").inc,
    )
    owned = OwnedPartitions(s, state, consumer, producer, store, reports_log, checkpointer,
                            health, metrics, clocks)
    loop = ConsumerLoop(consumer, state, owned, publisher, checkpointer, health, metrics, clocks)
    return Shell(consumer, producer, store, reports_log, publisher, checkpointer, owned, loop)


class DetectorService:
    def __init__(
        self,
        settings: Settings,
        metrics: DetectorMetrics | None = None,
        on_alert: AlertHook | None = None,
        clocks: Clocks | None = None,
    ):
        self.settings = settings
        self.metrics = metrics or DetectorMetrics.for_settings(settings)
        self.on_alert = on_alert
        self.clocks = clocks or Clocks()
        self.state = PartitionState(settings.detector_config())
        self.health = BrokerHealth(self.metrics)
        self.shell: Shell | None = None

    def healthy(self) -> bool:
        return self.health.healthy()

    def ready(self) -> bool:
        return self.health.ready()

    async def start(self) -> None:
        s = self.settings
        local = LocalSnapshotStore(s.state_dir) if s.state_store == "local" else None
        # (a local store is refused before any client starts)
        producer = build_producer(s)
        await _start_or_stop(producer, s, producer)
        consumer = build_consumer(s)
        await _start_or_stop(consumer, s, producer)
        store: SnapshotStore | None = local
        if s.state_store == "kafka":
            store = KafkaSnapshotStore(producer, s.kafka_client_options(), s.state_topic)
        self.shell = wire(s, consumer, producer, store, self.state, self.health, self.metrics,
                          self.clocks, self.on_alert)
        consumer.subscribe([s.reports_topic], listener=self.shell.owned)
        self.health.set_connected(True)

    async def stop(self, checkpoint: bool = True) -> None:
        """Checkpoint (unless the loop failed), and leave the group."""
        shell = self.shell
        if shell is None:
            return
        if checkpoint and not shell.checkpointer.failed:
            try:
                await asyncio.wait_for(shell.owned.checkpoint(), self.settings.shutdown_timeout)
            except (TimeoutError, KafkaError, DeliveryFailed) as exc:
                log.warning("final checkpoint failed; a restart replays what it did not cover",
                            extra={"error": repr(exc)})
        for client in (shell.consumer, shell.reports_log, shell.producer):
            await stop_client(client)
        self.health.set_connected(False)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        assert self.shell is not None
        watch = asyncio.create_task(self.health.watch(self.shell.consumer, stop))
        failed = False
        try:
            await self.shell.loop.run(stop)
        except BaseException:
            # Whatever was counted or sent halfway must not be stored or
            # committed: the restart replays it (see io/checkpoint.py).
            failed = True
            self.shell.checkpointer.fail()
            raise
        finally:
            watch.cancel()
            await self.stop(checkpoint=not failed)


async def _start_or_stop(client, settings: Settings, started: AIOKafkaProducer) -> None:
    """Start `client`; if the broker cannot be reached, stop the producer already started."""
    try:
        await start_client(client, settings)
    except BrokerUnreachable:
        await started.stop()
        raise
