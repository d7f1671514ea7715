"""General metric model: any real-valued series (CPU percent, latency, bytes, temperatures).

What one series' model does per row:

1. Two forecasts of the value, each with its own robust error:
   - `level`: an exponentially weighted (EW) mean of recent values (half-life
     `level_halflife_seconds`), which follows a series without rhythm and
     recovers from a level shift in hours;
   - `seasonal`: a time-of-day profile (one EW mean per slot of the day,
     slots no narrower than `min_slot_seconds`), which follows a daily rhythm.
     (Holt-Winters' additive form, profile plus an EW level offset, followed
     a shift so fast that it hid it: 3.5 NAB points lower on the 38 files.)
   The forecast used is the one with the smaller recent mean absolute error;
   its error, times sqrt(pi/2), is the spread (one standard deviation of a
   Gaussian error), floored so that a series constant for a long stretch
   does not make its first change an infinite surprise.
2. Surprise at several time scales. The residual `z = (x - forecast) / spread`
   and its EW means with effective lengths `scales` (in rows) are normal
   deviates once divided by their standard deviation under independent
   N(0, 1) residuals; a sharp spike shows at scale 1, a level shift or a
   drift in the longer means. A rise in the mean square of `z` shows a change
   of noise (denser spikes, a noisier machine). The raw surprise is the
   largest of these deviates in the scored direction.
3. Calibration, as in the count model (after Numenta's anomaly likelihood):
   a short EW average of the raw surprise against its long-run EW mean and
   spread on this series, and `score = Phi(deviate - score_offset)`. A
   series whose forecast fits badly raises its own bar, so one threshold
   suits tidy and ragged series alike.

Learning is robust as in the count model: the value is learned clipped to
`forecast +- learn_clip * spread`, so a burst moves neither forecast much,
while a lasting shift is followed at a bounded pace.

The recurrences are river's (`stats.EWMean(fading_factor=a)`: `m += a * (x - m)`;
the unit tests check them against river), kept as plain floats and one
`array` of slot means so that a model pickles, snapshots through
`PerSeriesBank` and costs one Python call per row, where a river statistic
per running mean would be ten objects of about 180 bytes each.
"""

from __future__ import annotations

import math
from array import array

from stream_detector.core.models.base import Scored

_DAY = 86_400.0
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)
_NAN = math.nan
DIRECTIONS = ("up", "down", "both")


def _fading(halflife_rows: float) -> float:
    """Weight of the newest value in an EW mean whose half-life is `halflife_rows` updates."""
    return 1.0 - 0.5 ** (1.0 / max(halflife_rows, 1e-9))


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


DEFAULTS: dict = {
    "warmup_seconds": _DAY,
    "scales": (1.0, 4.0, 16.0, 64.0),
    "noise_scale": 16.0,
    "level_halflife_seconds": 1800.0,
    "profile_halflife_days": 2.0,
    "error_halflife_seconds": _DAY,
    "short_halflife_rows": 3.0,
    "calibration_halflife_days": 3.0,
    "min_slot_seconds": 300.0,
    "learn_clip": 4.0,
    "z_clip": 6.0,
    "calibration_clip": 6.0,
    "score_offset": 1.6,
    "relative_floor": 1e-3,
}


