"""Everything the detector sends, held until the broker confirms it.

A `Publisher` owns the outgoing records of the consume loop: alerts and dead
letters. An alert goes out as `Alert.to_json()`, keyed by its service; the
same alert is counted in the metrics, logged once when its incident opens or
resolves (never per update), and handed to the alert hook (Alertmanager).

Sending never raises into the loop: a record the producer refuses or
fails to deliver stays pending, and `deliver` sends it again with a growing
backoff until the broker takes it or the delivery budget is spent. Only then
may a checkpoint commit the offsets behind those records (see
`io/checkpoint.py`); if the budget is spent, `deliver` raises
`DeliveryFailed`, the process stops without a checkpoint, and the restart
replays the reports that produced the records.

Dead letters carry the offending message as it came, unless it would not fit
in one produce request: a report topic accepts values larger than the
producer's `max_request_size` (1 MiB by default), and a dead letter that
cannot be sent would stop the partition at that offset for good. Such a value
(the core refuses any report above 16 KiB as `too_large`, but not every
dead letter is one of those) is stored truncated, with `error.reason =
too_large` and its original size in `original.size`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from stream_detector.core.events import TOO_LARGE
from stream_detector.core.incidents import Alert, Change

if TYPE_CHECKING:
    from stream_detector.core.events import InvalidReport
    from stream_detector.io.metrics import DetectorMetrics

log = logging.getLogger("stream_detector")

AlertHook = Callable[[Alert], Awaitable[None]]

# The largest dead-letter value stored whole. Half of aiokafka's default
# max_request_size and of Kafka's default message.max.bytes, so the value, its
# key, headers and the batch's framing fit under either with room to spare.
DLQ_MAX_VALUE = 512 * 1024
# Keys are user input too; a dead letter keeps the first bytes of a huge one.
DLQ_MAX_KEY = 1024
# A broker with a smaller message limit refuses even that: each refusal
# halves what is kept, down to this many bytes.
DLQ_MIN_VALUE = 1024
TOPIC_SETTING = {"alert": "alerts_topic", "dead_letter": "dlq_topic"}
# Backoff between attempts to deliver a failed record.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0


class DeliveryFailed(RuntimeError):
    """Records could not be delivered within the delivery budget."""


@dataclass
class Outgoing:
    """One record until the broker confirms it."""

    kind: str  # "alert" or "dead_letter": the label of the retry counter
    topic: str
    value: bytes | None  # None: a message without a value stays one
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    future: asyncio.Future | None = None
    error: BaseException | None = None
    original_size: int | None = None  # set once the value is truncated

    def failure(self) -> BaseException | None:
        """Why the last attempt failed, or None when it was delivered."""
        if self.error is not None:
            return self.error
        assert self.future is not None
        if not self.future.done():
            return KafkaTimeoutError("not confirmed by the broker yet")
        return self.future.exception()


def dead_letter_record(topic: str, msg, exc: InvalidReport) -> Outgoing:
    """The dead letter of message `msg`, its reason and where it came from in headers."""
    record = Outgoing(
        "dead_letter", topic, msg.value, msg.key[:DLQ_MAX_KEY] if msg.key is not None else None,
        [
            ("error.reason", exc.reason.encode()),
            ("error.detail", exc.detail.encode()[:512]),
            ("source.topic", msg.topic.encode()),
            ("source.partition", str(msg.partition).encode()),
            ("source.offset", str(msg.offset).encode()),
        ],
    )
    if msg.value is not None and len(msg.value) > DLQ_MAX_VALUE:
        truncate(record, DLQ_MAX_VALUE)
    return record


def truncate(record: Outgoing, size: int) -> None:
    """Keep the first `size` bytes of a dead letter's value and say so in its headers."""
    original = record.original_size or len(record.value)
    headers = dict(record.headers)
    if record.original_size is None and headers["error.reason"] != TOO_LARGE.encode():
        headers["error.detail"] = (headers["error.reason"] + b": " + headers["error.detail"])[:512]
        headers["error.reason"] = TOO_LARGE.encode()
    headers["original.size"] = str(original).encode()
    record.headers = list(headers.items())
    record.value = record.value[:size]
    record.original_size = original


