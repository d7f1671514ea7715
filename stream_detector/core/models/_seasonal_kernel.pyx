# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The arithmetic of `SeasonalPoissonBank`, row by row, compiled.

The model itself (what it expects, how it scores, how it learns) is
described in `seasonal_poisson.py`, which owns the configuration, the row
layout in the bank's matrix and the state. This module holds the loops over
a bucket's rows: one pass over each row does what the array version did with
a few dozen NumPy operations over all rows, and costs a fraction of a
microsecond instead of several, because the NumPy calls' own overhead (3-8 us
each on a bucket of a few thousand rows) was most of the detector's time.

Tail probabilities of counts
----------------------------
A count whose variance exceeds its mean is modelled as quasi-Poisson: with
variance `c * mean`, the count divided by `c` behaves like a Poisson variable
of mean `mean / c`. For a negative binomial with dispersion `phi`,
`c = 1 + phi * mean`, so peaks get the wider tail they have in real traffic.

The Poisson tail comes from the exact identity
`P(Poisson(m) >= x) = P(Gamma(x, 1) <= m)` and the Wilson-Hilferty cube-root
normal approximation of the gamma distribution. It keeps the skew of small
counts that a Gaussian z-score misses (3 reports when 0.3 are expected has a
Gaussian z of 4.9 but happens once in 280 buckets) and costs one cube root
and one square root. Over exact deviates of 0 to 7 it errs on the cautious
side only: never 0.02 above the exact deviate, and at most 0.03 below it at
100 expected events, 0.25 at 3, 0.5 at 0.3 (the unit tests hold it to that). Results are normal deviates ("surprise z"): 0 means unremarkable, 3
is about a 1-in-740 event, 5 about 1 in 3.5 million. River's `proba` module
has no Poisson or negative-binomial distribution; these few lines stand in
for one.
"""

from libc.math cimport cbrt, ceil, erf, erfc, exp, fabs, floor, fmod, log, rint, sqrt

cdef enum:
    SLOTS = 48          # 24 hours x (weekday, weekend)
    MAX_SCALES = 16
    WEEK_HOURS = 168

cdef double HOUR = 3600.0
cdef double WEEK = 7 * 86_400.0
# 1970-01-01 was a Thursday: day d since the epoch is weekday (d + 3) % 7 (Monday = 0).
cdef long long EPOCH_WEEKDAY = 3
# Lower bound of the dispersion: even a perfectly regular series is allowed a
# relative spread of 1 % beyond its Poisson noise.
cdef double MIN_PHI = 1e-4
# Dispersion assumed before any has been measured (a relative spread of ~22 %).
cdef double PRIOR_PHI = 0.05
# Lower bound of the spread of the short raw average in the calibration; a
# series that was perfectly quiet so far still needs a deviate of a few tenths.
cdef double MIN_CALIBRATION_SD = 0.1
# A profile slot starts from what it borrows: the same hour of the other day
# type, or else the series' recent level. The other day type's slot is a
# good prior and the slot stays an EW mean of half-life `profile_halflife`.
# The level is the mean of other hours (the evening's, lent to a night slot,
# can be 10-30x off): with the setting `slot_prior_reports` (R > 0) such a
# slot is the gamma-Poisson posterior mean of its own buckets under a prior
# of the level's mean worth R reports, i.e. a plain average that starts with
# R / level pseudo-buckets, until it has seen `1 / a_profile` buckets, and an
# EW mean after. It learns its own level within its first hour, while a slot
# starting on an hour of zeros of a sparse series still expects about what
# the level said. R = 0 makes every slot an EW mean from its first bucket.
cdef double SQRT1_2 = 0.70710678118654752440

# Hours per slot among the first r hours of an epoch week (r = 0..168): hour
# 0 of the epoch is a Thursday 00:00 UTC, so it is indexed by epoch hour % 168.
cdef double HOURS_BEFORE[WEEK_HOURS + 1][SLOTS]


cdef inline long long floor_div(long long a, long long b) noexcept nogil:
    """a // b rounded down, as Python does (C rounds toward zero: times before 1970)."""
    cdef long long q = a / b
    return q - 1 if (a % b != 0) and ((a < 0) != (b < 0)) else q


