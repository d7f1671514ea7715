"""Offline driver of the detector core over a file of report events.

`run` and `backtest` share `PartitionDetector`, so one input gives the same
incidents offline and online; here time is event time alone (no wall clock),
and every line is handled in file order as a partition would deliver it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from stream_detector.core.detector import INVALID, ClosedBucket, DetectorConfig, PartitionDetector
from stream_detector.core.events import InvalidReport

PROGRESS_EVERY = 200_000


def replay_events(
    lines: Iterator[bytes],
    config: DetectorConfig,
    progress: IO[str] | None = None,
) -> Iterator[ClosedBucket]:
    """Feed report lines to one detector and yield each closed bucket in order."""
    detector = PartitionDetector(config)
    outcomes: Counter[str] = Counter()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            outcomes[detector.add(line)] += 1
        except InvalidReport:
            outcomes[INVALID] += 1
        yield from detector.advance()
        if progress is not None and n % PROGRESS_EVERY == 0:
            progress.write(f"\r{n:,} lines")
            progress.flush()
    yield from detector.flush()
    if progress is not None:
        summary = ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items()))
        progress.write(f"\rreports: {summary}\n")


def backtest_events(
    events_path: str | Path,
    output_path: str | Path,
    config: DetectorConfig,
    progress: IO[str] | None = sys.stderr,
) -> list[dict]:
    """Write the alert messages `run` would publish for the events file; return them."""
    events_path = Path(events_path)
    try:
        source = events_path.open("rb")
    except OSError as exc:
        raise ValueError(f"cannot read events file {events_path}: {exc.strerror}") from None
    alerts: list[dict] = []
    with source, Path(output_path).open("wb") as out:
        for bucket in replay_events(iter(source), config, progress):
            for alert in bucket.alerts:
                out.write(orjson.dumps(alert) + b"\n")
                alerts.append(alert)
    return alerts
