"""Producing, consuming and scraping for the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.app import serve
from stream_detector.backtest import replay_events
from stream_detector.config import Settings, load_settings
from tests.conftest import wait_for

T0 = 1_767_571_200_000
MINUTE = 60_000


def traffic(
    rng: random.Random,
    minutes: int,
    outage: range,
    services: dict[str, int] | None = None,
    outaged: tuple[str, ...] = ("x",),
) -> list[dict]:
    """Steady per-minute reports for `services` (name: normal rate), with an
    outage of 400 reports a minute on each of `outaged` during `outage`."""
    services = services or {"x": 20, "y": 5}
    reports = []
    for minute in range(minutes):
        for service, normal in services.items():
            down = service in outaged and minute in outage
            n = 400 if down else rng.randint(max(normal - 3, 0), normal + 3)
            for _ in range(n):
                problem = "login" if down else rng.choice(["app", "website"])
                reports.append({
                    "service": service,
                    "ts": T0 + minute * MINUTE + rng.randrange(MINUTE),
                    "region": rng.choice(["US", "US", "GB", "DE"]),
                    "problem": problem,
                    "reporter": f"{rng.getrandbits(48):x}",
                })
    reports.sort(key=lambda r: r["ts"])
    return reports


def encode(reports: list[dict]) -> tuple[list[bytes], list[bytes]]:
    """Message values and keys (the service) for `produce`."""
    import orjson

    return [orjson.dumps(r) for r in reports], [r["service"].encode() for r in reports]


async def produce(
    bootstrap: str, topic: str, values: list[bytes], keys: list[bytes], **options
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                linger_ms=5, **options)
    await producer.start()
    try:
        for key, value in zip(keys, values, strict=True):
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, until, timeout: float = 60.0) -> list:
    """Consume `topic` from the start until `until(messages)` holds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    messages: list = []
    try:
        async def done() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                messages.extend(msgs)
            return until(messages)

        await wait_for(done, timeout)
    finally:
        await consumer.stop()
    return messages


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def scrape(port: int) -> dict:
    """Parse /metrics with prometheus-client's own parser (off the loop the server runs on)."""
    _, raw = await asyncio.to_thread(http_get, port, "/metrics")
    body = raw.decode()
    values = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values




def detector_settings(bootstrap: str, unique: str, **overrides) -> Settings:
    """Settings with this test's own group and topics, metrics on a free loopback port."""
    flags = {
        "bootstrap_servers": bootstrap,
        "group_id": f"{unique}-g",
        "reports_topic": f"{unique}-reports",
        "alerts_topic": f"{unique}-alerts",
        "dlq_topic": f"{unique}-dlq",
        "state_topic": f"{unique}-state",
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
    }
    flags.update(overrides)
    return load_settings(flags, environ={})


async def committed_total(settings: Settings) -> int:
    """The group's committed offsets on the reports topic, summed over its partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                group_id=settings.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.reports_topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.reports_topic) or set()
        total = 0
        for p in partitions:
            total += await consumer.committed(TopicPartition(settings.reports_topic, p)) or 0
        return total
    finally:
        await consumer.stop()


def replay_settings(bootstrap: str, unique: str, **overrides) -> Settings:
    """Settings for a run compared bucket for bucket with an offline replay.

    Wall-clock closing would make the end of a run depend on timing, so
    buckets close on event time only; checkpoints come often.
    """
    defaults = {"model": "ewma", "idle_timeout": "1h", "checkpoint_interval": "300ms"}
    return detector_settings(bootstrap, unique, **{**defaults, **overrides})


def offline_alerts(reports: list[dict], settings: Settings) -> list[dict]:
    """The alerts `backtest --events` makes of `reports` with these settings, as a
    reader of the alerts topic decodes them."""
    values, _ = encode(reports)
    return [orjson.loads(a.to_json())
            for b in replay_events(iter(values), settings.detector_config()) for a in b.alerts]


@contextlib.asynccontextmanager
async def running_detector(settings: Settings):
    """The detector served in this process; yields its metrics port, stops it after."""
    stop = asyncio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop, on_listening=listening.set_result))
    try:
        yield await asyncio.wait_for(listening, 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def start_detector(settings: Settings, log) -> subprocess.Popen:
    """`stream-detector run` as its own process, configured through the environment.

    Buckets close on event time only (idle timeout of an hour), so a run can be
    compared bucket for bucket with an offline replay.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_DETECTOR_")}
    for name in ("group_id", "reports_topic", "alerts_topic", "dlq_topic", "state_topic",
                 "model"):
        env[f"STREAM_DETECTOR_{name.upper()}"] = getattr(settings, name)
    env["STREAM_DETECTOR_IDLE_TIMEOUT"] = "1h"
    env["STREAM_DETECTOR_CHECKPOINT_INTERVAL"] = "300ms"
    env["STREAM_DETECTOR_LOG_FORMAT"] = "json"
    return subprocess.Popen(
        [sys.executable, "-m", "stream_detector", "run", "--bootstrap-servers",
         settings.bootstrap_servers, "--metrics-port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create `topic` with `partitions` partitions (the broker would make one otherwise)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def board_settings(bootstrap: str, unique: str, **overrides) -> Settings:
    """Settings of a board of this test's own alerts and outages topics, on a free
    loopback port."""
    flags = {"bootstrap_servers": bootstrap, "alerts_topic": f"{unique}-alerts",
             "outages_topic": f"{unique}-outages", "board_port": 0, "board_host": "127.0.0.1",
             **overrides}
    return load_settings(flags, environ={})


@contextlib.asynccontextmanager
async def running_board(settings: Settings):
    """`stream-detector board` served in this process; yields its port once it has
    read what was on the topics (`/readyz`), stops it after."""
    from stream_detector.io.board import serve_board

    stop = asyncio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_board(settings, stop, on_listening=listening.set_result))
    try:
        port = await asyncio.wait_for(listening, 30)

        async def ready() -> bool:
            if task.done():
                task.result()  # raises what stopped it
            return (await asyncio.to_thread(http_get, port, "/readyz"))[0] == 200

        await wait_for(ready)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
