"""Normal report traffic per service, with injected outages laid on top.

A service's expected reports per minute is its rate at the daily peak, times
a daily curve (quiet at night, highest in the evening, in the local time of
its home region), times a weekend factor, times the multiplier of any outage
under way. Counts are Poisson around a rate that itself wobbles (a gamma
mix), because real report counts vary more than a Poisson count would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter

from stream_detector.sim.scenarios import DAY_MS, HOUR_MS, MINUTE_MS, Outage, weekday

# Share of a service's reports at each local hour relative to the evening peak.
_HOURLY = (
    0.45, 0.30, 0.20, 0.14, 0.11, 0.12, 0.18, 0.30, 0.45, 0.57, 0.64, 0.68,
    0.72, 0.72, 0.71, 0.72, 0.75, 0.80, 0.88, 0.95, 1.00, 0.96, 0.82, 0.64,
)
# The same curve per minute, interpolated, so the rate has no hourly steps.
DAILY_CURVE = tuple(
    _HOURLY[m // 60] + (_HOURLY[(m // 60 + 1) % 24] - _HOURLY[m // 60]) * (m % 60) / 60
    for m in range(24 * 60)
)

# Hours ahead of UTC, which sets when a service's evening peak happens.
REGION_UTC_OFFSETS = {
    "US": -5, "CA": -5, "MX": -6, "BR": -3, "GB": 0, "FR": 1, "DE": 1, "ES": 1,
    "IT": 1, "IN": 5.5, "JP": 9, "AU": 10,
}
# How likely each region is to be a service's home market.
_HOME_WEIGHTS = {
    "US": 5, "GB": 2, "DE": 1.5, "IN": 1.5, "BR": 1, "JP": 1, "FR": 1, "CA": 0.7,
    "MX": 0.7, "ES": 0.6, "IT": 0.6, "AU": 0.6,
}
PROBLEMS = (
    "app", "login", "website", "server connection", "video", "feed", "messages",
    "notifications", "payments", "upload", "voice chat", "matchmaking", "email",
)
# During an outage people report that they cannot get in or cannot connect.
OUTAGE_PROBLEMS = (("server connection", 0.45), ("login", 0.3), ("app", 0.15), ("website", 0.1))

# Well-known names first, largest first; the rest are numbered.
SERVICE_NAMES = (
    "x", "youtube", "aws", "instagram", "whatsapp", "gmail", "netflix", "discord",
    "steam", "spotify", "outlook", "reddit", "twitch", "tiktok", "zoom", "slack",
    "paypal", "github", "roblox", "playstation-network", "xbox-live", "cloudflare",
    "azure", "chatgpt", "fortnite", "verizon", "comcast", "t-mobile", "dropbox", "ebay",
)

# Gamma shape of the rate wobble: 20 makes the rate vary by about 22% minute to minute.
DISPERSION_SHAPE = 20.0
# Below this many expected reports a count is 0 or 1 whatever the wobble, and a
# gamma draw would cost more than the rest of the quiet minute.
DISPERSION_MIN_LAMBDA = 1.0
# Above this, a Poisson count is close enough to normal, and inversion gets slow.
NORMAL_APPROX_LAMBDA = 30.0
# Per report: some apps do not send a reporter id, a few reports lack a region or problem.
NO_REPORTER = 0.03
NO_REGION = 0.01
NO_PROBLEM = 0.01


@dataclass(frozen=True)
class ServiceProfile:
    """A service's normal report traffic.

    `regions` and `problems` are (name, share) pairs whose shares sum to 1; the
    first region is the home market, whose time zone sets the daily curve.

    >>> s = ServiceProfile("shop", 10.0, (("GB", 1.0),), (("app", 1.0),), 1.0)
    >>> s.rate_at(1767639600000)  # Monday 2026-01-05 19:00 UTC, 19:00 in GB
    9.5
    """

    name: str
    peak_rate: float
    """Reports per minute at the evening peak of a weekday."""
    regions: tuple[tuple[str, float], ...]
    problems: tuple[tuple[str, float], ...]
    weekend_factor: float = 1.0
    """Rate on Saturday and Sunday relative to a weekday (games up, work tools down)."""

    @property
    def home(self) -> str:
        return self.regions[0][0]

    @property
    def utc_offset_ms(self) -> int:
        return int(REGION_UTC_OFFSETS.get(self.home, 0) * HOUR_MS)

    def rate_at(self, ts_ms: int) -> float:
        """Expected reports per minute at `ts_ms`, outside any outage."""
        return self.peak_rate * _season(ts_ms + self.utc_offset_ms, self.weekend_factor)


def _season(local_ms: int, weekend_factor: float) -> float:
    weekend = weekday(local_ms) >= 5
    return DAILY_CURVE[local_ms // MINUTE_MS % 1440] * (weekend_factor if weekend else 1.0)


def make_services(
    n: int,
    rng: random.Random,
    largest_rate: float = 60.0,
    smallest_rate: float = 0.004,
) -> list[ServiceProfile]:
    """`n` services, "x" the largest, the rest from a few reports a day upwards.

    Peak rates (reports per minute) are log-uniform between `smallest_rate`
    (about 3 reports a day) and half of `largest_rate`, stratified so that
    even a handful of services spans small to large. X's default of 60 a
    minute leaves room for its outage to be tens of times its normal volume.

    >>> [s.name for s in make_services(3, random.Random(1))]
    ['x', 'youtube', 'aws']
    """
    if n < 1:
        return []
    lo, hi = math.log(smallest_rate), math.log(largest_rate / 2)
    others = [math.exp(lo + (hi - lo) * (i + rng.random()) / (n - 1)) for i in range(n - 1)]
    rates = [largest_rate, *sorted(others, reverse=True)]
    homes, home_weights = list(_HOME_WEIGHTS), list(_HOME_WEIGHTS.values())
    services = []
    for i, rate in enumerate(rates):
        name = SERVICE_NAMES[i] if i < len(SERVICE_NAMES) else f"svc-{i:04d}"
        home = "US" if name == "x" else rng.choices(homes, weights=home_weights)[0]
        services.append(ServiceProfile(
            name=name,
            peak_rate=rate,
            regions=_region_mix(home, rate, rng),
            problems=_problem_mix(rng),
            weekend_factor=rng.uniform(0.75, 1.35),
        ))
    return services


def _region_mix(home: str, rate: float, rng: random.Random) -> tuple[tuple[str, float], ...]:
    # Bigger services are reported from more countries.
    count = min(len(REGION_UTC_OFFSETS), max(1, round(2 + 2 * math.log10(rate / 0.01))))
    abroad = rng.sample([r for r in REGION_UTC_OFFSETS if r != home], count - 1)
    weights = sorted((rng.gammavariate(1.0, 1.0) for _ in abroad), reverse=True)
    home_weight = (sum(weights) or 1.0) * rng.uniform(0.8, 2.0)
    total = home_weight + sum(weights)
    return ((home, home_weight / total), *((r, w / total) for r, w in zip(abroad, weights,
                                                                            strict=True)))


def _problem_mix(rng: random.Random) -> tuple[tuple[str, float], ...]:
    names = rng.sample(PROBLEMS, rng.randint(3, 5))
    weights = sorted((rng.gammavariate(1.5, 1.0) for _ in names), reverse=True)
    total = sum(weights)
    return tuple((name, w / total) for name, w in zip(names, weights, strict=True))


def poisson(lam: float, rng: random.Random) -> int:
    """A Poisson count: exact inversion for small means, normal above `NORMAL_APPROX_LAMBDA`.

    >>> rng = random.Random(3)
    >>> round(sum(poisson(4.0, rng) for _ in range(20_000)) / 20_000, 1)
    4.0
    """
    if lam >= NORMAL_APPROX_LAMBDA:
        return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))
    u = rng.random()
    p = cumulative = math.exp(-lam)
    k = 0
    # p reaches 0 only past any u a float can hold, so the loop always ends.
    while u > cumulative and p > 0.0:
        k += 1
        p *= lam / k
        cumulative += p
    return k


class _Mix:
    """Names and cumulative weights in the form `random.choices` takes fastest."""

    __slots__ = ("names", "cum")

    def __init__(self, pairs: Sequence[tuple[str, float]]):
        self.names = [name for name, _ in pairs]
        self.cum = []
        total = 0.0
        for _, share in pairs:
            total += share
            self.cum.append(total)


@dataclass
class _Extra:
    """How one outage adds reports: from where, about what, by whom."""

    outage: Outage
    service: ServiceProfile
    share: float  # of the service's normal traffic that the multiplier applies to
    regions: _Mix
    problems: _Mix
    reporter: str | None  # one id for every report of a flood


def generate_reports(
    services: Sequence[ServiceProfile],
    outages: Sequence[Outage],
    start_ms: int,
    days: float,
    rng: random.Random,
    step_ms: int = 60_000,
) -> Iterator[dict]:
    """Report dicts in event-time order, made one `step_ms` slice at a time as they are read.

    Normal traffic and outage traffic use separate random streams split off
    `rng` here, before the first report, so the same seed gives the same
    normal traffic with or without outages, and a test can subtract one from
    the other.
    """
    by_name = {s.name: s for s in services}
    unknown = sorted({o.service for o in outages} - set(by_name))
    if unknown:
        raise ValueError(f"outages on services that are not simulated: {', '.join(unknown)}")
    normal_rng = random.Random(rng.getrandbits(64))
    extra_rng = random.Random(rng.getrandbits(64))
    extras = [_extra_for(o, by_name[o.service], extra_rng) for o in outages]
    return _slices(services, extras, start_ms, days, step_ms, normal_rng, extra_rng)


def _slices(
    services: Sequence[ServiceProfile],
    extras: list[_Extra],
    start_ms: int,
    days: float,
    step_ms: int,
    normal_rng: random.Random,
    extra_rng: random.Random,
) -> Iterator[dict]:
    series = [
        (s.name, s.peak_rate, s.utc_offset_ms, s.weekend_factor, _Mix(s.regions), _Mix(s.problems))
        for s in services
    ]
    # Latest first, so the next outage to start is popped off the end.
    pending = sorted(extras, key=lambda e: e.outage.start_ms, reverse=True)
    active: list[_Extra] = []
    end_ms = start_ms + int(days * DAY_MS)
    by_ts = itemgetter("ts")

    for t in range(start_ms, end_ms, step_ms):
        width = min(step_ms, end_ms - t)
        minutes = width / MINUTE_MS
        batch: list[dict] = []
        for name, peak_rate, utc_offset_ms, weekend_factor, regions, problems in series:
            # ServiceProfile.rate_at, unrolled: this runs for every service every minute.
            lam = peak_rate * _season(t + utc_offset_ms, weekend_factor) * minutes
            n = _count(lam, normal_rng)
            if n:
                _emit(batch, normal_rng, name, t, width, n, regions, problems, None)

        while pending and pending[-1].outage.start_ms < t + width:
            active.append(pending.pop())
        active = [e for e in active if e.outage.end_ms > t]
        for extra in active:
            outage = extra.outage
            lo, hi = max(t, outage.start_ms), min(t + width, outage.end_ms)
            boost = outage.multiplier_at((lo + hi) / 2) - 1.0
            lam = extra.service.rate_at(lo) * extra.share * boost * (hi - lo) / MINUTE_MS
            n = _count(lam, extra_rng)
            if n:
                _emit(batch, extra_rng, outage.service, lo, hi - lo, n, extra.regions,
                      extra.problems, extra.reporter)

        batch.sort(key=by_ts)
        yield from batch


def _extra_for(outage: Outage, service: ServiceProfile, rng: random.Random) -> _Extra:
    shares = dict(service.regions)
    if outage.shape == "flood":
        # One person, one place, one complaint, many times.
        return _Extra(outage, service, 1.0, _Mix([(service.home, 1.0)]),
                      _Mix([(service.problems[0][0], 1.0)]), f"{rng.getrandbits(48):012x}")
    if outage.region is not None:
        return _Extra(outage, service, shares.get(outage.region, 0.0),
                      _Mix([(outage.region, 1.0)]), _Mix(OUTAGE_PROBLEMS), None)
    # The service's own users report it, so the extra reports follow its regional mix.
    return _Extra(outage, service, 1.0, _Mix(service.regions), _Mix(OUTAGE_PROBLEMS), None)


def _count(lam: float, rng: random.Random) -> int:
    if lam >= DISPERSION_MIN_LAMBDA:
        lam *= rng.gammavariate(DISPERSION_SHAPE, 1.0 / DISPERSION_SHAPE)
    return poisson(lam, rng)


def _emit(
    out: list[dict],
    rng: random.Random,
    service: str,
    start_ms: int,
    width_ms: int,
    n: int,
    regions: _Mix,
    problems: _Mix,
    reporter: str | None,
) -> None:
    """Append `n` reports spread uniformly over [start_ms, start_ms + width_ms)."""
    rand = rng.random
    bits = rng.getrandbits
    region_of = rng.choices(regions.names, cum_weights=regions.cum, k=n)
    problem_of = rng.choices(problems.names, cum_weights=problems.cum, k=n)
    # A flood's reports always carry its reporter: that is how it gets caught.
    no_reporter = 0.0 if reporter else NO_REPORTER
    no_region = no_reporter + NO_REGION
    no_problem = no_region + NO_PROBLEM
    for region, problem in zip(region_of, problem_of, strict=True):
        report = {
            "service": service,
            "ts": start_ms + int(rand() * width_ms),
            "region": region,
            "problem": problem,
            "reporter": reporter or f"{bits(48):012x}",
        }
        u = rand()
        if u < no_problem:
            if u < no_reporter:
                del report["reporter"]
            elif u < no_region:
                del report["region"]
            else:
                del report["problem"]
        out.append(report)
