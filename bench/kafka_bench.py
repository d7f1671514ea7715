"""Filling a topic on the embedded broker and consuming it with the detector, for benchmarks."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_detector.io.service import DetectorService


async def fill_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    messages: Iterable[tuple[str, bytes]],
    total: int | None = None,
) -> None:
    """Create `topic` and produce (service, value) messages keyed by service."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, partitions, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for i, (service, value) in enumerate(messages):
            await producer.send(topic, value, key=service.encode())
            if total and i % 100_000 == 0:
                print(f"\rfilling {i:,}/{total:,}", end="", file=sys.stderr)
        await producer.flush()
    finally:
        await producer.stop()


async def consume_all(service: DetectorService, n: int) -> float:
    """Run `service` until it has read `n` messages, then stop it.

    Returns events per second, timed from its first message (joining the
    group and restoring state are not part of throughput).
    """
    stop = asyncio.Event()

    async def watch() -> float:
        while not service.state.messages_seen:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        while service.state.messages_seen < n:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        stop.set()
        return elapsed

    watcher = asyncio.create_task(watch())
    await service.run(stop)
    return n / await watcher
