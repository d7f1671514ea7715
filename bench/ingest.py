"""Cost per report of the ingest path, in-process, against `orjson.loads` alone.

The same reports as `bench/throughput.py` (N reports over 2,000 services,
6 hours of event time), held in memory, go in batches of 10,000 through
(a) `orjson.loads` alone, (b) `PartitionDetector.add_many` (decode,
validation, lateness, reporter rule, counting) and (c) `PartitionDetector.add`
one message at a time. Scoring (`advance`) runs after every batch but is not
timed. Rounds alternate the three; the medians are printed in µs per report.

    python bench/ingest.py [--reports 1000000] [--rounds 3] [--model ewma]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import T0, reports  # noqa: E402

from stream_detector.core.detector import DetectorConfig, PartitionDetector  # noqa: E402
from stream_detector.core.models import DEFAULT_MODEL  # noqa: E402

BATCH = 10_000
HOURS = 6.0


def loads_only(values: list[bytes]) -> float:
    loads = orjson.loads
    elapsed = 0.0
    for i in range(0, len(values), BATCH):
        batch = values[i:i + BATCH]
        started = time.perf_counter()
        for raw in batch:
            loads(raw)
        elapsed += time.perf_counter() - started
    return elapsed


def detector(values: list[bytes], model: str, one_by_one: bool) -> float:
    d = PartitionDetector(DetectorConfig(model=model))
    # A wall clock at the end of the reports' span, so the future check runs.
    wall_ms = T0 + int(HOURS * 3_600_000)
    elapsed = 0.0
    for i in range(0, len(values), BATCH):
        batch = values[i:i + BATCH]
        started = time.perf_counter()
        if one_by_one:
            add = d.add
            for raw in batch:
                add(raw, wall_ms)
        else:
            d.add_many(batch, wall_ms)
        elapsed += time.perf_counter() - started
        d.advance(wall_ms)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    values = [raw for _, raw in reports(args.reports, 2_000, random.Random(42), HOURS)]
    runs: dict[str, list[float]] = {"orjson.loads": [], "add_many": [], "add": []}
    for round_ in range(args.rounds):
        runs["orjson.loads"].append(loads_only(values))
        runs["add_many"].append(detector(values, args.model, one_by_one=False))
        runs["add"].append(detector(values, args.model, one_by_one=True))
        print(f"round {round_ + 1}: " + "  ".join(
            f"{name} {times[-1] / args.reports * 1e6:.2f}" for name, times in runs.items()
        ), file=sys.stderr)
    print(f"reports={args.reports} rounds={args.rounds} model={args.model}; "
          "median µs per report:")
    for name, times in runs.items():
        print(f"  {name:13s} {statistics.median(times) / args.reports * 1e6:.2f}")


if __name__ == "__main__":
    main()
