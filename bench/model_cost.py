"""Memory per series and time per scored bucket of the models, as the detector holds them.

For 10,000 and 100,000 series, the EWMA baseline and the seasonal count model
are built and run in the same process, alternating, several times; the table
shows medians and the seasonal/baseline ratio. Each model is used through
its bank (`model_bank`), as in the detector: the seasonal model's array
bank, and the baseline's per-series objects stepped one by one.

    .venv/bin/python bench/model_cost.py [--repeats 3]

- memory: heap allocated per series by building the bank and learning one
  bucket (tracemalloc, which sees NumPy's arrays too); the array bank
  grows by doubling, so up to half of its rows may be spare.
- pickled: bytes of one series' model pickled alone (shared settings included).
- time: one `score` plus one `learn` of every series per bucket, over
  three buckets of Poisson-like counts after two warm buckets, 60 s buckets.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_detector.core.models import model_bank, model_factory  # noqa: E402

T0 = 1_767_571_200.0  # Monday 2026-01-05 00:00 UTC
BUCKET = 60.0
MODEL_NAMES = ("ewma", "seasonal-poisson")


def memory_per_series(name: str, n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    bank = model_bank(name, BUCKET)
    rows = np.array([bank.add() for _ in range(n)])
    bank.score(rows, T0, np.full(n, 3.0))
    bank.learn()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del bank
    return (after - before) / n


def microseconds_per_bucket(name: str, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    bank = model_bank(name, BUCKET)
    rows = np.array([bank.add() for _ in range(n)])
    counts = rng.integers(0, 13, n).astype(float)
    for b in range(2):
        bank.score(rows, T0 + b * BUCKET, counts)
        bank.learn()
    started = time.perf_counter()
    for b in range(2, 5):
        bank.score(rows, T0 + b * BUCKET, counts)
        bank.learn()
    return (time.perf_counter() - started) / (3 * n) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--series", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES),
                        help="models by name, e.g. metric river:GaussianScorer")
    args = parser.parse_args(argv)
    names = tuple(args.models)
    pickled = {}
    for name in names:
        model = model_factory(name)(BUCKET)
        model.learn_one(T0, 3.0)
        pickled[name] = len(pickle.dumps(model))
    print(f"{'series':>8} {'model':<18}{'memory B':>10}{'pickled B':>11}{'us/bucket':>11}")
    for n in args.series:
        memory: dict[str, list[float]] = {name: [] for name in names}
        timing: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):
            # Alternate the order so drift on a shared machine hits both alike.
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                memory[name].append(memory_per_series(name, n))
                gc.collect()
                timing[name].append(microseconds_per_bucket(name, n, seed=r))
                gc.collect()
        for name in names:
            print(f"{n:>8,} {name:<18}{statistics.median(memory[name]):>10.0f}"
                  f"{pickled[name]:>11}{statistics.median(timing[name]):>11.2f}")
        for name in names:
            if name != "ewma" and "ewma" in names:
                ratio = statistics.median(timing[name]) / statistics.median(timing["ewma"])
                print(f"{'':>8} {name}/baseline time ratio {ratio:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