class MetricModel:
    """Robust two-forecast model of one real-valued series, scored two-sided by default.

    `bucket_seconds` is the row spacing (half-lives given in time become
    per-row weights with it); `direction` is "up", "down" or "both". Keyword
    options, with defaults in `DEFAULTS`, are the half-lives and clips the
    module docstring describes; the score is 0 for the first `warmup_seconds`.

    >>> import random
    >>> rng = random.Random(7)
    >>> m = MetricModel(bucket_seconds=300)
    >>> for i in range(2000):  # CPU percent around 40, noise 2
    ...     m.learn_one(300.0 * i, 40 + rng.gauss(0, 2))
    >>> s = m.score_one(300.0 * 2000, 41.0)
    >>> round(s.expected), s.score < 0.5
    (40, True)
    >>> for i in range(2000, 2003):  # a climb to 60: a few rows make it a page
    ...     s = m.score_one(300.0 * i, 60.0)
    ...     m.learn_one(300.0 * i, 60.0)
    >>> s.score > 0.999
    True
    """

    __slots__ = (
        "bucket_seconds", "direction", "options",
        "first_t", "seen", "last_x",
        "level", "profile",
        "err_level", "err_seasonal", "step",
        "means", "noise",
        "short", "calib_n", "calib_mean", "calib_var",
    )

    def __init__(self, bucket_seconds: float, direction: str = "both", **options):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        if not bucket_seconds > 0:
            raise ValueError(f"bucket_seconds must be positive, not {bucket_seconds!r}")
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown MetricModel option(s): {', '.join(sorted(unknown))}")
        self.bucket_seconds = float(bucket_seconds)
        self.direction = direction
        self.options = dict(options)
        c = _constants(self.bucket_seconds, tuple(sorted(self.options.items())))
        self.first_t = _NAN
        self.seen = 0
        self.last_x = _NAN
        self.level = _NAN
        self.profile = array("d", [_NAN]) * c.slots
        self.err_level = 0.0
        self.err_seasonal = 0.0
        self.step = 0.0
        self.means = array("d", [0.0]) * len(c.decays)
        self.noise = 1.0
        self.short = 0.0
        self.calib_n = 0
        self.calib_mean = 0.0
        self.calib_var = 0.0

    # --- the per-series protocol ---------------------------------------

    def score_one(self, t: float, x: float) -> Scored:
        c = self._c()
        forecast, spread, _, _ = self._forecast(c, t)
        if self.seen == 0:
            return Scored(0.0, x, 0.0)
        raw = self._raw(c, x, forecast, spread)[0]
        if not t - self.first_t >= c.warmup:
            return Scored(0.0, forecast, spread)
        short = self.short + c.a_short * (raw - self.short)
        deviate = (short - self.calib_mean) / max(math.sqrt(self.calib_var), c.calib_sd_floor)
        return Scored(_phi(deviate - c.score_offset), forecast, spread)

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        if weight <= 0.0:
            return
        c = self._c()
        if self.seen == 0:
            self.first_t = t
            self.level = x
            self.last_x = x
            self.profile[_slot(c, t)] = x
            self.seen = 1
            return
        forecast, spread, seasonal, slot = self._forecast(c, t)
        raw, means, noise = self._raw(c, x, forecast, spread)
        # Calibration statistics: learned from half-way through the warm-up (the
        # raw surprise of the first hours only says that the profile is empty).
        self.short += c.a_short * (raw - self.short)
        if t - self.first_t >= 0.5 * c.warmup:
            sd = max(math.sqrt(self.calib_var), c.calib_sd_floor)
            clipped = min(self.short, self.calib_mean + c.calibration_clip * sd)
            self.calib_n += 1
            # A plain average until it has seen 1 / a values: an EW mean started
            # at zero would understate the spread for days.
            a = max(c.a_calib, 1.0 / self.calib_n) * weight
            diff = clipped - self.calib_mean
            self.calib_mean += a * diff
            self.calib_var = (1.0 - a) * (self.calib_var + a * diff * diff)
        for k, m in enumerate(means):
            self.means[k] = m
        self.noise = noise
        # Robust learning: the value as far as learn_clip spreads from each forecast.
        lim = c.learn_clip * spread
        xl = min(max(x, self.level - lim), self.level + lim)
        # Plain averages of the errors until they have seen 1 / a rows, as for
        # the calibration: an EW mean started at zero would make early z huge.
        a_err = max(c.a_err, 1.0 / self.seen) * weight
        self.err_level += a_err * (min(abs(x - self.level), lim) - self.err_level)
        if seasonal == seasonal:
            xs = min(max(x, seasonal - lim), seasonal + lim)
            self.err_seasonal += a_err * (abs(xs - seasonal) - self.err_seasonal)
            self.profile[slot] = seasonal + c.a_profile * weight * (xs - seasonal)
        else:
            self.err_seasonal += a_err * (self.err_level - self.err_seasonal)
            self.profile[slot] = xl
        self.level += c.a_level * weight * (xl - self.level)
        dx = abs(x - self.last_x)
        if dx > 0:
            self.step += a_err * (dx - self.step) if self.step else dx
        self.last_x = x
        self.seen += 1

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        """Learn a value of 0 for every bucket in [t_start, t_end), one by one.

        A metric has no natural "nothing happened" value; this serves the bank
        protocol for series that go quiet, and costs one step per bucket.
        """
        t = t_start
        while t < t_end:
            self.learn_one(t, 0.0)
            t += self.bucket_seconds

    # --- the arithmetic ------------------------------------------------

    def _c(self) -> _Constants:
        return _constants(self.bucket_seconds, tuple(sorted(self.options.items())))

    def _forecast(self, c: _Constants, t: float) -> tuple[float, float, float, int]:
        """The forecast used, its spread, the seasonal forecast (NaN if none) and the slot."""
        slot = _slot(c, t)
        seasonal = self.profile[slot]
        if seasonal == seasonal and self.err_seasonal < self.err_level:
            forecast, err = seasonal, self.err_seasonal
        else:
            forecast, err = self.level, self.err_level
        floor = max(c.relative_floor * abs(forecast), 0.5 * self.step, 1e-12)
        return forecast, max(_SQRT_HALF_PI * err, floor), seasonal, slot

    def _raw(
        self, c: _Constants, x: float, forecast: float, spread: float
    ) -> tuple[float, list[float], float]:
        """The raw surprise, as a normal deviate, and the updated multi-scale means."""
        z = max(-c.z_clip, min(c.z_clip, (x - forecast) / spread))
        means = [d * m + (1.0 - d) * z for d, m in zip(c.decays, self.means, strict=True)]
        noise = c.noise_decay * self.noise + (1.0 - c.noise_decay) * z * z
        up = down = 0.0
        for m, unit in zip(means, c.units, strict=True):
            dev = m / unit
            up, down = max(up, dev), max(down, -dev)
        noisy = (noise - 1.0) / c.noise_unit
        if self.direction == "up":
            raw = up
        elif self.direction == "down":
            raw = down
        else:
            raw = max(up, down)
        return max(raw, noisy), means, noise


