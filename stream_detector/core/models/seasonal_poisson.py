"""Seasonal count model: expected reports by hour and day type, counted tails, several scales.

What one series' model does per bucket:

1. Expectation. A profile of the typical count for each UTC hour of the day,
   separately for weekdays and weekends (48 slots), each an exponentially
   weighted (EW) mean of the buckets that fell in that slot. A slot not seen
   yet borrows the same hour of the other day type, or else the recent level
   of the whole series (an EW mean over a few hours).
2. Tail probability at several time scales. The current bucket, and EW sums
   of recent buckets with effective lengths of 3, 10, 30 and 100 buckets, are
   each compared with the same EW sum of their expectations under a
   quasi-Poisson tail (`count_tail`) whose overdispersion is estimated online
   per scale. A sharp spike shows at scale 1; a gradual rise, or a small
   outage that no single bucket shows, accumulates in the longer sums. The
   raw score is the largest surprise over the scales, as a normal deviate.
3. Calibration, after Numenta's anomaly likelihood: a short EW average of the
   raw score is compared with the long-run EW mean and spread of that average
   on this series, and the score is the Gaussian probability of that
   deviate (shifted by `score_offset`, see below). A series whose model fits
   badly (spam bursts, irregular rhythm) raises its own bar, so one threshold
   suits quiet and noisy series alike.

Design choices and what they were measured against (NAB realTweets, see
`bench/nab_realtweets.py`):

- No fast level factor. Following the level of the last hours (or days)
  learned the onset of slowly building events and cost 2 to 3 NAB points;
  each slot's own EW mean (7 days of that slot) is the level.
- EW sums instead of windowed sums over a ring of past buckets: the same
  detection figures, a fraction of the state, and a gap of empty buckets
  is a closed-form update. The Poisson part of an EW sum's variance is its
  mean times `1 / (1 + d)` (d the sum's decay), which the tail accounts for.
- Robust learning: a value is learned clipped to `expected +- learn_clip *
  spread`, residuals feed the dispersion clipped at `dispersion_clip`
  spreads, and the long-run calibration statistics see the short average
  clipped at `calibration_clip` spreads, so that one burst cannot blunt the
  model for a week.
- The calibration starts learning half-way through the warm-up (the raw
  scores of the first hours only say that the profile is empty) and its
  statistics are plain averages until they have seen `1 / a` buckets: an EW
  mean started at zero understated the spread for days and made flat Poisson
  series alert dozens of times on their first scored day.

Why not river's `stats.EWMean` / `EWVar` objects for the running means: the
detector needs weighted updates (an open incident teaches the model nothing),
closed-form updates over a gap of empty buckets (`learn_zeros`) and about 30
running statistics in under 2 KB, while each river statistic is a separate
object of about 180 bytes pickled. The recursions are river's
(`EWMean(fading_factor=a)`: `m += a * (x - m)`; the unit tests check them
against river), kept as plain floats in `array('d')`s and slots. Nor the
rest of river: `proba` has no Poisson or negative binomial (`count_tail`
stands in), `time_series.HoltWinters` has one season length, no weights and
no gap update, and `anomaly.GaussianScorer` is the Gaussian z this model
replaces.
"""

from __future__ import annotations

import ast
import math
from array import array

from stream_detector.core.models.base import Scored

_THIRD = 1.0 / 3.0
_SQRT_HALF = math.sqrt(0.5)
_HOUR = 3600.0
_DAY = 86_400.0
_WEEK = 7 * _DAY
# 1970-01-01 was a Thursday: day d since the epoch is weekday (d + 3) % 7 (Monday = 0).
_EPOCH_WEEKDAY = 3
SLOTS = 48  # 24 hours x (weekday, weekend)
DIRECTIONS = ("up", "down", "both")
# Lower bound of the dispersion: even a perfectly regular series is allowed a
# relative spread of 1 % beyond its Poisson noise.
_MIN_PHI = 1e-4
# Dispersion assumed before any has been measured (a relative spread of ~22 %).
_PRIOR_PHI = 0.05
# Lower bound of the spread of the short raw average in the calibration; a
# series that was perfectly quiet so far still needs a deviate of a few tenths.
_MIN_CALIBRATION_SD = 0.1


