"""What /healthz, /readyz and the lag gauge say: broker reachable, partitions assigned, lag.

`BrokerHealth` asks the broker for metadata now and then (`watch_broker`: a
consumer that cannot fetch says nothing by itself) and logs each change of
the answer once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_detector.io.checkpoint import Position
from stream_detector.io.clients import watch_broker
from stream_detector.io.metrics import DetectorMetrics

log = logging.getLogger("stream_detector")

class BrokerHealth:
    def __init__(self, metrics: DetectorMetrics):
        self.metrics = metrics
        self.connected = False
        self.assigned = False

    def healthy(self) -> bool:
        return self.connected

    def ready(self) -> bool:
        return self.connected and self.assigned

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.metrics.kafka_connected.set(1 if connected else 0)

    async def watch(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Probe the broker until `stop`; the answer is what /healthz reports."""
        first = True

        def heard(connected: bool) -> None:
            nonlocal first
            # `watch_broker` warns of each change after its first answer; that
            # first answer is a change too when the broker, reachable at the
            # start, no longer answers.
            if first and connected != self.connected:
                log.warning("broker %s", "reachable again" if connected else "unreachable")
            first = False
            self.set_connected(connected)

        await watch_broker(consumer, stop, heard)

    def update_lag(
        self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, Position]
    ) -> None:
        """Messages not yet counted per assigned partition, from the fetch's high watermark."""
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            position = positions.get(tp)
            lag = end - position.offset if position is not None else end
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))

    def forget(self, tp: TopicPartition) -> None:
        with contextlib.suppress(KeyError):
            self.metrics.lag.remove(tp.topic, str(tp.partition))
