"""Filling a topic on the embedded broker for the benchmarks that consume one."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


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