def calendar_slot(t: float) -> int:
    """Profile slot of epoch second `t`: UTC hour of day, plus 24 on Saturdays and Sundays.

    >>> calendar_slot(1_767_571_200)  # Monday 2026-01-05 00:00 UTC
    0
    >>> calendar_slot(1_767_571_200 + 5 * 86_400 + 13 * 3600)  # Saturday 13:00
    37
    """
    day = int(t // _DAY)
    hour = int(t - day * _DAY) // 3600
    return hour + 24 if (day + _EPOCH_WEEKDAY) % 7 >= 5 else hour


def fading_factor(halflife: float) -> float:
    """Weight of the newest value in an EW mean whose half-life is `halflife` updates.

    >>> round(fading_factor(1.0), 3), round(fading_factor(10.0), 4)
    (0.5, 0.067)
    """
    return 1.0 - 0.5 ** (1.0 / max(halflife, 1e-9))


class SeasonalPoissonSettings:
    """The constants shared by every series' model of one configuration.

    Built once per distinct configuration (`settings_key`), so 100,000
    series hold one short key each instead of 20 floats each.
    """

    __slots__ = (
        "bucket_seconds", "direction", "up", "down", "warmup_seconds", "scales", "decays",
        "units", "a_profile", "a_level", "a_disp", "a_short", "a_calib", "learn_clip",
        "dispersion_clip", "calibration_clip", "score_offset", "down_min_expected",
    )

    def __init__(
        self,
        bucket_seconds: float,
        direction: str,
        warmup_seconds: float,
        scales: tuple[int, ...],
        profile_halflife_days: float,
        dispersion_halflife_days: float,
        short_halflife_buckets: float,
        calibration_halflife_days: float,
        learn_clip: float,
        dispersion_clip: float,
        calibration_clip: float,
        score_offset: float,
        down_min_expected: float,
    ):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        if not bucket_seconds > 0:
            raise ValueError(f"bucket_seconds must be positive, not {bucket_seconds!r}")
        if not scales or min(scales) < 1:
            raise ValueError("scales must be bucket counts of at least 1")
        self.bucket_seconds = float(bucket_seconds)
        self.direction = direction
        self.up = direction != "down"
        self.down = direction != "up"
        self.warmup_seconds = float(warmup_seconds)
        self.scales = tuple(sorted({int(w) for w in scales}))
        # An EW sum with decay d has effective length 1 / (1 - d) buckets.
        self.decays = tuple(1.0 - 1.0 / w for w in self.scales)
        # Var/mean of the EW sum of Poisson counts: sum(d^2k) / sum(d^k) = 1 / (1 + d).
        self.units = tuple(1.0 / (1.0 + d) for d in self.decays)
        per_hour = _HOUR / self.bucket_seconds
        per_day = _DAY / self.bucket_seconds
        # A slot sees `per_hour` buckets on each day it occurs.
        self.a_profile = fading_factor(profile_halflife_days * per_hour)
        self.a_level = fading_factor(6.0 * per_hour)
        self.a_disp = fading_factor(dispersion_halflife_days * per_day)
        self.a_short = fading_factor(short_halflife_buckets)
        self.a_calib = fading_factor(calibration_halflife_days * per_day)
        self.learn_clip = learn_clip
        self.dispersion_clip = dispersion_clip
        self.calibration_clip = calibration_clip
        self.score_offset = score_offset
        self.down_min_expected = down_min_expected


# Settings by configuration key. A model holds its key, a short string, rather
# than the settings object: the key survives pickling and the detector's JSON
# snapshots as it is, and resolves to the one shared settings object again.
_SETTINGS: dict[str, SeasonalPoissonSettings] = {}


def settings_key(bucket_seconds: float, direction: str = "up", **options) -> str:
    """The configuration key of a `SeasonalPoissonModel`, registering its settings.

    >>> settings_key(60.0)
    "(60.0, 'up', ())"
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown SeasonalPoissonModel option(s): {', '.join(sorted(unknown))}")
    key = repr((float(bucket_seconds), direction, tuple(sorted(options.items()))))
    if key not in _SETTINGS:
        _SETTINGS[key] = SeasonalPoissonSettings(
            float(bucket_seconds), direction, **{**DEFAULTS, **options}
        )
    return key


def settings_of(key: str) -> SeasonalPoissonSettings:
    """The settings a configuration key stands for (also in a process that never built them)."""
    try:
        return _SETTINGS[key]
    except KeyError:
        bucket_seconds, direction, options = ast.literal_eval(key)
        return _SETTINGS[settings_key(bucket_seconds, direction, **dict(options))]


DEFAULTS: dict = {
    "warmup_seconds": 2 * _DAY,
    "scales": (1, 3, 10, 30, 100),
    "profile_halflife_days": 7.0,
    "dispersion_halflife_days": 7.0,
    "short_halflife_buckets": 4.0,
    "calibration_halflife_days": 6.0,
    "learn_clip": 6.0,
    "dispersion_clip": 1.5,
    "calibration_clip": 8.0,
    "score_offset": 1.6,
    "down_min_expected": 0.0,
}


class SeasonalPoissonModel:
    """Counts against an hour-of-day x weekday/weekend profile, at several time scales.

    `bucket_seconds` is the bucket width (half-lives given in time are
    converted to per-bucket weights with it, so 60 s and 300 s buckets behave
    alike) and `direction` is "up" (excess reports), "down" (missing ones) or
    "both". Keyword options, with their defaults in `DEFAULTS`:

    - `warmup_seconds` (2 days): the score is 0 until this much time was learned.
    - `scales` ((1, 3, 10, 30, 100)): effective lengths, in buckets, of the sums scored.
    - `profile_halflife_days` (7): memory of each hour slot, in days on which it occurs.
    - `dispersion_halflife_days` (7): memory of the overdispersion estimates.
    - `short_halflife_buckets` (4) and `calibration_halflife_days` (6): the
      short average of the raw score, and the long-run statistics it is compared to.
    - `learn_clip` (6), `dispersion_clip` (1.5), `calibration_clip` (8): robust
      learning, in spreads (see the module docstring).
    - `score_offset` (1.6): the score is `Phi(deviate - score_offset)`, so that
      the conventional alert level 0.99 sits at a calibrated deviate of 3.9,
      where alerts paid off on the NAB development set; 0.9999 is a deviate of 5.3.
    - `down_min_expected` (0): drops are scored only where at least this
      many reports were expected over the scale.

    >>> m = SeasonalPoissonModel(bucket_seconds=300, warmup_seconds=3600)
    >>> t0 = 1_767_571_200  # Monday 00:00 UTC
    >>> for i in range(3000):
    ...     m.learn_one(t0 + 300 * i, 20 + (i * 7) % 9)  # 20..28, no rhythm
    >>> s = m.score_one(t0 + 300 * 3000, 24)
    >>> 22 < s.expected < 26, s.score < 0.5
    (True, True)
    >>> m.score_one(t0 + 300 * 3000, 300).score > 0.9999  # a 12-fold burst
    True
    """

    __slots__ = (
        "config_key", "profile", "stats", "level", "unit", "short", "calib_mean", "calib_sq",
        "learned",
        "first_t", "last_t", "_slot", "_slot_from", "_slot_until", "_t", "_x", "_mu", "_raw",
    )

    def __init__(self, bucket_seconds: float, direction: str = "up", **options):
        self.config_key = settings_key(bucket_seconds, direction, **options)
        self.profile = array("d", [math.nan]) * SLOTS
        # Per scale j (n scales): [j] EW sum of counts, [n+j] EW sum of
        # expectations, [2n+j] EW mean of clipped squared residual minus the
        # Poisson part, [3n+j] EW mean of the squared expectation; their
        # ratio is the dispersion phi of that scale.
        self.stats = array("d", [0.0]) * (4 * len(self.settings.scales))
        self.level = 0.0
        # 1 while every value has been a whole number (counts: Poisson noise
        # at least); 0 once a fraction shows up (a metric: relative noise only).
        self.unit = 1.0
        self.short = 0.0
        self.calib_mean = 0.0
        self.calib_sq = 0.0
        # Buckets the calibration has learned (weighted). Until 1 / a_calib of
        # them, its statistics are plain averages: an EW mean started at zero
        # would understate the spread for days and make a new series jumpy.
        self.learned = 0.0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self._slot = 0
        self._slot_from = 1.0
        self._slot_until = 0.0
        # What score_one computed, so that learn_one of the same bucket reuses it.
        self._t: float | None = None
        self._x = 0.0
        self._mu = 0.0
        self._raw = 0.0

    @property
    def settings(self) -> SeasonalPoissonSettings:
        return settings_of(self.config_key)

    # --- expectation -----------------------------------------------------

    def _slot_of(self, t: float) -> int:
        if self._slot_from <= t < self._slot_until:
            return self._slot
        start = (t // _HOUR) * _HOUR
        self._slot = calendar_slot(t)
        self._slot_from = start
        self._slot_until = start + _HOUR
        return self._slot

    def _profile_at(self, slot: int) -> float:
        p = self.profile[slot]
        if p == p:  # not NaN: the slot has been seen
            return p
        other = self.profile[slot - 24 if slot >= 24 else slot + 24]
        return other if other == other else self.level

    def expected(self, t: float) -> float:
        """Expected count of the bucket starting at epoch second `t`."""
        return self._profile_at(self._slot_of(t))

    def _phi(self, j: int) -> float:
        stats = self.stats
        n4 = len(stats)
        den = stats[3 * n4 // 4 + j]
        phi = stats[n4 // 2 + j] / den if den > 0.0 else _PRIOR_PHI
        return phi if phi > _MIN_PHI else _MIN_PHI

    # --- scoring -----------------------------------------------------------

    def _raw_score(self, x: float, mu: float) -> float:
        """Largest surprise over the scales, as a normal deviate (0 when nothing stands out)."""
        cfg = settings_of(self.config_key)
        stats = self.stats
        n = len(cfg.scales)
        unit = self.unit
        up, down = cfg.up, cfg.down
        best = 0.0
        for j in range(n):
            d = cfg.decays[j]
            s = x + d * stats[j]
            m = mu + d * stats[n + j]
            if m < 1e-9:
                m = 1e-9
            den = stats[3 * n + j]
            phi = stats[2 * n + j] / den if den > 0.0 else _PRIOR_PHI
            if phi < _MIN_PHI:
                phi = _MIN_PHI
            # Quasi-Poisson: S / c behaves like a Poisson count of mean M / c.
            c = unit * cfg.units[j] + phi * m
            xs = s / c
            ms = m / c
            if up and xs > ms:
                # Wilson-Hilferty, as count_tail.poisson_upper_z, inlined for speed.
                z = 3.0 * math.sqrt(xs) * (1.0 - (ms / xs) ** _THIRD - 1.0 / (9.0 * xs))
                if z > best:
                    best = z
            elif down and xs < ms and m >= cfg.down_min_expected:
                xs += 1.0
                z = 3.0 * math.sqrt(xs) * ((ms / xs) ** _THIRD - 1.0 + 1.0 / (9.0 * xs))
                if z > best:
                    best = z
        return best

    def score_one(self, t: float, x: float) -> Scored:
        cfg = settings_of(self.config_key)
        mu = self._profile_at(self._slot_of(t))
        if mu < 0.0:
            mu = 0.0
        raw = self._raw_score(x, mu)
        self._t, self._x, self._mu, self._raw = t, x, mu, raw
        spread = math.sqrt(mu * (self.unit + self._phi(0) * mu))
        first = self.first_t
        if first is None or t - first < cfg.warmup_seconds:
            return Scored(0.0, mu, spread)
        short = self.short + cfg.a_short * (raw - self.short)
        mean = self.calib_mean
        var = self.calib_sq - mean * mean
        sd = math.sqrt(var) if var > _MIN_CALIBRATION_SD**2 else _MIN_CALIBRATION_SD
        deviate = (short - mean) / sd - cfg.score_offset
        return Scored(0.5 * math.erfc(-deviate * _SQRT_HALF), mu, spread)

    # --- learning ----------------------------------------------------------

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        if self._t != t or self._x != x:
            self.score_one(t, x)
        self._t = None
        cfg = settings_of(self.config_key)
        mu = self._mu
        raw = self._raw
        if self.unit and x % 1.0:
            self.unit = 0.0
        if self.first_t is None:
            self.first_t = t
            self.level = x
        self.last_t = t
        # The short average and the recent sums record what happened, so
        # they see every bucket whatever its weight.
        short = self.short = self.short + cfg.a_short * (raw - self.short)
        stats = self.stats
        n = len(cfg.scales)
        if weight > 0.0:
            unit = self.unit
            a = cfg.a_disp * weight
            k = cfg.dispersion_clip
            for j in range(n):
                d = cfg.decays[j]
                s = x + d * stats[j]
                m = mu + d * stats[n + j]
                den = stats[3 * n + j]
                phi = stats[2 * n + j] / den if den > 0.0 else _PRIOR_PHI
                if phi < _MIN_PHI:
                    phi = _MIN_PHI
                u = unit * cfg.units[j]
                # Residuals are clipped so that one burst cannot inflate the spread.
                lim = k * math.sqrt(m * (u + phi * m)) if m > 0.0 else 0.0
                r = s - m
                if r > lim:
                    r = lim
                elif r < -lim:
                    r = -lim
                stats[2 * n + j] += a * (r * r - u * m - stats[2 * n + j])
                stats[3 * n + j] += a * (m * m - stats[3 * n + j])
            # The raw scores of the first hours, before the profile knows the
            # series, say nothing about its normal surprise.
            if t - self.first_t >= 0.5 * cfg.warmup_seconds:
                self._learn_calibration(short, weight)
            spread = math.sqrt(mu * (unit + self._phi(0) * mu))
            if spread < unit:
                spread = unit
            lo = mu - cfg.learn_clip * spread
            hi = mu + cfg.learn_clip * spread
            v = lo if x < lo else hi if x > hi else x
            slot = self._slot_of(t)
            p = self.profile[slot]
            if p != p:
                p = self._profile_at(slot)
            self.profile[slot] = p + cfg.a_profile * weight * (v - p)
            self.level += cfg.a_level * weight * (v - self.level)
        for j in range(n):
            d = cfg.decays[j]
            stats[j] = x + d * stats[j]
            stats[n + j] = mu + d * stats[n + j]

    def _learn_calibration(self, short: float, weight: float) -> None:
        """Long-run mean and spread of the short raw average, with a capped influence of bursts."""
        cfg = settings_of(self.config_key)
        self.learned += weight
        a = cfg.a_calib
        if a * self.learned < 1.0:
            a = 1.0 / self.learned
        a *= weight
        mean = self.calib_mean
        var = self.calib_sq - mean * mean
        sd = math.sqrt(var) if var > _MIN_CALIBRATION_SD**2 else _MIN_CALIBRATION_SD
        cap = mean + cfg.calibration_clip * sd
        v = cap if short > cap and self.learned > 1.0 else short
        self.calib_mean = mean + a * (v - mean)
        self.calib_sq += a * (v * v - self.calib_sq)

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        """Learn the empty buckets in [t_start, t_end) in one step.

        The cost grows with the hours the gap spans, up to two weeks' worth
        of hour slots, never with the number of buckets.
        """
        cfg = settings_of(self.config_key)
        step = cfg.bucket_seconds
        n = int(round((t_end - t_start) / step))
        if n <= 0:
            return
        if self.first_t is None:
            self.first_t = t_start
        # Expectation over the gap, before it is learned: the mean of the
        # profile over the buckets, slot by slot.
        counts = _buckets_per_slot(t_start, n, step)
        keep = 1.0 - cfg.a_profile
        total = 0.0
        profile = self.profile
        for slot, k in counts.items():
            p = self._profile_at(slot)
            total += k * p
            profile[slot] = p * keep**k
        mu = total / n
        self.level *= (1.0 - cfg.a_level) ** n
        # Dispersion and sums: n updates with a zero count and expectation mu.
        stats = self.stats
        ns = len(cfg.scales)
        keep_disp = (1.0 - cfg.a_disp) ** n
        unit = self.unit
        for j in range(ns):
            d = cfg.decays[j]
            m = mu / (1.0 - d) if d < 1.0 else mu
            u = unit * cfg.units[j]
            phi = self._phi(j)
            lim = cfg.dispersion_clip * math.sqrt(m * (u + phi * m)) if m > 0.0 else 0.0
            r = m if m < lim else lim
            stats[2 * ns + j] = stats[2 * ns + j] * keep_disp + (1 - keep_disp) * (r * r - u * m)
            stats[3 * ns + j] = stats[3 * ns + j] * keep_disp + (1 - keep_disp) * m * m
            # The last bucket of the gap is pushed below, as learn_one would.
            dn1 = d ** (n - 1)
            stats[j] *= dn1
            stats[ns + j] = stats[ns + j] * dn1 + mu * (1.0 - dn1) / (1.0 - d)
        # The raw score of an empty bucket is (about) the same through the gap.
        raw = self._raw_score(0.0, mu)
        keep_short = (1.0 - cfg.a_short) ** n
        self.short = raw + (self.short - raw) * keep_short
        if t_end - self.first_t >= 0.5 * cfg.warmup_seconds:
            if cfg.a_calib * (self.learned + n) < 1.0:
                keep_calib = self.learned / (self.learned + n)  # still plain averages
            else:
                keep_calib = (1.0 - cfg.a_calib) ** n
            self.calib_mean = raw + (self.calib_mean - raw) * keep_calib
            self.calib_sq = raw * raw + (self.calib_sq - raw * raw) * keep_calib
            self.learned += n
        for j in range(ns):
            d = cfg.decays[j]
            stats[j] = d * stats[j]
            stats[ns + j] = mu + d * stats[ns + j]
        self.last_t = t_start + (n - 1) * step
        self._t = None


def _buckets_per_slot(t_start: float, n: int, step: float) -> dict[int, int]:
    """How many of the `n` buckets starting at `t_start`, `step` apart, fall in each slot.

    Walks hour by hour, at most one week plus one week's pattern repeated, so
    the cost is bounded by the number of slots, not the number of buckets.

    >>> _buckets_per_slot(1_767_571_200, 150, 60)  # Monday 00:00 UTC, 150 minutes
    {0: 60, 1: 60, 2: 30}
    """
    counts: dict[int, int] = {}
    end = t_start + n * step
    weeks = int((end - t_start) // _WEEK)
    if weeks >= 2:
        # Whole weeks repeat the pattern of the first one.
        for slot, k in _buckets_per_slot(t_start, int(round(_WEEK / step)), step).items():
            counts[slot] = k * weeks
        t_start += weeks * _WEEK
        n -= int(round(weeks * _WEEK / step))
        if n <= 0:
            return counts
    hour = (t_start // _HOUR) * _HOUR
    done = 0
    while done < n:
        # Buckets whose start lies in [hour, hour + 1h).
        upto = min(n, math.ceil((hour + _HOUR - t_start) / step))
        if upto > done:
            slot = calendar_slot(hour)
            counts[slot] = counts.get(slot, 0) + upto - done
            done = upto
        hour += _HOUR
    return counts