cdef inline int slot_of_hour(long long hour) noexcept nogil:
    """Profile slot of an epoch hour: hour of day, plus 24 on Saturdays and Sundays."""
    cdef long long day = floor_div(hour, 24)
    cdef long long weekday = (day + EPOCH_WEEKDAY) - 7 * floor_div(day + EPOCH_WEEKDAY, 7)
    return <int>(hour - 24 * day) + (24 if weekday >= 5 else 0)


cdef inline int slot_of_time(double t) noexcept nogil:
    return slot_of_hour(<long long>floor(t / HOUR))


cdef void _fill_hours_before() noexcept nogil:
    cdef int r, s
    for s in range(SLOTS):
        HOURS_BEFORE[0][s] = 0.0
    for r in range(WEEK_HOURS):
        for s in range(SLOTS):
            HOURS_BEFORE[r + 1][s] = HOURS_BEFORE[r][s]
        HOURS_BEFORE[r + 1][slot_of_hour(r)] += 1.0


_fill_hours_before()
PROFILE_SLOTS = SLOTS


cdef inline double powers(double log_base, double n) noexcept nogil:
    """`base ** n` from log(base), for a base in [0, 1) and n >= 0 (0 ** 0 is 1).

    The logarithms of the decays are taken once, so a gap costs one `exp` per decay.
    """
    if n == 0.0:
        return 1.0
    return exp(n * log_base)


cdef inline double upper_z(double x, double m) noexcept nogil:
    """Surprise of at least `x` Poisson events when `m` are expected, as a normal deviate.

    `z` satisfies `P(Poisson(m) >= x) ~= Phi(-z)`; an empty count is no surprise.
    """
    if x > 0.0:
        return -3.0 * sqrt(x) * (cbrt(m / x) - 1.0 + 1.0 / (9.0 * x))
    return 0.0


cdef inline double lower_z(double x, double m) noexcept nogil:
    """Surprise of at most `x` events: `P(Poisson(m) <= x) = 1 - P(Poisson(m) >= x + 1)`."""
    return -upper_z(x + 1.0, m)


cdef inline double normal_cdf(double z) noexcept nogil:
    """Standard normal CDF, with erfc in the tails where 1 - erf would lose digits."""
    cdef double x = z * SQRT1_2
    cdef double y
    if fabs(x) < SQRT1_2:
        return 0.5 + 0.5 * erf(x)
    y = 0.5 * erfc(fabs(x))
    return 1.0 - y if x > 0.0 else y


def calendar_slot(double t):
    """Profile slot of epoch second `t`: UTC hour of day, plus 24 on Saturdays and Sundays."""
    return slot_of_time(t)


def poisson_upper_z(double x, double m):
    """`upper_z` for Python, e.g. the tests.

    >>> round(poisson_upper_z(10, 1.0), 2)  # exact tail 1.1e-7, i.e. z = 5.18
    4.98
    """
    return upper_z(x, m)


def poisson_lower_z(double x, double m):
    return lower_z(x, m)


cdef void walk_slot_counts(double t_start, long long n, double step, double* counts) noexcept nogil:
    """Add how many of the `n` buckets starting at `t_start`, `step` apart, fall in each slot.

    Walks hour by hour, at most one week plus one week's pattern repeated,
    so the cost is bounded by the number of slots, not of buckets.
    """
    cdef double week_counts[SLOTS]
    cdef long long weeks = <long long>floor(n * step / WEEK)
    cdef long long done = 0, upto
    cdef double hour
    cdef int s
    if weeks >= 2:
        # Whole weeks repeat the pattern of the first one.
        for s in range(SLOTS):
            week_counts[s] = 0.0
        walk_slot_counts(t_start, <long long>rint(WEEK / step), step, week_counts)
        for s in range(SLOTS):
            counts[s] += week_counts[s] * weeks
        t_start += weeks * WEEK
        n -= <long long>rint(weeks * WEEK / step)
        if n <= 0:
            return
    hour = floor(t_start / HOUR) * HOUR
    while done < n:
        # Buckets whose start lies in [hour, hour + 1h).
        upto = <long long>ceil((hour + HOUR - t_start) / step)
        if upto > n:
            upto = n
        if upto > done:
            counts[slot_of_time(hour)] += upto - done
            done = upto
        hour += HOUR


