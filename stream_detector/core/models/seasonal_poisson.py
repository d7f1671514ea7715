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
closed-form updates over a gap of empty buckets (`learn_zeros`), about 80
running statistics per series, and all the series of a bucket updated in
one array operation (see `bank`), while each river statistic is a separate
object of about 180 bytes stepped by its own call. The recursions are
river's (`EWMean(fading_factor=a)`: `m += a * (x - m)`; the unit tests
check them against river), kept as columns of one NumPy matrix. Nor the
rest of river: `proba` has no Poisson or negative binomial (`count_tail`
stands in), `time_series.HoltWinters` has one season length, no weights and
no gap update, and `anomaly.GaussianScorer` is the Gaussian z this model
replaces.
"""

from __future__ import annotations

import ast
import base64
import math

import numpy as np

from stream_detector.core.models.bank import BankScores, SingleSeries
from stream_detector.core.models.count_tail import normal_cdf, poisson_lower_z, poisson_upper_z

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


# Column layout of a series' row in the bank (n = number of scales):
# 48 profile slots (NaN until seen), then per scale the EW sums of counts,
# the EW sums of expectations, the EW mean of the clipped squared residual
# minus its Poisson part and the EW mean of the squared expectation (the
# last two's ratio is the dispersion phi of that scale), then the scalars.
_SCALARS = ("level", "unit", "short", "calib_mean", "calib_sq", "learned", "first_t", "last_t")
# The same hour of the other day type, for each slot.
_OTHER_DAY_TYPE = np.r_[np.arange(24, 48), np.arange(0, 24)]


def _hour_slot_table() -> tuple[np.ndarray, np.ndarray]:
    """Hours per slot among the first r hours of an epoch week (r = 0..168), and per whole week.

    Hour 0 of the epoch is a Thursday 00:00 UTC, so the table is indexed by
    epoch hour modulo 168.
    """
    table = np.zeros((169, SLOTS))
    for r in range(168):
        table[r + 1] = table[r]
        table[r + 1, calendar_slot(r * _HOUR)] += 1
    return table, table[168].copy()


_HOURS_BEFORE, _HOURS_PER_WEEK = _hour_slot_table()


def _powers(base: float | np.ndarray, n: np.ndarray) -> np.ndarray:
    """`base ** n` for bases in [0, 1) and exponents n >= 0, through `exp`, which NumPy
    vectorises while its float `power` goes element by element (0 ** 0 is 1, as with `**`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.exp(n * np.log(base))
    return np.where(n == 0.0, 1.0, out)


def _slots_of_hours(hours: np.ndarray) -> np.ndarray:
    """Vectorised `calendar_slot` of epoch hour numbers."""
    day = hours // 24
    return hours % 24 + 24 * ((day + _EPOCH_WEEKDAY) % 7 >= 5)


class SeasonalPoissonBank:
    """Counts against an hour-of-day x weekday/weekend profile, at several scales, for many series.

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

    Each series is one row of a float64 matrix (`row_floats` numbers, about
    600 bytes with the default scales), so a bucket's rows are gathered,
    scored and learned with a few dozen array operations whatever their number.

    >>> bank = SeasonalPoissonBank(bucket_seconds=300, warmup_seconds=3600)
    >>> quiet, busy = bank.add(), bank.add()
    >>> rows = np.array([quiet, busy])
    >>> t0 = 1_767_571_200  # Monday 00:00 UTC
    >>> for i in range(3000):
    ...     _ = bank.score(rows, t0 + 300 * i, np.array([2.0, 20 + (i * 7) % 9]))
    ...     bank.learn()
    >>> s = bank.score(rows, t0 + 300 * 3000, np.array([2.0, 300.0]))  # busy: a 12-fold burst
    >>> (s.score > 0.9999).tolist(), s.expected.round(0).tolist()
    ([False, True], [2.0, 23.0])
    """

    def __init__(self, bucket_seconds: float, direction: str = "up", **options):
        self._configure(settings_key(bucket_seconds, direction, **options))

    def _configure(self, config_key: str) -> None:
        self.config_key = config_key
        cfg = self.settings
        self.bucket_seconds = cfg.bucket_seconds
        n = len(cfg.scales)
        self.sums = slice(SLOTS, SLOTS + n)
        self.expected_sums = slice(SLOTS + n, SLOTS + 2 * n)
        self.residuals = slice(SLOTS + 2 * n, SLOTS + 3 * n)
        self.squares = slice(SLOTS + 3 * n, SLOTS + 4 * n)
        (self.level, self.unit, self.short, self.calib_mean, self.calib_sq, self.learned,
         self.first_t, self.last_t) = range(SLOTS + 4 * n, SLOTS + 4 * n + len(_SCALARS))
        self.row_floats = SLOTS + 4 * n + len(_SCALARS)
        self.decays = np.array(cfg.decays)
        self.units = np.array(cfg.units)
        self.data = np.empty((0, self.row_floats))
        self.size = 0
        # What score() computed, so that learn() of the same bucket reuses it.
        self._scored: tuple | None = None
        # Buckets fit whole hours when the width divides an hour; then a gap's
        # buckets per slot have a closed form (see _slot_counts).
        self._per_hour = _HOUR / cfg.bucket_seconds
        self._hour_aligned = self._per_hour.is_integer()

    def __getstate__(self) -> dict:
        return self.state()

    def __setstate__(self, state: dict) -> None:
        self._configure(state["config"])
        self.load_state(state)

    @property
    def settings(self) -> SeasonalPoissonSettings:
        return settings_of(self.config_key)

    def __len__(self) -> int:
        return self.size

    def add(self) -> int:
        if self.size == len(self.data):
            grown = np.empty((max(16, 2 * len(self.data)), self.row_floats))
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        row = self.size
        self.data[row] = 0.0
        self.data[row, :SLOTS] = math.nan
        self.data[row, self.unit] = 1.0
        self.data[row, self.first_t] = math.nan
        self.data[row, self.last_t] = math.nan
        self.size += 1
        return row

    # --- expectation -----------------------------------------------------

    def _profile_at(self, block: np.ndarray, slot: int) -> np.ndarray:
        """Each row's expectation for `slot`: the slot, else the other day type, else the level."""
        p = block[:, slot]
        other = block[:, _OTHER_DAY_TYPE[slot]]
        return np.where(p == p, p, np.where(other == other, other, block[:, self.level]))

    def _profiles_filled(self, block: np.ndarray) -> np.ndarray:
        """Every slot of every row, unseen slots filled as `_profile_at` fills them."""
        p = block[:, :SLOTS]
        other = p[:, _OTHER_DAY_TYPE]
        return np.where(p == p, p, np.where(other == other, other, block[:, self.level, None]))

    def _phi(self, block: np.ndarray) -> np.ndarray:
        """Overdispersion per row and scale."""
        den = block[:, self.squares]
        with np.errstate(divide="ignore", invalid="ignore"):
            phi = np.where(den > 0.0, block[:, self.residuals] / den, _PRIOR_PHI)
        return np.maximum(phi, _MIN_PHI)

    # --- scoring -----------------------------------------------------------

    def _raw_score(self, block: np.ndarray, x: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Largest surprise over the scales, as a normal deviate (0 when nothing stands out)."""
        cfg = self.settings
        d = self.decays
        s = x[:, None] + d * block[:, self.sums]
        m = np.maximum(mu[:, None] + d * block[:, self.expected_sums], 1e-9)
        # Quasi-Poisson: S / c behaves like a Poisson count of mean M / c.
        c = block[:, self.unit, None] * self.units + self._phi(block) * m
        xs = s / c
        ms = m / c
        best = np.zeros(len(x))
        if cfg.up:
            z = poisson_upper_z(xs, ms)
            best = np.maximum(best, np.where(xs > ms, z, 0.0).max(axis=1))
        if cfg.down:
            z = poisson_lower_z(xs, ms)
            low = (xs < ms) & (m >= cfg.down_min_expected)
            best = np.maximum(best, np.where(low, z, 0.0).max(axis=1))
        return best

    def score(
        self, rows: np.ndarray, t: float, x: np.ndarray, catch_up: bool = False
    ) -> BankScores:
        cfg = self.settings
        block = self.data[rows]
        if catch_up:
            # On the gathered rows, so that learn() stores them with the bucket.
            step = cfg.bucket_seconds
            last = block[:, self.last_t]
            behind = last < t - step  # NaN (never learned) compares False
            if behind.all():
                self._learn_zeros_block(block, last + step, np.rint((t - last) / step) - 1.0, t)
            elif behind.any():
                part = block[behind]
                start = last[behind] + step
                self._learn_zeros_block(part, start, np.rint((t - start) / step), t)
                block[behind] = part
        mu = np.maximum(self._profile_at(block, calendar_slot(t)), 0.0)
        raw = self._raw_score(block, x, mu)
        self._scored = (rows, t, x, mu, raw, block)
        unit = block[:, self.unit]
        spread = np.sqrt(mu * (unit + self._phi(block)[:, 0] * mu))
        # NaN (nothing learned yet) compares False: still warming up.
        warm = (t - block[:, self.first_t]) >= cfg.warmup_seconds
        if not warm.any():
            return BankScores(np.zeros(len(rows)), mu, spread)
        short = block[:, self.short] + cfg.a_short * (raw - block[:, self.short])
        mean = block[:, self.calib_mean]
        sd = np.sqrt(np.maximum(block[:, self.calib_sq] - mean * mean, _MIN_CALIBRATION_SD**2))
        deviate = (short - mean) / sd - cfg.score_offset
        return BankScores(np.where(warm, normal_cdf(deviate), 0.0), mu, spread)

    # --- learning ----------------------------------------------------------

    def learn(self, weights: np.ndarray | None = None) -> None:
        assert self._scored is not None, "learn() follows score()"
        rows, t, x, mu, raw, block = self._scored
        self._scored = None
        cfg = self.settings
        w = np.ones(len(rows)) if weights is None else weights
        unit = block[:, self.unit]
        unit[x % 1.0 != 0.0] = 0.0  # a fraction: a metric, not counts
        new = block[:, self.first_t] != block[:, self.first_t]
        if new.any():
            block[new, self.first_t] = t
            block[new, self.level] = x[new]
        block[:, self.last_t] = t
        # The short average and the recent sums record what happened, so
        # they see every bucket whatever its weight.
        block[:, self.short] += cfg.a_short * (raw - block[:, self.short])
        learning = w > 0.0
        if learning.all():
            self._learn_weighted(block, t, x, mu, w)
        elif learning.any():
            part = block[learning]
            self._learn_weighted(part, t, x[learning], mu[learning], w[learning])
            block[learning] = part
        d = self.decays
        block[:, self.sums] = x[:, None] + d * block[:, self.sums]
        block[:, self.expected_sums] = mu[:, None] + d * block[:, self.expected_sums]
        self.data[rows] = block

    def _learn_weighted(
        self, block: np.ndarray, t: float, x: np.ndarray, mu: np.ndarray, w: np.ndarray
    ) -> None:
        """Dispersion, calibration and profile updates of rows learning with weight w > 0."""
        cfg = self.settings
        d = self.decays
        unit = block[:, self.unit]
        u = unit[:, None] * self.units
        s = x[:, None] + d * block[:, self.sums]
        m = mu[:, None] + d * block[:, self.expected_sums]
        # Residuals are clipped so that one burst cannot inflate the spread.
        lim = cfg.dispersion_clip * np.sqrt(np.maximum(m * (u + self._phi(block) * m), 0.0))
        r = np.clip(s - m, -lim, lim)
        a = (cfg.a_disp * w)[:, None]
        residuals = block[:, self.residuals]
        block[:, self.residuals] = residuals + a * (r * r - u * m - residuals)
        squares = block[:, self.squares]
        block[:, self.squares] = squares + a * (m * m - squares)
        # The raw scores of the first hours, before the profile knows the
        # series, say nothing about its normal surprise.
        calibrating = (t - block[:, self.first_t]) >= 0.5 * cfg.warmup_seconds
        if calibrating.any():
            self._learn_calibration(block, calibrating, w)
        spread = np.maximum(np.sqrt(mu * (unit + self._phi(block)[:, 0] * mu)), unit)
        v = np.clip(x, mu - cfg.learn_clip * spread, mu + cfg.learn_clip * spread)
        slot = calendar_slot(t)
        p = self._profile_at(block, slot)
        block[:, slot] = p + cfg.a_profile * w * (v - p)
        block[:, self.level] += cfg.a_level * w * (v - block[:, self.level])

    def _learn_calibration(self, block: np.ndarray, mask: np.ndarray, w: np.ndarray) -> None:
        """Long-run mean and spread of the short raw average, with a capped influence of bursts.

        Until a row has learned 1 / a_calib buckets its statistics are plain
        averages: an EW mean started at zero would understate the spread for
        days and make a new series jumpy.
        """
        cfg = self.settings
        learned = block[:, self.learned] + np.where(mask, w, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(cfg.a_calib * learned < 1.0, 1.0 / learned, cfg.a_calib) * w
        mean = block[:, self.calib_mean]
        sq = block[:, self.calib_sq]
        sd = np.sqrt(np.maximum(sq - mean * mean, _MIN_CALIBRATION_SD**2))
        cap = mean + cfg.calibration_clip * sd
        short = block[:, self.short]
        v = np.where((short > cap) & (learned > 1.0), cap, short)
        with np.errstate(invalid="ignore"):
            block[:, self.calib_mean] = np.where(mask, mean + a * (v - mean), mean)
            block[:, self.calib_sq] = np.where(mask, sq + a * (v * v - sq), sq)
        block[:, self.learned] = learned

    def learn_zeros(self, rows: np.ndarray, t_start: np.ndarray, t_end: float) -> None:
        """Learn the empty buckets in [t_start[i], t_end) of each row in one step.

        The cost grows with the number of rows, never with the number of buckets.
        """
        cfg = self.settings
        step = cfg.bucket_seconds
        n = np.rint((t_end - t_start) / step)
        if not (n > 0).all():
            keep_rows = n > 0
            rows, t_start, n = rows[keep_rows], t_start[keep_rows], n[keep_rows]
            if not len(rows):
                return
        block = self.data[rows]
        self._learn_zeros_block(block, t_start, n, t_end)
        self.data[rows] = block
        self._scored = None

    def _learn_zeros_block(
        self, block: np.ndarray, t_start: np.ndarray, n: np.ndarray, t_end: float
    ) -> None:
        """`learn_zeros` on gathered rows, in place: n[i] > 0 empty buckets from t_start[i]."""
        cfg = self.settings
        step = cfg.bucket_seconds
        first = block[:, self.first_t]
        block[:, self.first_t] = np.where(first == first, first, t_start)
        mu = self._learn_zero_profile(block, t_start, n, t_end)
        block[:, self.level] *= _powers(1.0 - cfg.a_level, n)
        # Dispersion and sums: n updates with a zero count and expectation mu.
        d = self.decays
        keep_disp = _powers(1.0 - cfg.a_disp, n)[:, None]
        m = mu[:, None] / (1.0 - d)
        u = block[:, self.unit, None] * self.units
        lim = cfg.dispersion_clip * np.sqrt(m * (u + self._phi(block) * m))
        r = np.minimum(m, lim)
        block[:, self.residuals] = (
            block[:, self.residuals] * keep_disp + (1.0 - keep_disp) * (r * r - u * m)
        )
        block[:, self.squares] = block[:, self.squares] * keep_disp + (1.0 - keep_disp) * m * m
        # The last bucket of the gap is pushed below, as learn() would.
        dn1 = _powers(d, n[:, None] - 1.0)
        block[:, self.sums] *= dn1
        block[:, self.expected_sums] = (
            block[:, self.expected_sums] * dn1 + mu[:, None] * (1.0 - dn1) / (1.0 - d)
        )
        # The raw score of an empty bucket is (about) the same through the gap.
        raw = self._raw_score(block, np.zeros(len(n)), mu)
        block[:, self.short] = raw + (block[:, self.short] - raw) * _powers(1.0 - cfg.a_short, n)
        calibrating = t_end - block[:, self.first_t] >= 0.5 * cfg.warmup_seconds
        if calibrating.any():
            learned = block[:, self.learned]
            with np.errstate(divide="ignore", invalid="ignore"):
                keep_calib = np.where(
                    cfg.a_calib * (learned + n) < 1.0,
                    learned / (learned + n),  # still plain averages
                    _powers(1.0 - cfg.a_calib, n),
                )
            keep_calib = np.where(calibrating, keep_calib, 1.0)
            mean = block[:, self.calib_mean]
            block[:, self.calib_mean] = np.where(calibrating, raw + (mean - raw) * keep_calib, mean)
            sq = block[:, self.calib_sq]
            block[:, self.calib_sq] = np.where(
                calibrating, raw * raw + (sq - raw * raw) * keep_calib, sq
            )
            block[:, self.learned] = learned + np.where(calibrating, n, 0.0)
        block[:, self.sums] *= d
        block[:, self.expected_sums] = mu[:, None] + d * block[:, self.expected_sums]
        block[:, self.last_t] = t_start + (n - 1.0) * step

    def _learn_zero_profile(
        self, block: np.ndarray, t_start: np.ndarray, n: np.ndarray, t_end: float
    ) -> np.ndarray:
        """Decay each row's profile slots by the empty buckets of its gap; returns the gap's
        expectation, the mean of the profile over its buckets (before they are learned)."""
        keep = 1.0 - self.settings.a_profile
        mu = np.empty(len(n))
        # Most gaps of an active series lie within one clock hour, so within
        # one slot: a column per row instead of all 48.
        hours = t_start // _HOUR
        one_hour = hours == (t_end - self.bucket_seconds) // _HOUR
        if self._hour_aligned and one_hour.any():
            part = block[one_hour]
            index = np.arange(len(part))
            slots = _slots_of_hours(hours[one_hour].astype(np.int64))
            p = part[index, slots]
            other = part[index, _OTHER_DAY_TYPE[slots]]
            p = np.where(p == p, p, np.where(other == other, other, part[:, self.level]))
            part[index, slots] = p * _powers(keep, n[one_hour])
            block[one_hour] = part
            mu[one_hour] = p
            if one_hour.all():
                return mu
        spanning = ~one_hour if self._hour_aligned else np.ones(len(n), dtype=bool)
        part = block[spanning]
        counts = self._slot_counts(t_start[spanning], n[spanning], t_end)
        filled = self._profiles_filled(part)
        mu[spanning] = (counts * filled).sum(axis=1) / n[spanning]
        part[:, :SLOTS] = np.where(counts > 0, filled * _powers(keep, counts), part[:, :SLOTS])
        block[spanning] = part
        return mu

    def _slot_counts(self, t_start: np.ndarray, n: np.ndarray, t_end: float) -> np.ndarray:
        """Buckets per profile slot in each row's gap, as a (rows x 48) array."""
        if not self._hour_aligned:
            counts = np.zeros((len(n), SLOTS))
            for i, (start, k) in enumerate(zip(t_start.tolist(), n.tolist(), strict=True)):
                for slot, c in _buckets_per_slot(start, int(k), self.bucket_seconds).items():
                    counts[i, slot] = c
            return counts
        # Buckets of each slot before time T: the whole hours before T's hour
        # (per slot, from a week table), plus the buckets of T's own hour.
        end = self._buckets_before(np.array([t_end]))
        return end - self._buckets_before(t_start)

    def _buckets_before(self, times: np.ndarray) -> np.ndarray:
        hours = (times // _HOUR).astype(np.int64)
        whole = (hours // 168)[:, None] * _HOURS_PER_WEEK + _HOURS_BEFORE[hours % 168]
        counts = whole * self._per_hour
        counts[np.arange(len(hours)), _slots_of_hours(hours)] += (times - hours * _HOUR) / (
            self.bucket_seconds
        )
        return counts

    # --- state -------------------------------------------------------------

    def state(self) -> dict:
        rows = np.ascontiguousarray(self.data[: self.size])
        return {"config": self.config_key, "rows": self.size,
                "data": base64.b64encode(rows.tobytes()).decode()}

    def load_state(self, state: dict) -> None:
        if state["config"] != self.config_key:
            raise ValueError(f"stored model settings {state['config']} are not {self.config_key}")
        data = np.frombuffer(base64.b64decode(state["data"]), dtype=np.float64)
        self.data = data.reshape(state["rows"], self.row_floats).copy()
        self.size = state["rows"]
        self._scored = None


class SeasonalPoissonModel(SingleSeries):
    """One series' `SeasonalPoissonBank`, with the per-series protocol; same arguments.

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

    __slots__ = ()

    def __init__(self, bucket_seconds: float, direction: str = "up", **options):
        super().__init__(SeasonalPoissonBank(bucket_seconds, direction, **options))

    @property
    def settings(self) -> SeasonalPoissonSettings:
        return self.bank.settings

    @property
    def profile(self) -> np.ndarray:
        return self.bank.data[0, :SLOTS]

    @property
    def unit(self) -> float:
        return float(self.bank.data[0, self.bank.unit])

    @property
    def last_t(self) -> float:
        return float(self.bank.data[0, self.bank.last_t])


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
