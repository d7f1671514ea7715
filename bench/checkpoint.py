"""What checkpointing costs: snapshot size and time, changelog save and restore, throughput.

1. For 10,000 and 100,000 series (one service each, default model, one
   bucket of reports so every series has a model): snapshot encode time and
   bytes, decode time, the time to save it to the Kafka changelog
   (`KafkaSnapshotStore` on an embedded broker) and to load it back and
   decode it (what a partition's restore costs).
2. Throughput of `DetectorService` over one pre-filled topic with checkpoints
   effectively off (interval 1 h) and every 1 s, alternating, fresh group and
   state topic per run; medians and their ratio.

    python bench/checkpoint.py [--reports 300000] [--services 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

import orjson
from aiokafka import AIOKafkaProducer
from kafka_bench import consume_all, fill_topic

from stream_detector.config import load_settings
from stream_detector.core import snapshot
from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.models import DEFAULT_MODEL
from stream_detector.embedded import EmbeddedBroker
from stream_detector.io.service import DetectorService
from stream_detector.io.state import KafkaSnapshotStore

T0 = 1_767_571_200_000
TOPIC = "bench-reports"
REGIONS = ["US", "GB", "DE", "FR", "IN"]


def detector_with(series: int) -> PartitionDetector:
    """A detector whose `series` services each have a model that has seen one bucket.

    Counts differ between services so their models do, and the snapshot does
    not compress better than a real one would.
    """
    d = PartitionDetector(DetectorConfig(model=DEFAULT_MODEL))
    rng = random.Random(series)
    for i in range(series):
        for _ in range(rng.randint(1, 6)):
            d.add(orjson.dumps({"service": f"svc-{i:06d}", "ts": T0 + rng.randrange(60_000)}))
    d.flush()
    assert len(d.bank) == series, len(d.bank)
    return d


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


async def snapshot_figures(bootstrap: str, series: int) -> dict:
    d = detector_with(series)
    config = d.config
    encode_s, data = timed(lambda: snapshot.encode(d, DEFAULT_MODEL))
    decode_s, _ = timed(lambda: snapshot.decode(data, config, 0))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                acks="all", linger_ms=5)
    await producer.start()
    store = KafkaSnapshotStore(producer, {"bootstrap_servers": bootstrap}, f"bench-state-{series}")
    await store.ensure_topic(1)
    saves, restores = [], []
    for offset in range(1, 4):
        started = time.perf_counter()
        await store.save(0, data, offset)
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        stored = await KafkaSnapshotStore(
            producer, {"bootstrap_servers": bootstrap}, store.topic
        ).load(0, offset)
        assert stored is not None and stored.data == data
        restored = snapshot.decode(stored.data, config, 0)
        restores.append(time.perf_counter() - started)
        assert len(restored.bank) == series
    await producer.stop()
    return {"series": series, "bytes": len(data), "encode_s": encode_s, "decode_s": decode_s,
            "save_s": statistics.median(saves), "restore_s": statistics.median(restores)}


def reports(n: int, services: int, rng: random.Random):
    names = [f"svc-{i:05d}" for i in range(services)]
    span_ms = 6 * 3_600_000
    for i in range(n):
        service = names[i % services] if i < services else rng.choice(names)
        yield service, orjson.dumps({
            "service": service, "ts": T0 + i * span_ms // n,
            "region": rng.choice(REGIONS), "reporter": f"{rng.getrandbits(40):x}",
        })


async def fill(bootstrap: str, n: int, services: int, partitions: int) -> None:
    await fill_topic(bootstrap, TOPIC, partitions, reports(n, services, random.Random(7)))


async def detector_run(bootstrap: str, n: int, group: str, interval: str) -> tuple[float, int]:
    """Events per second over the whole topic, and the snapshots stored on the way."""
    settings = load_settings({
        "bootstrap_servers": bootstrap, "group_id": group, "reports_topic": TOPIC,
        "alerts_topic": f"{group}-alerts", "dlq_topic": f"{group}-dlq",
        "state_topic": f"{group}-state", "checkpoint_interval": interval,
    }, environ={})
    service = DetectorService(settings)
    rate = await consume_all(service, n)
    # The store numbers each partition's snapshots; their sum is how many were written.
    return rate, sum(service.shell.store.slots.generation.values())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=300_000)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--series", type=int, nargs="*", default=[10_000, 100_000])
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        print(f"{'series':>8} {'snapshot':>10} {'encode':>9} {'decode':>9} {'save':>9} "
              f"{'restore':>9}")
        for series in args.series:
            f = await snapshot_figures(bootstrap, series)
            print(f"{f['series']:>8,} {f['bytes'] / 1e6:>8.2f}MB {f['encode_s'] * 1e3:>7.0f}ms "
                  f"{f['decode_s'] * 1e3:>7.0f}ms {f['save_s'] * 1e3:>7.0f}ms "
                  f"{f['restore_s'] * 1e3:>7.0f}ms", flush=True)

        await fill(bootstrap, args.reports, args.services, args.partitions)
        off, on, saves = [], [], []
        for round_ in range(args.rounds):
            rate, _ = await detector_run(bootstrap, args.reports, f"off-{round_}", "1h")
            off.append(rate)
            rate, n = await detector_run(bootstrap, args.reports, f"on-{round_}", "1s")
            on.append(rate)
            saves.append(n)
            print(f"round {round_ + 1}: checkpoint off {off[-1]:,.0f}/s  every 1s {on[-1]:,.0f}/s"
                  f" ({n} snapshots)", file=sys.stderr)
    a, b = statistics.median(off), statistics.median(on)
    print(f"\nthroughput over {args.reports:,} reports, {args.services:,} services, "
          f"{args.partitions} partitions, {args.rounds} rounds (medians):")
    print(f"checkpoint off (1h):  {a:>10,.0f} events/s")
    print(f"checkpoint every 1s:  {b:>10,.0f} events/s  "
          f"({statistics.median(saves):.0f} snapshots per run)")
    print(f"ratio on/off:         {b / a:>10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
