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
   quasi-Poisson tail (see `_seasonal_kernel`) whose overdispersion is estimated online
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
running statistics per series, and all the series of a bucket stepped in
one call (see `bank`), while each river statistic is a separate object of
about 180 bytes stepped by its own call. The recursions are river's
(`EWMean(fading_factor=a)`: `m += a * (x - m)`; the unit tests check them
against river), kept as columns of one NumPy matrix that a compiled kernel
(`_seasonal_kernel.pyx`) steps row by row. Nor the rest of river: `proba`
has no Poisson or negative binomial (the kernel's tail stands in),
`time_series.HoltWinters` has one season length, no weights and no gap
update, and `anomaly.GaussianScorer` is the Gaussian z this model replaces.
"""

from __future__ import annotations

import ast
import base64
import math

import numpy as np

from stream_detector.core.models._seasonal_kernel import PROFILE_SLOTS as SLOTS
from stream_detector.core.models._seasonal_kernel import SeasonalKernel, rows_within
from stream_detector.core.models.bank import BankScores, SingleSeries

_HOUR = 3600.0
_DAY = 86_400.0
DIRECTIONS = ("up", "down", "both")


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
        "slot_prior_reports",
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
        slot_prior_reports: float,
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
        self.slot_prior_reports = float(slot_prior_reports)


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
    "slot_prior_reports": 0.0,
}


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
    - `slot_prior_reports` (0): a slot seen for the first time on either day
      type starts from the series' level, worth this many reports, and is a
      plain average of its buckets until it has seen `1 / a_profile` of them;
      0 makes it an EW mean from its first bucket. The detector's bank uses 3
      (a night slot that borrowed the evening's level learns its own within
      the hour); the single-series score keeps 0, on which it was calibrated.

    Each series is one row of a float64 matrix (`row_floats` numbers, about
    600 bytes with the default scales, laid out as `SeasonalKernel` says),
    and the compiled kernel steps a bucket's rows in one call.

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
        self.kernel = kernel = SeasonalKernel(self.settings)
        self.bucket_seconds = self.settings.bucket_seconds
        self.row_floats = kernel.row_floats
        self.data = np.empty((0, self.row_floats))
        self.size = 0
        # A row with nothing learned: no profile yet, unit scale, no times.
        self._fresh_row = fresh = np.zeros(self.row_floats)
        fresh[:SLOTS] = math.nan
        fresh[[kernel.first_t, kernel.last_t]] = math.nan
        fresh[kernel.unit] = 1.0
        # What score() computed, so that learn() of the same bucket reuses it.
        self._scored: tuple | None = None

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
        self.data[row] = self._fresh_row
        self.size += 1
        return row

    def score(
        self, rows: np.ndarray, t: float, x: np.ndarray, catch_up: bool = False
    ) -> BankScores:
        rows = self._checked_rows(rows)
        _check_times(t)
        x = np.ascontiguousarray(x, dtype=float)
        n = len(rows)
        if x.shape != (n,):
            raise ValueError(f"{len(x)} values for {n} rows")
        score, expected, spread, raw = (np.empty(n) for _ in range(4))
        # With catch_up the kernel stores each row's gap at once; learn() must follow.
        self.kernel.score(self.data, rows, float(t), x, catch_up, score, expected, spread, raw)
        self._scored = (rows, float(t), x, expected, raw)
        return BankScores(score, expected, spread)

    def learn(self, weights: np.ndarray | None = None) -> None:
        assert self._scored is not None, "learn() follows score()"
        rows, t, x, expected, raw = self._scored
        self._scored = None
        w = np.ones(len(rows)) if weights is None else np.ascontiguousarray(weights, dtype=float)
        if w.shape != rows.shape:
            raise ValueError(f"{len(w)} weights for {len(rows)} rows")
        self.kernel.learn(self.data, rows, t, x, expected, raw, w)

    def learn_zeros(self, rows: np.ndarray, t_start: np.ndarray, t_end: float) -> None:
        """Learn the empty buckets in [t_start[i], t_end) of each row in one step.

        The cost grows with the number of rows, never with the number of buckets.
        """
        rows = self._checked_rows(rows)
        t_start = np.ascontiguousarray(t_start, dtype=float)
        _check_times(t_end, t_start)
        if t_start.shape != rows.shape:
            raise ValueError(f"{len(t_start)} start times for {len(rows)} rows")
        self.kernel.learn_zeros(self.data, rows, t_start, float(t_end))
        self._scored = None

    def _checked_rows(self, rows: np.ndarray) -> np.ndarray:
        """Row numbers the compiled kernel may index without checking each (it does not)."""
        rows = np.ascontiguousarray(rows, dtype=np.intp)
        if not rows_within(rows, self.size):
            raise IndexError(f"rows must be in 0..{self.size - 1}")
        return rows

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


# Epoch seconds the kernel's hour arithmetic takes (about 31 million years either way).
_MAX_ABS_SECONDS = 1e15


def _check_times(t: float, more: np.ndarray | None = None) -> None:
    """Refuse times the kernel cannot place in a calendar slot (NaN, infinite, absurd)."""
    if not abs(t) < _MAX_ABS_SECONDS or (
        more is not None and len(more) and not (np.abs(more) < _MAX_ABS_SECONDS).all()
    ):
        raise ValueError("times must be finite epoch seconds")


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
        return float(self.bank.data[0, self.bank.kernel.unit])

    @property
    def last_t(self) -> float:
        return float(self.bank.data[0, self.bank.kernel.last_t])
