"""Kafka clients built from the settings, and what a failed connection means.

Every aiokafka client of the service (reports consumer, producer, snapshot
store, admin) gets its connection options here, so security settings apply
to all of them alike, and a failure to connect ends in one sentence naming
the setting to look at.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream_detector.config import Settings

# How the reports consumer fetches. Large fetches, for throughput. A short
# long-poll because aiokafka keeps one fetch in flight per broker: when some
# partitions are at the end of their log and another still has a backlog, a
# fetch for the caught-up ones waits out the whole long-poll (500 ms by
# default) while the busy partition's data sits on the broker. Measured on
# bench/throughput.py, whose partitions fill unevenly: 9 stalls of 200 ms in
# one run of a million reports. Idle, it costs 10 empty fetches a second.
CONSUMER_FETCH = {"max_partition_fetch_bytes": 4 * 1024 * 1024, "fetch_max_wait_ms": 100}


class BrokerUnreachable(RuntimeError):
    """The broker named by `bootstrap_servers` did not answer."""


def build_producer(settings: Settings) -> AIOKafkaProducer:
    # The idempotent producer is not required: alerts carry a stable alert_id,
    # and not every Kafka-compatible broker supports it.
    return AIOKafkaProducer(
        **settings.kafka_client_options(),
        enable_idempotence=False,
        acks="all",
        linger_ms=5,
        request_timeout_ms=30_000,
    )


def build_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The reports consumer: in the group, committing by hand after each checkpoint."""
    return AIOKafkaConsumer(
        **settings.kafka_client_options(),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **CONSUMER_FETCH,
    )


async def start_client(client: AIOKafkaConsumer | AIOKafkaProducer, settings: Settings) -> None:
    try:
        await client.start()
    except (KafkaConnectionError, KafkaError, OSError) as exc:
        raise BrokerUnreachable(
            f"cannot reach the Kafka broker at bootstrap_servers={settings.bootstrap_servers} "
            f"({type(exc).__name__}); check the bootstrap_servers setting and that the broker "
            "is running"
        ) from None
