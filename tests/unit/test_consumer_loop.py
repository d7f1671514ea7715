"""The consume loop's counting and closing, driven by hand: no broker, time moved by the test."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import orjson

from stream_detector.core.detector import DetectorConfig
from stream_detector.io.clocks import Clocks
from stream_detector.io.consumer_loop import ConsumerLoop
from stream_detector.io.metrics import DetectorMetrics
from stream_detector.io.partitions import PartitionState
from stream_detector.io.publisher import Publisher
from tests.unit.test_publisher import Producer

T0 = 1_767_571_200_000  # 2026-01-05T00:00Z, a bucket's start


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    value: bytes
    offset: int
    timestamp: int
    key: bytes | None = None
    topic: str = "reports"
    partition: int = 0


class WallClock:
    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_a_quiet_partition_closes_its_last_bucket_when_the_wall_clock_passes_the_idle_timeout():
    wall = WallClock(T0 + 50_000)
    clocks = Clocks(wall_ms=wall, wall_seconds=lambda: wall.ms / 1000)
    metrics = DetectorMetrics()
    state = PartitionState(DetectorConfig(lateness_ms=10_000, idle_timeout_ms=30_000))
    publisher = Publisher(Producer(), metrics, 5.0, "alerts", "dlq", clock=lambda: 0.0,
                          wall_clock=clocks.wall_seconds)
    # The loop's broker-facing parts are not reached by counting and closing.
    loop = ConsumerLoop(None, state, None, publisher, None, None, metrics, clocks)
    records = [Record(orjson.dumps({"service": "x", "ts": T0 + 1000 * i}), i, T0)
               for i in range(51)]

    def closed() -> float:
        return metrics.buckets_closed._value.get()

    async def run() -> list[float]:
        await loop.count({TopicPartition("reports", 0): records})
        seen = []
        for wall_ms in (T0 + 50_000, T0 + 80_000, T0 + 80_001):
            wall.ms = wall_ms
            await loop.close_buckets()
            seen.append(closed())
        return seen

    # The watermark stands at the last report minus the lateness (40 s into the
    # bucket) until the partition has been quiet for longer than 30 s of wall time.
    assert asyncio.run(run()) == [0, 0, 1]
    assert state.messages_seen == 51 and state.positions[TopicPartition("reports", 0)].offset == 51
