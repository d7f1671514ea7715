"""Memory per series and time per scored bucket of the per-series models.

For 10,000 and 100,000 series, the EWMA baseline and the seasonal count model
are built and run in the same process, alternating, several times; the table
shows medians and the seasonal/baseline ratio.

    .venv/bin/python bench/model_cost.py [--repeats 3]

- memory: Python heap allocated per series by building it and learning one
  bucket (tracemalloc). River's EWMean/EWVar keep their numbers in Rust,
  which tracemalloc does not see, so the baseline's figure is a lower bound.
- pickled: bytes of one series' model pickled alone (shared settings included).
- time: one `score_one` plus one `learn_one` per series and bucket, over
  three buckets of Poisson-like counts after two warm buckets, 60 s buckets.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_detector.core.models import MODELS  # noqa: E402

T0 = 1_767_571_200.0  # Monday 2026-01-05 00:00 UTC
BUCKET = 60.0
MODEL_NAMES = ("ewma", "seasonal-poisson")


def memory_per_series(name: str, n: int) -> float:
    factory = MODELS[name]
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    models = [factory(BUCKET) for _ in range(n)]
    for m in models:
        m.learn_one(T0, 3.0)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del models
    return (after - before) / n


def microseconds_per_bucket(name: str, n: int, seed: int) -> float:
    factory = MODELS[name]
    rng = random.Random(seed)
    models = [factory(BUCKET) for _ in range(n)]
    counts = [rng.randint(0, 12) for _ in range(n)]
    for b in range(2):
        t = T0 + b * BUCKET
        for m, x in zip(models, counts, strict=True):
            m.score_one(t, x)
            m.learn_one(t, x)
    started = time.perf_counter()
    for b in range(2, 5):
        t = T0 + b * BUCKET
        for m, x in zip(models, counts, strict=True):
            m.score_one(t, x)
            m.learn_one(t, x)
    return (time.perf_counter() - started) / (3 * n) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--series", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args(argv)
    pickled = {}
    for name in MODEL_NAMES:
        model = MODELS[name](BUCKET)
        model.learn_one(T0, 3.0)
        pickled[name] = len(pickle.dumps(model))
    print(f"{'series':>8} {'model':<18}{'memory B':>10}{'pickled B':>11}{'us/bucket':>11}")
    for n in args.series:
        memory: dict[str, list[float]] = {name: [] for name in MODEL_NAMES}
        timing: dict[str, list[float]] = {name: [] for name in MODEL_NAMES}
        for r in range(args.repeats):
            # Alternate the order so drift on a shared machine hits both alike.
            order = MODEL_NAMES if r % 2 == 0 else MODEL_NAMES[::-1]
            for name in order:
                memory[name].append(memory_per_series(name, n))
                gc.collect()
                timing[name].append(microseconds_per_bucket(name, n, seed=r))
                gc.collect()
        for name in MODEL_NAMES:
            print(f"{n:>8,} {name:<18}{statistics.median(memory[name]):>10.0f}"
                  f"{pickled[name]:>11}{statistics.median(timing[name]):>11.2f}")
        ratio = statistics.median(timing["seasonal-poisson"]) / statistics.median(timing["ewma"])
        print(f"{'':>8} seasonal/baseline time ratio {ratio:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
