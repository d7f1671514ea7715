"""How long a new daily peak pages before the detector takes it for the normal.

One service with Poisson reports at a base rate, whose evening hour (18:00
UTC) carries `--peak` times the base rate every day from day 3 on. The
reports go through the same core as `run` (`PartitionDetector`, default model
and incident policy, regions off) and the script prints, per day, how many
incidents started that day.

    python bench/recurring_peak.py [--rate 5] [--peak 3] [--days 24]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import orjson

from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.incidents import Change

T0 = 1_767_571_200_000  # Monday 2026-01-05 00:00 UTC
MINUTE = 60_000
DAY_MINUTES = 24 * 60


def incidents_by_day(rate: float, peak: float, days: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    detector = PartitionDetector(DetectorConfig(regions=False))
    started: Counter[int] = Counter()
    for minute in range(days * DAY_MINUTES):
        evening = (minute % DAY_MINUTES) // 60 == 18 and minute >= 3 * DAY_MINUTES
        n = int(rng.poisson(rate * peak if evening else rate))
        ts = T0 + minute * MINUTE
        detector.add_many([orjson.dumps({"service": "s", "ts": ts + i}) for i in range(n)])
        for bucket in detector.advance():
            for alert in bucket.alerts:
                if alert.change is Change.OPENED:
                    started[(bucket.start_ms - T0) // (DAY_MINUTES * MINUTE)] += 1
    return [started[day] for day in range(days)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5.0, help="base reports per minute")
    parser.add_argument("--peak", type=float, default=3.0, help="the evening hour's multiple")
    parser.add_argument("--days", type=int, default=24)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    counts = incidents_by_day(args.rate, args.peak, args.days, args.seed)
    print(f"rate {args.rate:g}/min, evening hour x{args.peak:g} from day 3, seed {args.seed}")
    print("incidents by day: " + " ".join(str(n) for n in counts))
    paging = [day for day, n in enumerate(counts) if n]
    print(f"days with an incident: {paging}")


if __name__ == "__main__":
    main()
