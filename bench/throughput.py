"""Throughput of the detector against a bare aiokafka consume-and-decode loop.

Fills one topic on the embedded broker with N reports over S services, then
consumes it, alternating, with (a) a bare aiokafka consumer, with the
detector's fetch settings, that only runs `orjson.loads` on every message
and (b) the detector's own consume loop
(decode, validate, reporter rule, buckets, scoring, alerts, commits). Each
run uses a fresh consumer group, so both read the same messages from the
broker. Prints the median events per second of each and their ratio.

    python bench/throughput.py [--reports 1000000] [--services 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer
from kafka_bench import consume_all, fill_topic

from stream_detector.app import tune_gc
from stream_detector.config import load_settings
from stream_detector.embedded import EmbeddedBroker
from stream_detector.io.clients import CONSUMER_FETCH
from stream_detector.io.service import DetectorService

T0 = 1_767_571_200_000
TOPIC = "bench-reports"
REGIONS = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"]
PROBLEMS = ["login", "app", "website", "server connection", "payments"]


def reports(n: int, services: int, rng: random.Random, hours: float = 6.0):
    """Reports over `services` services with Zipf-like volumes, a few per millisecond."""
    names = [f"svc-{i:04d}" for i in range(services)]
    weights = [1 / (i + 1) for i in range(services)]
    # Scoring costs per series and bucket, not per report: the event-time span
    # sets how many reports share each bucket's scoring.
    span_ms = int(hours * 3_600_000)
    chosen = rng.choices(names, weights, k=n)
    for i, service in enumerate(chosen):
        yield service, orjson.dumps({
            "service": service,
            "ts": T0 + i * span_ms // n,
            "region": rng.choice(REGIONS),
            "problem": rng.choice(PROBLEMS),
            "reporter": f"{rng.getrandbits(40):x}",
        })


async def fill(bootstrap: str, n: int, services: int, partitions: int, hours: float) -> None:
    started = time.perf_counter()
    messages = reports(n, services, random.Random(42), hours)
    await fill_topic(bootstrap, TOPIC, partitions, messages, n)
    print(f"\rfilled {n:,} reports in {time.perf_counter() - started:.1f}s", file=sys.stderr)


async def bare_loop(bootstrap: str, n: int, group: str) -> float:
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                **CONSUMER_FETCH)
    await consumer.start()
    seen = 0
    started = None
    loads = orjson.loads
    while seen < n:
        batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
        if started is None and batch:
            started = time.perf_counter()
        for messages in batch.values():
            for msg in messages:
                loads(msg.value)
            seen += len(messages) if messages else 0
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return n / elapsed


async def detector_loop(bootstrap: str, n: int, group: str) -> float:
    settings = load_settings({"bootstrap_servers": bootstrap, "group_id": group,
                              "reports_topic": TOPIC, "alerts_topic": f"{group}-alerts",
                              "dlq_topic": f"{group}-dlq"}, environ={})
    return await consume_all(DetectorService(settings), n)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--services", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hours", type=float, default=6.0, help="event-time span of the reports")
    args = parser.parse_args()
    tune_gc()  # as `stream-detector run` does; the bare loop runs under it too
    with EmbeddedBroker() as broker:
        await fill(broker.bootstrap_servers, args.reports, args.services, args.partitions,
                   args.hours)
        bare, detector = [], []
        for round_ in range(args.rounds):
            bare.append(await bare_loop(broker.bootstrap_servers, args.reports, f"bare-{round_}"))
            detector.append(
                await detector_loop(broker.bootstrap_servers, args.reports, f"det-{round_}")
            )
            print(f"round {round_ + 1}: bare {bare[-1]:,.0f}/s  detector {detector[-1]:,.0f}/s",
                  file=sys.stderr)
    b, d = statistics.median(bare), statistics.median(detector)
    print(f"reports={args.reports} services={args.services} partitions={args.partitions} "
          f"rounds={args.rounds} hours={args.hours:g}")
    print(f"bare aiokafka + orjson: median {b:,.0f} events/s")
    print(f"stream_detector:        median {d:,.0f} events/s")
    print(f"ratio detector/bare:    {d / b:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