def _slot(c: _Constants, t: float) -> int:
    return int((t % _DAY) // c.slot_seconds) % c.slots


class _Constants:
    """Per-row weights of one configuration, computed once and shared by its models."""

    __slots__ = (
        "warmup", "slots", "slot_seconds", "decays", "units", "noise_decay", "noise_unit",
        "a_level", "a_profile", "a_err", "a_short", "a_calib", "learn_clip",
        "z_clip", "calibration_clip", "score_offset", "relative_floor", "calib_sd_floor",
    )

    def __init__(self, bucket_seconds: float, options: dict):
        o = {**DEFAULTS, **options}
        self.warmup = float(o["warmup_seconds"])
        self.slot_seconds = max(bucket_seconds, float(o["min_slot_seconds"]))
        self.slots = max(1, int(_DAY // self.slot_seconds))
        self.slot_seconds = _DAY / self.slots
        # An EW mean with decay d has effective length 1 / (1 - d) rows, and the
        # variance of one of N(0, 1) values is (1 - d) / (1 + d).
        self.decays = tuple(1.0 - 1.0 / max(float(w), 1.0) for w in o["scales"])
        self.units = tuple(math.sqrt((1.0 - d) / (1.0 + d)) if d > 0 else 1.0
                           for d in self.decays)
        self.noise_decay = 1.0 - 1.0 / float(o["noise_scale"])
        # Var of z^2 for N(0, 1) is 2, so the EW mean of z^2 has 2 (1 - d) / (1 + d).
        self.noise_unit = math.sqrt(2.0 * (1.0 - self.noise_decay) / (1.0 + self.noise_decay))
        per_row = 1.0 / bucket_seconds
        self.a_level = _fading(o["level_halflife_seconds"] * per_row)
        # A slot sees slot_seconds / bucket_seconds rows on each day.
        self.a_profile = _fading(o["profile_halflife_days"] * self.slot_seconds * per_row)
        self.a_err = _fading(o["error_halflife_seconds"] * per_row)
        self.a_short = _fading(o["short_halflife_rows"])
        self.a_calib = _fading(o["calibration_halflife_days"] * _DAY * per_row)
        self.learn_clip = float(o["learn_clip"])
        self.z_clip = float(o["z_clip"])
        self.calibration_clip = float(o["calibration_clip"])
        self.score_offset = float(o["score_offset"])
        self.relative_floor = float(o["relative_floor"])
        self.calib_sd_floor = 0.25


_CONSTANTS: dict[tuple, _Constants] = {}


def _constants(bucket_seconds: float, options: tuple) -> _Constants:
    key = (bucket_seconds, options)
    c = _CONSTANTS.get(key)
    if c is None:
        c = _CONSTANTS[key] = _Constants(bucket_seconds, dict(options))
    return c
