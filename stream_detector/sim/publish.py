"""Where simulated reports go: a JSON-lines file, or a Kafka topic paced in event time."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream_detector.core.times import readable_minute

PROGRESS_EVERY = 100_000
# Delivery results are checked this often, which also bounds the memory they hold.
CONFIRM_EVERY = 20_000
# When paced, events this far ahead (in wall seconds) are sent without looking
# at the clock again, so pacing costs nothing per message.
PACING_TICK_S = 0.02


def write_jsonl(
    reports: Iterable[dict],
    path: str | Path,
    progress: IO[str] | None = None,
    every: int = PROGRESS_EVERY,
) -> int:
    """Write one report per line; return how many. Progress goes to `progress` as one line."""
    n = 0
    try:
        with Path(path).open("wb") as out:
            write, dumps, newline = out.write, orjson.dumps, orjson.OPT_APPEND_NEWLINE
            for report in reports:
                write(dumps(report, option=newline))
                n += 1
                if progress is not None and n % every == 0:
                    _show(progress, n, report["ts"])
    except OSError as exc:
        raise ValueError(f"cannot write the reports file {path}: {exc.strerror}") from None
    if progress is not None:
        progress.write(f"\r{n:,} reports written to {path}\n")
        progress.flush()
    return n


def _show(progress: IO[str], n: int, ts_ms: int) -> None:
    progress.write(f"\r{n:,} reports, simulated time {readable_minute(ts_ms)}")
    progress.flush()


async def publish_to_kafka(
    reports: Iterable[dict],
    bootstrap_servers: str,
    topic: str,
    speed: float,
    *,
    producer_config: dict[str, Any] | None = None,
    stop: asyncio.Event | None = None,
    progress: IO[str] | None = None,
) -> int:
    """Produce each report keyed by service; return how many were sent.

    `speed` is simulated seconds per wall second, counted from the first
    report's timestamp; 0 or infinity sends as fast as the broker takes them.
    Setting `stop` ends the run early, after what was sent is flushed.
    `producer_config` (security options, say) is passed to the producer.
    """
    if speed < 0 or math.isnan(speed):
        raise ValueError(f"speed must be 0 (as fast as possible) or more, not {speed}")
    from stream_detector.io.clients import BrokerUnreachable

    config: dict[str, Any] = {
        # The embedded test broker does not support the idempotent producer.
        "enable_idempotence": False,
        "acks": 1,
        "linger_ms": 5,
        "compression_type": None,
        **(producer_config or {}),
        "bootstrap_servers": bootstrap_servers,
    }
    producer = AIOKafkaProducer(**config)
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise BrokerUnreachable(
            f"cannot reach the Kafka broker at bootstrap_servers={bootstrap_servers} "
            f"({type(exc).__name__}); check the setting and that the broker is running"
        ) from None

    paced = 0 < speed < math.inf
    loop = asyncio.get_running_loop()
    dumps = orjson.dumps
    sent = 0
    unconfirmed: list[asyncio.Future] = []
    first_ts: int | None = None
    wall_start = 0.0
    send_freely_until = -math.inf  # event time that may go out without checking the clock
    try:
        for report in reports:
            ts = report["ts"]
            if first_ts is None:
                first_ts, wall_start = ts, loop.time()
            if ts > send_freely_until:
                if stop is not None and stop.is_set():
                    break
                if paced:
                    due_s = (ts - first_ts) / 1000 / speed
                    ahead_s = due_s - (loop.time() - wall_start)
                    if ahead_s > 0 and await _pause(ahead_s, stop):
                        break
                    send_freely_until = ts + PACING_TICK_S * speed * 1000
            unconfirmed.append(
                await producer.send(topic, dumps(report), key=report["service"].encode())
            )
            sent += 1
            if sent % CONFIRM_EVERY == 0:
                await asyncio.gather(*unconfirmed)
                unconfirmed.clear()
                if progress is not None:
                    _show(progress, sent, ts)
                if stop is not None and stop.is_set():
                    break
        await producer.flush()
        await asyncio.gather(*unconfirmed)
    finally:
        await producer.stop()
    if progress is not None:
        progress.write(f"\r{sent:,} reports sent to topic {topic}\n")
        progress.flush()
    return sent


async def _pause(seconds: float, stop: asyncio.Event | None) -> bool:
    """Sleep, waking early if `stop` is set; return whether it was."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
