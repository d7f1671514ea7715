"""Report traffic generator: realistic services, injected outages, and where to send them.

>>> services, outages, reports = simulate(services=3, days=0.01, seed=7, outages=0)
>>> [s.name for s in services], outages, sorted(next(reports))
(['x', 'youtube', 'aws'], [], ['problem', 'region', 'reporter', 'service', 'ts'])
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from stream_detector.sim.publish import publish_to_kafka, write_jsonl
from stream_detector.sim.scenarios import (
    DAY_MS,
    SHAPES,
    Outage,
    plan_outages,
    plan_provider_outage,
    warmup_ms,
    write_labels,
)
from stream_detector.sim.traffic import ServiceProfile, generate_reports, make_services

__all__ = [
    "DEFAULT_START_MS",
    "SHAPES",
    "Outage",
    "ServiceProfile",
    "default_outage_count",
    "generate_reports",
    "make_services",
    "plan_outages",
    "publish_to_kafka",
    "simulate",
    "write_jsonl",
    "write_labels",
]

# Monday 2026-01-05 00:00 UTC: runs start on a week boundary so weekends fall on days 5-6.
DEFAULT_START_MS = 1_767_571_200_000
# At most this many outages per day after the warm-up, so short runs are not all outage.
OUTAGES_PER_DAY = 8


def default_outage_count(services: int, days: float) -> int:
    """About one outage per service, at least 20, fewer when the run is short.

    >>> default_outage_count(30, 21), default_outage_count(30, 4), default_outage_count(5, 1)
    (30, 8, 6)
    """
    room = max(len(SHAPES), int(OUTAGES_PER_DAY * (days - warmup_ms(days) / DAY_MS)))
    return min(max(20, services), room)


def simulate(
    services: int,
    days: float,
    seed: int,
    start_ms: int | None = None,
    outages: int | None = None,
    provider_dependants: int = 0,
) -> tuple[list[ServiceProfile], list[Outage], Iterator[dict]]:
    """Services, the outages injected into them, and the reports, made lazily in time order.

    The same arguments give the same reports, byte for byte.
    """
    if outages is not None and outages < 0:
        raise ValueError(f"the number of outages cannot be negative, got {outages}")
    start = DEFAULT_START_MS if start_ms is None else start_ms
    rng = random.Random(seed)
    profiles = make_services(services, rng)
    count = default_outage_count(services, days) if outages is None else outages
    planned = plan_outages(profiles, start, days, rng, count)
    if provider_dependants > 0:
        # One provider outage on top, with this many dependants. It draws from
        # its own generator, so the other outages of a seed stay where they were.
        planned = sorted(planned + plan_provider_outage(
            profiles, start, days, random.Random(seed + 1), provider_dependants, planned),
            key=lambda o: (o.start_ms, o.service))
    return profiles, planned, generate_reports(profiles, planned, start, days, rng)
