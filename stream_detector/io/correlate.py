"""The correlate stage on Kafka: alerts topic in, outages topic out.

One instance reads every partition of the alerts topic (grouping needs all
incidents in one place; the topic is small) and commits in its own consumer
group, `correlate_group_id`. What it commits is not "read up to here" but
"replay from here": per partition, the offset of the first alert of the oldest
incident the correlator still needs (open, in an open event, or within the
onset rate's lookback). A restart, after SIGKILL too, replays from there and
the pure core rebuilds the same state from the same alerts, so every event
is sent again with the same id and content, and none is lost. There is no
snapshot of the correlator: its state is a function of the alerts topic, so
there is no second format to version and no snapshot that could disagree
with the committed offsets, at the price of re-reading a day of alerts at
start, which for a topic of incidents is small.

Bad messages on the alerts topic (not JSON, not an alert) are logged and
counted, and skipped: they are not reports, and nothing downstream could use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from stream_detector.config import Settings
from stream_detector.core.correlate import FIRING, Correlator, Output
from stream_detector.core.times import iso_ms
from stream_detector.io.alertmanager import OutageEventAlert
from stream_detector.io.clients import build_producer, start_client

log = logging.getLogger("stream_detector")

# Per-event gauges beyond this many open events are left out.
MAX_EVENT_SERIES = 50
POLL_MS = 200


class CorrelateMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.open = Gauge("stream_detector_outage_events_open", "Outage events firing.",
                          registry=r)
        self.services = Gauge("stream_detector_outage_event_services",
                              "Services in each open outage event (at most 50 events).",
                              ["outage_event"], registry=r)
        self.events = Counter("stream_detector_outage_events",
                              "Outage events by status: counted when one forms (firing) and "
                              "when it resolves.", ["status"], registry=r)
        for status in ("firing", "resolved"):
            self.events.labels(status)
        self.bad_alerts = Counter("stream_detector_correlate_bad_alerts",
                                  "Messages on the alerts topic that are not alerts.",
                                  registry=r)
        self.open_ids: set[str] = set()
        self.shown: set[str] = set()

    def observe(self, events: list[dict]) -> None:
        for event in events:
            event_id = event["event_id"]
            if event["status"] == FIRING:
                if event_id not in self.open_ids:
                    self.open_ids.add(event_id)
                    self.events.labels(FIRING).inc()
                if event_id in self.shown or len(self.shown) < MAX_EVENT_SERIES:
                    self.shown.add(event_id)
                    self.services.labels(event_id).set(len({s[0] for s in event["services"]}))
                continue
            if event_id in self.open_ids:
                self.open_ids.discard(event_id)
                self.events.labels("resolved").inc()
            if event_id in self.shown:
                self.shown.discard(event_id)
                self.services.remove(event_id)
        self.open.set(len(self.open_ids))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CorrelateService:
    """Consumes alerts, runs the correlator, publishes outage events."""

    def __init__(self, settings: Settings, metrics: CorrelateMetrics | None = None,
                 forwarder=None, idle_seconds: float | None = None):
        self.settings = settings
        self.metrics = metrics or CorrelateMetrics()
        self.forwarder = forwarder
        self.correlator = Correlator(settings.correlation_policy())
        # With nothing arriving for this long, what is buffered is handled:
        # otherwise the last resolve of a quiet stream would wait for ever.
        self.idle_seconds = settings.idle_timeout if idle_seconds is None else idle_seconds
        self.first_offset: dict[str, tuple[int, int]] = {}
        self.buffered: dict[int, list[int]] = {}
        self.latest: dict[int, int] = {}
        self.replay_end: dict[int, int] = {}
        self.connected = False

    def healthy(self) -> bool:
        return self.connected

    def ready(self) -> bool:
        return self.connected

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(**s.kafka_client_options(), group_id=s.correlate_group_id,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        try:
            await start_client(consumer, s)
        except BaseException:
            await consumer.stop()  # closes what the failed start opened
            raise
        producer = build_producer(s)
        try:
            await start_client(producer, s)
        except BaseException:
            await producer.stop()
            await consumer.stop()
            raise
        partitions: list[TopicPartition] = []
        try:
            self.connected = True
            partitions = await self._assign(consumer, stop)
            await self._loop(consumer, producer, partitions, stop)
            await producer.flush()
            await self._commit(consumer, partitions)
        finally:
            self.connected = False
            await producer.stop()
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer, stop: asyncio.Event
                      ) -> list[TopicPartition]:
        """Every partition of the alerts topic, each at its replay offset. The
        detector creates the topic with its first alert, so wait for it to exist."""
        topic = self.settings.alerts_topic
        said = False
        while not stop.is_set():
            metadata = await consumer._client.fetch_all_metadata()
            found = metadata.partitions_for_topic(topic)
            if found:
                break
            if not said:
                log.info("waiting for the alerts topic to exist", extra={"topic": topic})
                said = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        else:
            return []
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
            self.replay_end[tp.partition] = ends[tp]
        log.info("correlate reading alerts", extra={"topic": topic,
                                                     "partitions": len(partitions)})
        return partitions

    async def _loop(self, consumer, producer, partitions, stop: asyncio.Event) -> None:
        last_arrival = time.monotonic()
        last_commit = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            out = Output()
            for tp, messages in batches.items():
                for msg in messages:
                    self._take(tp.partition, msg.offset, msg.value)
                last_arrival = time.monotonic()
            behind = await self._behind(consumer, partitions)
            watermark = self._watermark(behind)
            if watermark is not None:
                out.extend(self.correlator.advance(watermark))
            idle = time.monotonic() - last_arrival >= self.idle_seconds
            if not batches and idle and self.correlator.pending and not behind:
                out.extend(self.correlator.flush())
            await self._publish(producer, out)
            if time.monotonic() - last_commit >= self.settings.checkpoint_interval:
                await producer.flush()
                await self._commit(consumer, partitions)
                last_commit = time.monotonic()

    def _take(self, partition: int, offset: int, value: bytes | None) -> None:
        try:
            alert = orjson.loads(value or b"")
            self.correlator.buffer(alert)
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            self.metrics.bad_alerts.inc()
            log.warning("alerts topic message is not an alert; skipped",
                        extra={"partition": partition, "offset": offset, "error": str(exc)})
            return
        self.first_offset.setdefault(alert["alert_id"], (partition, offset))
        self.latest[partition] = max(self.latest.get(partition, 0), iso_ms(alert["bucket_start"]))

    async def _behind(self, consumer, partitions) -> list[int]:
        """Partitions still reading the backlog they had at start."""
        return [tp.partition for tp in partitions
                if await consumer.position(tp) < self.replay_end.get(tp.partition, 0)]

    def _watermark(self, behind: list[int]) -> int | None:
        """Event time every partition has reached: a partition still replaying its
        backlog holds it back; a caught-up one does not (it may stay silent for days)."""
        if behind:
            if any(p not in self.latest for p in behind):
                return None
            return min(self.latest[p] for p in behind)
        return max(self.latest.values()) if self.latest else None

    async def _publish(self, producer, out: Output) -> None:
        topic = self.settings.outages_topic
        for event in out.events:
            await producer.send(topic, orjson.dumps(event), key=event["event_id"].encode())
            log.info("outage event", extra={"event_id": event["event_id"],
                                            "status": event["status"],
                                            "services": len(event["services"]),
                                            "suspected_cause": event["suspected_cause"]})
        self.metrics.observe(out.events)
        if self.forwarder is not None:
            for member in out.tagged:
                self.forwarder.offer(member)
            for event in out.events:
                self.forwarder.offer(OutageEventAlert(event))

    async def _commit(self, consumer, partitions) -> None:
        """Commit, per partition, where a restart must replay from."""
        if not partitions:
            return
        # Alerts still buffered (not yet handled) are needed too.
        needed = self.correlator.needed_alert_ids() | {
            alert["alert_id"] for batch in self.correlator.pending.values() for alert in batch}
        floor: dict[int, int] = {}
        for alert_id in needed:
            where = self.first_offset.get(alert_id)
            if where is not None:
                floor[where[0]] = min(floor.get(where[0], where[1]), where[1])
        offsets = {}
        for tp in partitions:
            position = await consumer.position(tp)
            replay_from = min(floor.get(tp.partition, position), position)
            for alert_id in [a for a, (p, o) in self.first_offset.items()
                             if p == tp.partition and a not in needed and o < replay_from]:
                del self.first_offset[alert_id]
            offsets[tp] = OffsetAndMetadata(replay_from, "")
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # a refused commit only means a longer replay
            log.warning("correlate commit refused", extra={"error": str(exc)})
