"""The clocks the shell reads, in one object, so a test can move time by hand.

The core takes time as an argument; only the shell reads clocks, and every
part of it reads them from here: `wall_ms` is what drives idle buckets shut
and dates restored state, `monotonic` times budgets and intervals (delivery,
checkpoints), `perf` measures scoring, `wall_seconds` dates alert latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Clocks:
    wall_ms: Callable[[], int] = wall_ms
    wall_seconds: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    perf: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