cdef void buckets_before(double t, double per_hour, double step, double* out) noexcept nogil:
    """Buckets of each slot before time t, for buckets that tile whole hours:
    the whole hours before t's hour (from the week table), plus those of t's own hour."""
    cdef long long hours = <long long>floor(t / HOUR)
    cdef long long weeks = floor_div(hours, WEEK_HOURS)
    cdef long long r = hours - weeks * WEEK_HOURS
    cdef int s
    for s in range(SLOTS):
        out[s] = (weeks * HOURS_BEFORE[WEEK_HOURS][s] + HOURS_BEFORE[r][s]) * per_hour
    out[slot_of_hour(hours)] += (t - hours * HOUR) / step


cdef double slot_buckets_before(double t, int slot, double per_hour, double step) noexcept nogil:
    """Buckets of one slot before time t (one entry of `buckets_before`)."""
    cdef long long hours = <long long>floor(t / HOUR)
    cdef long long weeks = floor_div(hours, WEEK_HOURS)
    cdef long long r = hours - weeks * WEEK_HOURS
    cdef double n = (weeks * HOURS_BEFORE[WEEK_HOURS][slot] + HOURS_BEFORE[r][slot]) * per_hour
    if slot_of_hour(hours) == slot:
        n += (t - hours * HOUR) / step
    return n


cdef void gap_slot_counts(double t_start, double t_end, long long n, double step,
                          bint closed_form, double* counts) noexcept nogil:
    """Set counts[s] to how many of the `n` buckets of [t_start, t_end) fall in slot s.

    `closed_form` (for widths that divide an hour) uses the week table, else
    the hour walk.
    """
    cdef double end[SLOTS]
    cdef int s
    for s in range(SLOTS):
        counts[s] = 0.0
    if closed_form:
        buckets_before(t_end, HOUR / step, step, end)
        buckets_before(t_start, HOUR / step, step, counts)
        for s in range(SLOTS):
            counts[s] = end[s] - counts[s]
    else:
        walk_slot_counts(t_start, n, step, counts)


def rows_within(const Py_ssize_t[::1] rows, Py_ssize_t size):
    """True if every row number is in 0..size-1 (the kernel indexes rows unchecked)."""
    cdef Py_ssize_t i
    for i in range(rows.shape[0]):
        if not 0 <= rows[i] < size:
            return False
    return True


def slot_counts(double t_start, long long n, double step, bint closed_form):
    """`gap_slot_counts` as a list of 48, so the tests can hold one way against the other."""
    cdef double counts[SLOTS]
    gap_slot_counts(t_start, t_start + n * step, n, step, closed_form, counts)
    return [counts[s] for s in range(SLOTS)]


