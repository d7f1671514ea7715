"""Injected outages: what each shape looks like, where a run puts them, and their labels.

An `Outage` only describes extra reports on top of a service's normal traffic;
`traffic.generate_reports` turns it into reports. The labels file written here
is the ground truth that backtests score the detector against.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from stream_detector.core.times import iso_utc

if TYPE_CHECKING:
    from stream_detector.sim.traffic import ServiceProfile

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
# Models need a few days of normal traffic before they know what normal is.
WARMUP_MS = 3 * DAY_MS
SHORT_WARMUP_MS = 9 * DAY_MS // 4  # the default model's 2-day warm-up, and a margin
# Quiet time kept between two injected events on one service, so each incident
# can resolve and be scored against the outage that caused it.
GAP_MS = 3 * HOUR_MS
# Nothing is injected in the last hour, so every outage ends inside the run.
TAIL_MS = HOUR_MS

SHAPES = ("sudden", "gradual", "regional", "tiny", "flood", "x_outage")
# Mix for outages beyond the first of each shape. The X outage is a one-off.
SHAPE_WEIGHTS = {"sudden": 0.35, "gradual": 0.2, "regional": 0.2, "tiny": 0.15, "flood": 0.1}

# (duration, ramp) ranges in minutes.
_MINUTES = {
    # Everyone notices at once: at peak within a couple of minutes.
    "sudden": ((30, 120), (1, 2)),
    # A slow degradation that builds for about an hour before it peaks.
    "gradual": ((90, 180), (45, 75)),
    "regional": ((45, 120), (2, 5)),
    "tiny": ((18, 25), (2, 4)),
    # A script or an angry user: full speed from the first report.
    "flood": ((15, 45), (0, 0)),
    "x_outage": ((60, 120), (4, 10)),
}
# A service needs this many reports a minute at its daily peak before a 4-30x
# rise is a visible outage rather than a few stray reports.
VISIBLE_RATE = 1.0
REGIONAL_RATE = 2.0
# "A few reports a day": the services a tiny outage is about.
TINY_RATE = 0.05
# At its height the weekend outage of X drew about 25,800 reports in 15 minutes.
X_PEAK_PER_15_MIN = 25_800


@dataclass(frozen=True)
class Outage:
    """Extra reports on one service (or one region of it) between `start_ms` and `end_ms`.

    The rate of reports is the service's normal rate times a multiplier that
    rises linearly from 1 to `peak_multiplier` over `ramp_ms`, holds, and falls
    back to 1 by `end_ms`. With `region` set, only that region's reports are
    multiplied.

    >>> o = Outage("x", 0, 60 * MINUTE_MS, "sudden", 11.0, None, 2 * MINUTE_MS)
    >>> o.multiplier_at(MINUTE_MS), o.multiplier_at(30 * MINUTE_MS), o.multiplier_at(-1)
    (6.0, 11.0, 1.0)
    >>> o.is_outage
    True
    """

    service: str
    start_ms: int
    end_ms: int
    shape: str
    peak_multiplier: float
    region: str | None
    ramp_ms: int
    group: str | None = None
    """Outages of one cause share a group: a provider's and its dependants'."""

    @property
    def is_outage(self) -> bool:
        # A flood is one reporter hammering the button: reports, but no outage.
        return self.shape != "flood"

    @property
    def decay_ms(self) -> int:
        """Time the report rate takes to fall back to normal at the end."""
        return min(max(self.ramp_ms // 2, 5 * MINUTE_MS), (self.end_ms - self.start_ms) // 4)

    def intensity_at(self, ts_ms: float) -> float:
        """How far into the outage the rate is, from 0 (normal) to 1 (peak)."""
        if not self.start_ms <= ts_ms < self.end_ms:
            return 0.0
        rising = (ts_ms - self.start_ms) / self.ramp_ms if self.ramp_ms else 1.0
        falling = (self.end_ms - ts_ms) / self.decay_ms if self.decay_ms else 1.0
        return min(1.0, rising, falling)

    def multiplier_at(self, ts_ms: float) -> float:
        return 1.0 + (self.peak_multiplier - 1.0) * self.intensity_at(ts_ms)

    def mean_intensity(self) -> float:
        """Average of `intensity_at` over the window (the ramps are linear)."""
        duration = self.end_ms - self.start_ms
        return (duration - self.ramp_ms / 2 - self.decay_ms / 2) / duration

    def describe(self) -> str:
        """One line for people: what, where, when, how big."""
        where = f"{self.service}/{self.region}" if self.region else self.service
        minutes = (self.end_ms - self.start_ms) / MINUTE_MS
        kind = "" if self.is_outage else "  (not an outage)"
        return (
            f"{self.shape:<8} {where:<24} {iso_utc(self.start_ms)} -> {iso_utc(self.end_ms)} "
            f"({minutes:.0f} min)  peak x{self.peak_multiplier:,.1f}, "
            f"ramp {self.ramp_ms / MINUTE_MS:.0f} min{kind}"
        )

    def label(self) -> dict:
        return {
            "service": self.service,
            "region": self.region,
            "start": iso_utc(self.start_ms),
            "end": iso_utc(self.end_ms),
            "shape": self.shape,
            "peak_multiplier": round(self.peak_multiplier, 3),
            "is_outage": self.is_outage,
            **({"group": self.group} if self.group else {}),
        }


def weekday(ts_ms: int) -> int:
    """Day of the week, Monday 0 to Sunday 6.

    >>> weekday(1767571200000)  # 2026-01-05
    0
    """
    # Day 0 of the epoch was a Thursday.
    return (ts_ms // DAY_MS + 3) % 7


def write_labels(outages: Iterable[Outage], path: str | Path) -> None:
    """Write the injected outages as a JSON list of labels, floods included."""
    data = orjson.dumps([o.label() for o in outages], option=orjson.OPT_INDENT_2)
    try:
        Path(path).write_bytes(data + b"\n")
    except OSError as exc:
        raise ValueError(f"cannot write the labels file {path}: {exc.strerror}") from None


# --- planning -----------------------------------------------------------------


def warmup_ms(days: float) -> int:
    """The start of a run kept free of outages.

    Three days for long runs. A shorter run (demos, tests) keeps the default
    model's two-day warm-up plus a margin free when it can, since an outage the
    model sees while warming up is learned as normal; the shortest keep half.

    >>> [warmup_ms(d) / DAY_MS for d in (21, 4, 3.5, 1)]
    [3.0, 3.0, 2.25, 0.5]
    """
    run_ms = int(days * DAY_MS)
    if run_ms >= WARMUP_MS + DAY_MS:
        return WARMUP_MS
    if run_ms >= SHORT_WARMUP_MS + DAY_MS // 2:
        return SHORT_WARMUP_MS
    return run_ms // 2


def plan_outages(
    services: Sequence[ServiceProfile],
    start_ms: int,
    days: float,
    rng: random.Random,
    count: int,
) -> list[Outage]:
    """Spread up to `count` outages of mixed shapes over a run, sorted by start.

    The first of each shape comes first, so any count of at least six covers
    them all when the run and the services allow it (the X outage needs a
    service named "x", a tiny outage a service with a few reports a day).
    Nothing starts in the warm-up (see `warmup_ms`), and outages on one
    service stay `GAP_MS` apart. An outage that finds no room is left out,
    so short runs get fewer.
    """
    end_ms = start_ms + int(days * DAY_MS)
    earliest = start_ms + warmup_ms(days)
    latest_end = end_ms - TAIL_MS
    by_name = {s.name: s for s in services}
    busy: dict[str, list[tuple[int, int]]] = {}

    def free(service: str, start: int, end: int) -> bool:
        return all(end + GAP_MS <= s or start >= e + GAP_MS for s, e in busy.get(service, ()))

    shapes = [s for s in SHAPES if s != "x_outage"]
    if "x" in by_name:
        shapes.insert(0, "x_outage")
    weights = list(SHAPE_WEIGHTS.values())
    while len(shapes) < count:
        shapes.append(rng.choices(list(SHAPE_WEIGHTS), weights)[0])

    outages: list[Outage] = []
    for shape in shapes[:count]:
        candidates = _eligible(shape, services)
        for _ in range(40):
            if not candidates:
                break
            service = rng.choice(candidates)
            duration, ramp = _duration_and_ramp(shape, rng)
            start = _pick_start(shape, earliest, latest_end - duration, rng)
            if start is None:
                break
            if not free(service.name, start, start + duration):
                continue
            outage = _build(shape, service, start, duration, ramp, rng)
            busy.setdefault(service.name, []).append((start, start + duration))
            outages.append(outage)
            break
    outages.sort(key=lambda o: (o.start_ms, o.service))
    return outages


def _eligible(shape: str, services: Sequence[ServiceProfile]) -> list[ServiceProfile]:
    tests: dict[str, Callable[[ServiceProfile], bool]] = {
        "x_outage": lambda s: s.name == "x",
        "sudden": lambda s: s.peak_rate >= VISIBLE_RATE,
        "gradual": lambda s: s.peak_rate >= VISIBLE_RATE,
        "regional": lambda s: s.peak_rate >= REGIONAL_RATE and len(s.regions) >= 3,
        "tiny": lambda s: s.peak_rate <= TINY_RATE,
        # The big one's service is left alone, so its outage stays the only story there.
        "flood": lambda s: s.name != "x",
    }
    return [s for s in services if tests[shape](s)]


def _duration_and_ramp(shape: str, rng: random.Random) -> tuple[int, int]:
    """Length and rise time, in whole minutes, as ms."""
    (shortest, longest), (fastest, slowest) = _MINUTES[shape]
    return (round(rng.uniform(shortest, longest)) * MINUTE_MS,
            round(rng.uniform(fastest, slowest)) * MINUTE_MS)


def _pick_start(shape: str, earliest: int, latest: int, rng: random.Random) -> int | None:
    if latest < earliest:
        return None
    if shape == "x_outage":
        # Modelled on a weekend outage, in European afternoon / American morning.
        days = [
            d for d in range(earliest // DAY_MS, latest // DAY_MS + 1) if weekday(d * DAY_MS) >= 5
        ]
        for _ in range(20):
            day = rng.choice(days) if days else rng.randrange(earliest // DAY_MS,
                                                             latest // DAY_MS + 1)
            start = day * DAY_MS + rng.randrange(12 * 60, 19 * 60) * MINUTE_MS
            if earliest <= start <= latest:
                return start
    first, last = -(-earliest // MINUTE_MS), latest // MINUTE_MS
    return rng.randint(first, last) * MINUTE_MS if first <= last else None


def _build(
    shape: str, service: ServiceProfile, start: int, duration: int, ramp: int, rng: random.Random
) -> Outage:
    region = None
    if shape == "sudden":
        multiplier = rng.uniform(10, 30)
    elif shape == "gradual":
        multiplier = rng.uniform(4, 6)
    elif shape == "regional":
        region = _quiet_region(service)
        multiplier = rng.uniform(30, 50)
    else:
        # Sized by how many reports the event brings, not by a ratio: a tiny
        # service has almost no normal traffic to multiply.
        draft = Outage(service.name, start, start + duration, shape, 2.0, None, ramp)
        mid = start + duration // 2
        normal = max(service.rate_at(mid), 1e-6)
        if shape == "x_outage":
            peak_rate = X_PEAK_PER_15_MIN / 15 * rng.uniform(0.9, 1.4)
        else:
            reports = rng.uniform(30, 100) if shape == "tiny" else rng.uniform(200, 800)
            peak_rate = reports / (duration / MINUTE_MS) / draft.mean_intensity()
        multiplier = 1.0 + peak_rate / normal
    return Outage(service.name, start, start + duration, shape, multiplier, region, ramp)


def _quiet_region(service: ServiceProfile) -> str:
    """The region whose 40-fold rise about doubles the service total (share near 2.5%)."""
    others = [(region, share) for region, share in service.regions if region != service.home]
    return min(others, key=lambda rs: abs(rs[1] - 0.025))[0]


# --- a provider outage: one cause, many services --------------------------------

# The dependants' onsets spread over this many minutes after the provider's.
PROVIDER_SPREAD_MIN = 3
PROVIDER_MINUTES = (60, 150)
PROVIDER_TRIES = 20
PROVIDER_NAMES = ("aws", "cloudflare", "azure", "gcp", "akamai", "fastly")


def plan_provider_outage(
    services: Sequence[ServiceProfile],
    start_ms: int,
    days: float,
    rng: random.Random,
    dependants: int,
    taken: Sequence[Outage] = (),
    regional_share: float = 0.3,
) -> list[Outage]:
    """A `provider` outage: one provider service and `dependants` services that run
    on it, down together within a few minutes, some of them only in one region
    (a provider's region failing). All share one `group`, the provider's name
    and start, which `backtest --labels` scores grouping against. Services busy
    with another injected outage near the time are not used; with too few
    services free, fewer dependants are taken (none at all: an empty list).
    """
    visible = [s for s in services if s.peak_rate >= VISIBLE_RATE]
    end_ms = start_ms + int(days * DAY_MS)
    duration = round(rng.uniform(*PROVIDER_MINUTES)) * MINUTE_MS
    # A few tries for a time when enough services are free of other outages.
    best: tuple[int, list[ServiceProfile]] | None = None
    for _ in range(PROVIDER_TRIES):
        start = _pick_start("sudden", start_ms + warmup_ms(days),
                            end_ms - TAIL_MS - duration, rng)
        if start is None:
            return []
        free = [s for s in visible
                if all(o.service != s.name or o.end_ms + GAP_MS <= start
                       or o.start_ms >= start + duration + GAP_MS for o in taken)]
        if best is None or len(free) > len(best[1]):
            best = (start, free)
        if len(free) > dependants:
            break
    start, free = best
    if len(free) < 2:
        return []
    rng.shuffle(free)
    # A service named like a provider plays the provider when one is free.
    free.sort(key=lambda s: s.name not in PROVIDER_NAMES)
    provider, others = free[0], free[1:1 + dependants]
    group = f"provider:{provider.name}@{iso_utc(start)}"
    outages = [Outage(provider.name, start, start + duration, "provider",
                      rng.uniform(15, 30), None, 2 * MINUTE_MS, group)]
    for service in others:
        onset = start + rng.randint(0, PROVIDER_SPREAD_MIN) * MINUTE_MS
        regional = len(service.regions) >= 3 and service.peak_rate >= REGIONAL_RATE and (
            rng.random() < regional_share)
        region = _quiet_region(service) if regional else None
        multiplier = rng.uniform(30, 50) if regional else rng.uniform(10, 30)
        outages.append(Outage(service.name, onset, start + duration, "dependant", multiplier,
                              region, 2 * MINUTE_MS, group))
    return outages