class Publisher:
    """Sends the loop's alerts and dead letters and delivers them for sure, or says it cannot."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: DetectorMetrics,
        delivery_timeout: float,
        alerts_topic: str,
        dlq_topic: str,
        on_alert: AlertHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = asyncio.sleep,
    ):
        self.producer = producer
        self.metrics = metrics
        self.delivery_timeout = delivery_timeout
        self.alerts_topic = alerts_topic
        self.dlq_topic = dlq_topic
        self.on_alert = on_alert
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.outgoing: list[Outgoing] = []

    async def publish_alert(self, alert: Alert) -> None:
        """Send `alert`, count it, log an opening or a resolve, and hand it to the hook."""
        await self._send(Outgoing("alert", self.alerts_topic, alert.to_json(),
                                  alert.service.encode()))
        # From the end of the bucket that moved the incident to now.
        self.metrics.observe_alert(alert, self.wall_clock() - alert.bucket_end_ms / 1000)
        if alert.change is not Change.UPDATED:
            log.info("incident %s", alert.change.value, extra={
                "alert_id": alert.alert_id, "service": alert.service, "region": alert.region,
                "severity": alert.severity, "reports": alert.reports,
                "expected": alert.expected, "score": alert.score,
            })
        if self.on_alert is not None:
            await self.on_alert(alert)

    async def send_dead_letter(self, msg, exc: InvalidReport) -> None:
        record = dead_letter_record(self.dlq_topic, msg, exc)
        await self._send(record)
        self.metrics.dlq.labels(TOO_LARGE if record.original_size else exc.reason).inc()

    async def _send(self, record: Outgoing) -> None:
        self.outgoing.append(record)
        await self._attempt(record)

    async def _attempt(self, record: Outgoing) -> None:
        record.error = None
        try:
            record.future = await self.producer.send(
                record.topic, record.value, key=record.key, headers=record.headers or None
            )
        except KafkaError as exc:
            # Refused before it left (no metadata for the topic, too large):
            # kept for `deliver` to try again, never raised into the loop.
            record.future = None
            record.error = exc

    async def deliver(self) -> None:
        """Return once every record sent so far is on the broker; else raise `DeliveryFailed`.

        Records are forgotten only after they are confirmed, so a failure
        never loses one: it is sent again, with a backoff that doubles up to
        MAX_BACKOFF, until `delivery_timeout` seconds have passed.
        """
        deadline = self.clock() + self.delivery_timeout
        backoff = FIRST_BACKOFF
        while True:
            waiting = [r.future for r in self.outgoing if r.error is None]
            if waiting:
                # The budget bounds this wait too: the producer's own retries
                # (up to its request timeout) count against it.
                await asyncio.wait(waiting, timeout=max(deadline - self.clock(), 0.0))
            failed = [r for r in self.outgoing if r.failure() is not None]
            if not failed:
                self.outgoing.clear()
                return
            if self.clock() >= deadline:
                first = failed[0]
                raise DeliveryFailed(
                    f"setting {TOPIC_SETTING[first.kind]}: {len(failed)} record(s) to "
                    f"{first.topic} not delivered within delivery_timeout="
                    f"{self.delivery_timeout:g}s ({type(first.failure()).__name__}: "
                    f"{first.failure()}); stopping without a checkpoint, so a restart "
                    "sends them again"
                )
            await self.sleep(min(backoff, max(deadline - self.clock(), 0)))
            backoff = min(backoff * 2, MAX_BACKOFF)
            for record in failed:
                if record.future is not None and not record.future.done():
                    continue  # still in the producer's hands: sending it again would double it
                if isinstance(record.failure(), MessageSizeTooLargeError) and record.value:
                    if record.kind != "dead_letter" or len(record.value) <= DLQ_MIN_VALUE:
                        continue  # nothing smaller to send; the deadline ends it
                    truncate(record, max(len(record.value) // 2, DLQ_MIN_VALUE))
                self.metrics.send_retries.labels(record.kind).inc()
                await self._attempt(record)