cdef class SeasonalKernel:
    """The per-row arithmetic of one `SeasonalPoissonSettings`, and the row layout it works on.

    Row layout (n = number of scales): 48 profile slots (NaN until seen),
    then per scale the EW sums of counts, the EW sums of expectations, the
    EW mean of the clipped squared residual minus its Poisson part and the
    EW mean of the squared expectation (the last two's ratio is the
    dispersion phi of that scale), then the scalars `level`, `unit`,
    `short`, `calib_mean`, `calib_sq`, `learned`, `first_t`, `last_t`.
    """

    cdef readonly int scales, row_floats
    cdef readonly int sums, expected_sums, residuals, squares
    cdef readonly int level, unit, short, calib_mean, calib_sq, learned, first_t, last_t
    cdef double decays[MAX_SCALES]
    cdef double log_decays[MAX_SCALES]
    cdef double units[MAX_SCALES]
    cdef double step, warmup
    cdef double a_profile, a_level, a_disp, a_short, a_calib
    # log(1 - a) of each fading factor a, for `powers`
    cdef double log_keep_profile, log_keep_level, log_keep_disp, log_keep_short, log_keep_calib
    cdef double prior_reports
    cdef double learn_clip, dispersion_clip, calibration_clip, score_offset, down_min_expected
    cdef bint up, down, hour_aligned

    def __init__(self, settings):
        cdef int k
        self.scales = len(settings.scales)
        if self.scales > MAX_SCALES:
            raise ValueError(f"at most {MAX_SCALES} scales, not {self.scales}")
        n = self.scales
        self.sums = SLOTS
        self.expected_sums = SLOTS + n
        self.residuals = SLOTS + 2 * n
        self.squares = SLOTS + 3 * n
        self.level = SLOTS + 4 * n
        self.unit = self.level + 1
        self.short = self.level + 2
        self.calib_mean = self.level + 3
        self.calib_sq = self.level + 4
        self.learned = self.level + 5
        self.first_t = self.level + 6
        self.last_t = self.level + 7
        self.row_floats = self.level + 8
        for k in range(n):
            self.decays[k] = settings.decays[k]
            self.log_decays[k] = log(self.decays[k])  # -inf for the single bucket: 0 ** n
            self.units[k] = settings.units[k]
        self.step = settings.bucket_seconds
        per_hour = HOUR / self.step
        # Buckets tile whole hours when the width divides an hour; then a
        # gap's buckets per slot have a closed form.
        self.hour_aligned = per_hour == floor(per_hour)
        self.warmup = settings.warmup_seconds
        self.a_profile = settings.a_profile
        self.a_level = settings.a_level
        self.a_disp = settings.a_disp
        self.a_short = settings.a_short
        self.a_calib = settings.a_calib
        self.log_keep_profile = log(1.0 - self.a_profile)
        self.log_keep_level = log(1.0 - self.a_level)
        self.log_keep_disp = log(1.0 - self.a_disp)
        self.log_keep_short = log(1.0 - self.a_short)
        self.log_keep_calib = log(1.0 - self.a_calib)
        self.learn_clip = settings.learn_clip
        self.prior_reports = settings.slot_prior_reports
        self.dispersion_clip = settings.dispersion_clip
        self.calibration_clip = settings.calibration_clip
        self.score_offset = settings.score_offset
        self.down_min_expected = settings.down_min_expected
        self.up = settings.up
        self.down = settings.down

    # --- the bucket's rows ---------------------------------------------

    def score(self, double[:, ::1] data, const Py_ssize_t[::1] rows, double t,
              const double[::1] x, bint catch_up, double[::1] score, double[::1] expected,
              double[::1] spread, double[::1] raw):
        """Score x[i] on row rows[i] in the bucket starting at `t`, into the output arrays.

        With `catch_up`, each row first learns, in place, the empty buckets
        since its last learned one. `raw` keeps the raw surprise for `learn`.
        """
        cdef Py_ssize_t i
        cdef double* row
        cdef double last, start
        cdef int slot = slot_of_time(t)
        with nogil:
            for i in range(rows.shape[0]):
                row = &data[rows[i], 0]
                if catch_up:
                    last = row[self.last_t]
                    if last < t - self.step:  # NaN (never learned) compares False
                        start = last + self.step
                        self._learn_zeros(row, start, rint((t - start) / self.step), t)
                self._score(row, slot, t, x[i], &score[i], &expected[i], &spread[i], &raw[i])

    def learn(self, double[:, ::1] data, const Py_ssize_t[::1] rows, double t,
              const double[::1] x, const double[::1] expected, const double[::1] raw,
              const double[::1] weights):
        """Learn the bucket `score` scored; weights[i] in [0, 1] down-weights row i."""
        cdef Py_ssize_t i
        cdef int slot = slot_of_time(t)
        with nogil:
            for i in range(rows.shape[0]):
                self._learn(&data[rows[i], 0], slot, t, x[i], expected[i], raw[i], weights[i])

    def learn_zeros(self, double[:, ::1] data, const Py_ssize_t[::1] rows,
                    const double[::1] t_start, double t_end):
        """Learn that every bucket in [t_start[i], t_end) of row rows[i] had no reports."""
        cdef Py_ssize_t i
        cdef double n
        with nogil:
            for i in range(rows.shape[0]):
                n = rint((t_end - t_start[i]) / self.step)
                if n > 0:
                    self._learn_zeros(&data[rows[i], 0], t_start[i], n, t_end)

    # --- one row ----------------------------------------------------------

    cdef inline double _profile_at(self, double* row, int slot) noexcept nogil:
        """The expectation for `slot`: the slot, else the other day type, else the level."""
        cdef double p = row[slot]
        if p == p:
            return p
        p = row[(slot + 24) % SLOTS]
        if p == p:
            return p
        return row[self.level]

    cdef inline double _slot_seen(self, double* row, int slot, double t) noexcept nogil:
        """Buckets of `slot` between the row's first bucket and t (whatever their weight;
        approximate for widths that do not divide an hour)."""
        cdef double per_hour = HOUR / self.step
        cdef double n = (slot_buckets_before(t, slot, per_hour, self.step)
                         - slot_buckets_before(row[self.first_t], slot, per_hour, self.step))
        return n if n > 0.0 else 0.0

    cdef inline double _prior_buckets(self, double* row, int slot, double p) noexcept nogil:
        """The buckets a slot's current value `p` is worth as a prior (see `slot_prior_reports`).

        Only a slot whose other day type is unseen too borrowed the level;
        one that borrowed the same hour of the other day type keeps the EW
        mean it always had. Counts only: a metric's slots are EW means.
        """
        cdef double other = row[(slot + 24) % SLOTS]
        if self.prior_reports <= 0.0 or row[self.unit] <= 0.0 or not p > 0.0 or other == other:
            return 1.0 / self.a_profile
        return self.prior_reports * row[self.unit] / p

    cdef inline double _profile_rate(self, double* row, int slot, double t,
                                     double p) noexcept nogil:
        """The weight of a bucket in its slot: a plain average's, until it falls to a_profile."""
        cdef double a = 1.0 / (self._slot_seen(row, slot, t) + 1.0 + self._prior_buckets(row, slot, p))
        return a if a > self.a_profile else self.a_profile

    cdef inline double _profile_keep(self, double* row, int slot, double t, double p,
                                     double c) noexcept nogil:
        """What a slot of value p keeps of itself over c empty buckets from t on."""
        cdef double big = 1.0 / self.a_profile
        cdef double start = self._slot_seen(row, slot, t) + self._prior_buckets(row, slot, p)
        cdef double plain
        if start + 1.0 >= big:
            return powers(self.log_keep_profile, c)
        # Plain-average steps keep start / (start + 1), ... while 1 / (start + j) > a.
        plain = floor(big - start)
        if plain >= c:
            return start / (start + c)
        return start / (start + plain) * powers(self.log_keep_profile, c - plain)

    cdef inline double _phi(self, double* row, int k) noexcept nogil:
        """Overdispersion of scale k."""
        cdef double den = row[self.squares + k]
        cdef double phi = row[self.residuals + k] / den if den > 0.0 else PRIOR_PHI
        return phi if phi > MIN_PHI else MIN_PHI

    cdef double _raw_score(self, double* row, double x, double mu) noexcept nogil:
        """Largest surprise over the scales, as a normal deviate (0 when nothing stands out)."""
        cdef double best = 0.0, d, s, m, c, xs, ms, z
        cdef int k
        for k in range(self.scales):
            d = self.decays[k]
            s = x + d * row[self.sums + k]
            m = mu + d * row[self.expected_sums + k]
            if m < 1e-9:
                m = 1e-9
            # Quasi-Poisson: S / c behaves like a Poisson count of mean M / c.
            c = row[self.unit] * self.units[k] + self._phi(row, k) * m
            xs = s / c
            ms = m / c
            if self.up and xs > ms:
                z = upper_z(xs, ms)
                if z > best:
                    best = z
            if self.down and xs < ms and m >= self.down_min_expected:
                z = lower_z(xs, ms)
                if z > best:
                    best = z
        return best

    cdef void _score(self, double* row, int slot, double t, double x, double* score,
                     double* expected, double* spread, double* raw) noexcept nogil:
        cdef double mu = self._profile_at(row, slot)
        cdef double short, mean, var
        if mu < 0.0:
            mu = 0.0
        expected[0] = mu
        raw[0] = self._raw_score(row, x, mu)
        spread[0] = sqrt(mu * (row[self.unit] + self._phi(row, 0) * mu))
        # NaN (nothing learned yet) compares False: still warming up.
        if not (t - row[self.first_t] >= self.warmup):
            score[0] = 0.0
            return
        short = row[self.short] + self.a_short * (raw[0] - row[self.short])
        mean = row[self.calib_mean]
        var = row[self.calib_sq] - mean * mean
        if var < MIN_CALIBRATION_SD * MIN_CALIBRATION_SD:
            var = MIN_CALIBRATION_SD * MIN_CALIBRATION_SD
        score[0] = normal_cdf((short - mean) / sqrt(var) - self.score_offset)

    cdef void _learn(self, double* row, int slot, double t, double x, double mu, double raw,
                     double w) noexcept nogil:
        cdef int k
        cdef double d
        if fmod(x, 1.0) != 0.0:
            row[self.unit] = 0.0  # a fraction: a metric, not counts
        if row[self.first_t] != row[self.first_t]:
            row[self.first_t] = t
            row[self.level] = x
        row[self.last_t] = t
        # The short average and the recent sums record what happened, so
        # they see every bucket whatever its weight.
        row[self.short] += self.a_short * (raw - row[self.short])
        if w > 0.0:
            self._learn_weighted(row, slot, t, x, mu, w)
        for k in range(self.scales):
            d = self.decays[k]
            row[self.sums + k] = x + d * row[self.sums + k]
            row[self.expected_sums + k] = mu + d * row[self.expected_sums + k]

    cdef void _learn_weighted(self, double* row, int slot, double t, double x, double mu,
                              double w) noexcept nogil:
        """Dispersion, calibration and profile updates of a row learning with weight w > 0."""
        cdef double unit = row[self.unit]
        cdef double a = self.a_disp * w
        cdef double d, u, s, m, lim, r, spread, v, p
        cdef int k
        for k in range(self.scales):
            d = self.decays[k]
            u = unit * self.units[k]
            s = x + d * row[self.sums + k]
            m = mu + d * row[self.expected_sums + k]
            # Residuals are clipped so that one burst cannot inflate the spread.
            lim = m * (u + self._phi(row, k) * m)
            lim = self.dispersion_clip * sqrt(lim if lim > 0.0 else 0.0)
            r = s - m
            r = -lim if r < -lim else (lim if r > lim else r)
            row[self.residuals + k] += a * (r * r - u * m - row[self.residuals + k])
            row[self.squares + k] += a * (m * m - row[self.squares + k])
        # The raw scores of the first hours, before the profile knows the
        # series, say nothing about its normal surprise.
        if t - row[self.first_t] >= 0.5 * self.warmup:
            self._learn_calibration(row, w)
        spread = sqrt(mu * (unit + self._phi(row, 0) * mu))
        if spread < unit:
            spread = unit
        v = x
        if v < mu - self.learn_clip * spread:
            v = mu - self.learn_clip * spread
        if v > mu + self.learn_clip * spread:
            v = mu + self.learn_clip * spread
        p = self._profile_at(row, slot)
        row[slot] = p + self._profile_rate(row, slot, t, p) * w * (v - p)
        row[self.level] += self.a_level * w * (v - row[self.level])

    cdef void _learn_calibration(self, double* row, double w) noexcept nogil:
        """Long-run mean and spread of the short raw average, with a capped influence of bursts.

        Until a row has learned 1 / a_calib buckets its statistics are plain
        averages: an EW mean started at zero would understate the spread for
        days and make a new series jumpy.
        """
        cdef double learned = row[self.learned] + w
        cdef double a = (1.0 / learned if self.a_calib * learned < 1.0 else self.a_calib) * w
        cdef double mean = row[self.calib_mean], sq = row[self.calib_sq]
        cdef double var = sq - mean * mean
        cdef double cap, v
        if var < MIN_CALIBRATION_SD * MIN_CALIBRATION_SD:
            var = MIN_CALIBRATION_SD * MIN_CALIBRATION_SD
        cap = mean + self.calibration_clip * sqrt(var)
        v = row[self.short]
        if v > cap and learned > 1.0:
            v = cap
        row[self.calib_mean] = mean + a * (v - mean)
        row[self.calib_sq] = sq + a * (v * v - sq)
        row[self.learned] = learned

    cdef void _learn_zeros(self, double* row, double t_start, double n,
                           double t_end) noexcept nogil:
        """n > 0 empty buckets from t_start, in one step whatever n is."""
        cdef double mu, keep, d, m, u, lim, r, dn1, raw, learned, mean, sq
        cdef int k
        if row[self.first_t] != row[self.first_t]:
            row[self.first_t] = t_start
        mu = self._learn_zero_profile(row, t_start, n, t_end)
        row[self.level] *= powers(self.log_keep_level, n)
        # Dispersion and sums: n updates with a zero count and expectation mu.
        keep = powers(self.log_keep_disp, n)
        for k in range(self.scales):
            d = self.decays[k]
            m = mu / (1.0 - d)
            u = row[self.unit] * self.units[k]
            lim = self.dispersion_clip * sqrt(m * (u + self._phi(row, k) * m))
            r = m if m < lim else lim
            row[self.residuals + k] = row[self.residuals + k] * keep + (1.0 - keep) * (r * r - u * m)
            row[self.squares + k] = row[self.squares + k] * keep + (1.0 - keep) * m * m
        # The last bucket of the gap is pushed at the end, as `_learn` would.
        for k in range(self.scales):
            d = self.decays[k]
            dn1 = powers(self.log_decays[k], n - 1.0)
            row[self.sums + k] *= dn1
            row[self.expected_sums + k] = (
                row[self.expected_sums + k] * dn1 + mu * (1.0 - dn1) / (1.0 - d)
            )
        # The raw score of an empty bucket is (about) the same through the gap.
        raw = self._raw_score(row, 0.0, mu)
        row[self.short] = raw + (row[self.short] - raw) * powers(self.log_keep_short, n)
        if t_end - row[self.first_t] >= 0.5 * self.warmup:
            learned = row[self.learned]
            if self.a_calib * (learned + n) < 1.0:
                keep = learned / (learned + n)  # still plain averages
            else:
                keep = powers(self.log_keep_calib, n)
            mean = row[self.calib_mean]
            sq = row[self.calib_sq]
            row[self.calib_mean] = raw + (mean - raw) * keep
            row[self.calib_sq] = raw * raw + (sq - raw * raw) * keep
            row[self.learned] = learned + n
        for k in range(self.scales):
            d = self.decays[k]
            row[self.sums + k] *= d
            row[self.expected_sums + k] = mu + d * row[self.expected_sums + k]
        row[self.last_t] = t_start + (n - 1.0) * self.step

    cdef double _learn_zero_profile(self, double* row, double t_start, double n,
                                    double t_end) noexcept nogil:
        """Decay the profile slots by the empty buckets of the gap; returns the gap's
        expectation, the mean of the profile over its buckets (before they are learned)."""
        cdef double hour = floor(t_start / HOUR)
        cdef double counts[SLOTS]
        cdef double filled[SLOTS]
        cdef double p, total = 0.0
        cdef int s
        if self.hour_aligned and hour == floor((t_end - self.step) / HOUR):
            # Most gaps of an active series lie within one clock hour, so in one slot.
            s = slot_of_hour(<long long>hour)
            p = self._profile_at(row, s)
            row[s] = p * self._profile_keep(row, s, t_start, p, n)
            return p
        gap_slot_counts(t_start, t_end, <long long>n, self.step, self.hour_aligned, counts)
        for s in range(SLOTS):
            filled[s] = self._profile_at(row, s)
            total += counts[s] * filled[s]
        for s in range(SLOTS):
            if counts[s] > 0.0:
                # Approximate when the gap covers a slot's buckets on several days.
                row[s] = filled[s] * self._profile_keep(row, s, t_start, filled[s], counts[s])
        return total / n
