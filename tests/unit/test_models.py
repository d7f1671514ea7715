"""The per-series models on synthetic series whose answers are known."""

from __future__ import annotations

import math
import pickle
import random
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from river import stats

from stream_detector.core.models import DEFAULT_MODEL, MODELS, model_factory
from stream_detector.core.models import _seasonal_kernel as kernel
from stream_detector.core.models import seasonal_poisson as sp
from stream_detector.core.models.seasonal_poisson import SeasonalPoissonModel

T0 = 1_767_571_200  # Monday 2026-01-05 00:00 UTC
MINUTE = 60
DAY = 1440  # minutes
ALERT = 0.99


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth's method for small means, a rounded normal for large)."""
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def feed(model, minutes, rate, rng, weight_after_alert=1.0) -> list[float]:
    """Score then learn one bucket per minute; returns the scores."""
    scores = []
    for i in minutes:
        x = poisson(rng, rate(i))
        s = model.score_one(T0 + MINUTE * i, x).score
        model.learn_one(T0 + MINUTE * i, x, weight_after_alert if s >= ALERT else 1.0)
        scores.append(s)
    return scores


def test_the_seasonal_model_is_the_default():
    assert DEFAULT_MODEL == "seasonal-poisson"
    assert isinstance(model_factory(DEFAULT_MODEL)(60.0), SeasonalPoissonModel)


@pytest.mark.parametrize("rate", [0.2, 3.0, 20.0])
def test_a_flat_poisson_series_never_alerts(rate):
    rng = random.Random(7)
    model = SeasonalPoissonModel(60)
    scores = feed(model, range(14 * DAY), lambda i: rate, rng)
    assert max(scores) < ALERT


@pytest.mark.parametrize("rate", [3.0, 20.0])
def test_a_tenfold_step_alerts_within_two_buckets(rate):
    rng = random.Random(3)
    model = SeasonalPoissonModel(60)
    feed(model, range(3 * DAY), lambda i: rate, rng)
    start = 3 * DAY
    first = model.score_one(T0 + MINUTE * start, 10 * rate).score
    model.learn_one(T0 + MINUTE * start, 10 * rate, 0.0 if first >= ALERT else 1.0)
    second = model.score_one(T0 + MINUTE * (start + 1), 10 * rate).score
    assert max(first, second) >= ALERT


def test_a_recurring_daily_peak_is_learned():
    """A 3-fold hour every evening alerts at first and no more once it is the rhythm."""
    rng = random.Random(5)
    model = SeasonalPoissonModel(60)

    def rate(i: int) -> float:
        evening = (i % DAY) // 60 == 18
        return 60.0 if evening and i >= 3 * DAY else 20.0

    scores = feed(model, range(24 * DAY), rate, rng)
    alerts_by_day = [sum(s >= ALERT for s in scores[d * DAY:(d + 1) * DAY]) for d in range(24)]
    assert alerts_by_day[3] > 0  # the first evening is news
    # Weekday evenings: learned within about ten days (the slot's half-life is 7).
    assert sum(alerts_by_day[14:19]) == 0, alerts_by_day


def test_a_drop_is_scored_down_and_not_up():
    rng = random.Random(11)
    up, down = SeasonalPoissonModel(60), SeasonalPoissonModel(60, "down")
    for model in (up, down):
        feed(model, range(3 * DAY), lambda i: 50.0, rng)
    t = T0 + MINUTE * 3 * DAY
    assert up.score_one(t, 0).score < 0.5
    # Reports stop: the second empty bucket alerts (the first one may be chance).
    down.score_one(t, 0)
    down.learn_one(t, 0)
    assert down.score_one(t + MINUTE, 0).score >= ALERT


def test_warm_up_scores_zero():
    model = SeasonalPoissonModel(60, warmup_seconds=6 * 3600)
    rng = random.Random(1)
    scores = feed(model, range(6 * 60 - 1), lambda i: 10.0, rng)
    assert set(scores) == {0.0}
    assert model.score_one(T0 + MINUTE * (6 * 60 - 1), 10_000).score == 0.0


def test_learn_zeros_is_close_to_learning_zeros_one_by_one():
    rng = random.Random(2)
    stepwise, at_once = SeasonalPoissonModel(60), SeasonalPoissonModel(60)
    history = [poisson(rng, 4.0) for _ in range(4 * DAY)]
    for model in (stepwise, at_once):
        for i, x in enumerate(history):
            model.score_one(T0 + MINUTE * i, x)
            model.learn_one(T0 + MINUTE * i, x)
    gap_start, gap_end = 4 * DAY, 4 * DAY + 7 * 60  # seven quiet hours
    for i in range(gap_start, gap_end):
        stepwise.score_one(T0 + MINUTE * i, 0)
        stepwise.learn_one(T0 + MINUTE * i, 0)
    at_once.learn_zeros(T0 + MINUTE * gap_start, T0 + MINUTE * gap_end)
    t = T0 + MINUTE * gap_end
    for x in (0, 4, 12, 40):
        a, b = stepwise.score_one(t, x), at_once.score_one(t, x)
        assert b.expected == pytest.approx(a.expected, rel=0.02)
        assert b.spread == pytest.approx(a.spread, rel=0.05)
        assert b.score == pytest.approx(a.score, abs=0.02)


def test_a_year_of_empty_buckets_is_learned_in_one_step():
    model = SeasonalPoissonModel(60)
    for i in range(DAY):
        model.learn_one(T0 + MINUTE * i, 5)
    before = model.score_one(T0 + MINUTE * DAY, 5).expected
    model.learn_zeros(T0 + MINUTE * DAY, T0 + MINUTE * DAY + 365 * 86_400)  # a year of minutes
    assert model.last_t == T0 + MINUTE * (DAY - 1) + 365 * 86_400
    assert np.isfinite(model.bank.data[0]).all()
    assert model.score_one(T0 + MINUTE * DAY + 365 * 86_400, 5).expected < 1e-3 * before
    for closed_form in (True, False):
        assert sum(kernel.slot_counts(T0, 525_600, 60, closed_form)) == 525_600


def test_state_pickles_and_round_trips():
    rng = random.Random(4)
    model = SeasonalPoissonModel(300, "both")
    for i in range(2000):
        x = poisson(rng, 8.0)
        model.score_one(T0 + 300 * i, x)
        model.learn_one(T0 + 300 * i, x)
    data = pickle.dumps(model)
    assert len(data) <= 2048
    copy = pickle.loads(data)
    for i in range(2000, 2100):
        x = poisson(rng, 8.0)
        assert copy.score_one(T0 + 300 * i, x) == model.score_one(T0 + 300 * i, x)
        copy.learn_one(T0 + 300 * i, x)
        model.learn_one(T0 + 300 * i, x)


def test_profile_updates_are_rivers_ew_mean():
    """With clipping out of the way, one slot's profile is river's EWMean of its values."""
    model = SeasonalPoissonModel(300, learn_clip=1e9)
    a = model.settings.a_profile
    reference = stats.EWMean(fading_factor=a)
    rng = random.Random(9)
    for i in range(12):  # the first hour: slot 0
        x = float(rng.randint(0, 30))
        model.learn_one(T0 + 300 * i, x)
        reference.update(x)
    assert model.profile[0] == pytest.approx(reference.get(), rel=1e-12)


def night_after_evening(model: SeasonalPoissonModel, zeros_as_gaps: bool) -> float:
    """Four evening hours at 10 a minute, then a night hour at 0.3 a minute (slot 0 of
    Tuesday, never seen on either day type); returns what slot 0 then expects."""
    rng = np.random.default_rng(11)
    start = T0 + 20 * 3600  # Monday 20:00 UTC
    counts = [*rng.poisson(10.0, 240), *rng.poisson(0.3, 60)]
    last = None  # the last bucket learned
    for i, x in enumerate(counts):
        t = start + MINUTE * i
        if x or not zeros_as_gaps:
            if last is not None and t - last > MINUTE:  # the empty buckets, in one step
                model.learn_zeros(last + MINUTE, t)
            model.learn_one(t, float(x))
            last = t
    if zeros_as_gaps and last < start + MINUTE * (len(counts) - 1):
        model.learn_zeros(last + MINUTE, start + MINUTE * len(counts))
    return float(model.profile[0])


@pytest.mark.parametrize("zeros_as_gaps", [False, True])
def test_a_slot_that_borrowed_the_level_learns_its_own_within_the_hour(zeros_as_gaps):
    """The detector's slots (`slot_prior_reports` 3): the night slot borrowed the
    evening's level, 30x its rate, and is about a plain average after its hour."""
    learned = night_after_evening(SeasonalPoissonModel(60, slot_prior_reports=3.0),
                                  zeros_as_gaps)
    assert 0.15 < learned < 0.6, learned
    # An EW mean from the borrowed level (the default, 0) is still several times off.
    assert night_after_evening(SeasonalPoissonModel(60), zeros_as_gaps) > 3.0


def test_fractional_values_are_scored_as_a_metric():
    rng = random.Random(6)
    model = SeasonalPoissonModel(60)
    for i in range(3 * DAY):
        x = 0.5 + rng.gauss(0, 0.01)
        model.score_one(T0 + MINUTE * i, x)
        model.learn_one(T0 + MINUTE * i, x)
    assert model.unit == 0.0
    t = T0 + MINUTE * 3 * DAY
    assert model.score_one(t, 0.51).score < 0.5
    assert model.score_one(t, 0.8).score >= ALERT


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="direction"):
        SeasonalPoissonModel(60, "sideways")
    with pytest.raises(ValueError, match="bucket_seconds"):
        SeasonalPoissonModel(0)
    with pytest.raises(TypeError, match="unknown"):
        SeasonalPoissonModel(60, warmup=5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_speaks_the_protocol(name):
    model = MODELS[name].series(60.0)
    model.learn_one(T0, 3)
    model.learn_zeros(T0 + 60, T0 + 600)
    scored = model.score_one(T0 + 600, 4)
    assert 0.0 <= scored.score <= 1.0 and scored.spread >= 0.0
    model.learn_one(T0 + 600, 4, 0.5)


def test_a_bank_scores_each_row_as_its_own_model():
    """Rows scored together, with gaps of their own, equal one model per series."""
    rng = random.Random(12)
    rates = [0.3, 4.0, 25.0]
    bank = sp.SeasonalPoissonBank(60, warmup_seconds=3600)
    rows = [bank.add() for _ in rates]
    alone = [SeasonalPoissonModel(60, warmup_seconds=3600) for _ in rates]
    for i in range(3 * DAY):
        t = T0 + MINUTE * i
        # Each series skips some buckets (no reports): the bank catches them up.
        active = [r for r in rows if rng.random() < 0.6]
        if not active:
            continue
        xs = [poisson(rng, rates[r]) for r in active]
        at = np.array(active)
        together = bank.score(at, t, np.array(xs, dtype=float), catch_up=True)
        bank.learn()
        for j, (r, x) in enumerate(zip(active, xs, strict=True)):
            model = alone[r]
            if not math.isnan(model.last_t) and model.last_t < t - MINUTE:
                model.learn_zeros(model.last_t + MINUTE, t)
            single = model.score_one(t, x)
            model.learn_one(t, x)
            assert together.score[j] == pytest.approx(single.score, abs=1e-9)
            assert together.expected[j] == pytest.approx(single.expected, rel=1e-9)


@given(
    start_minute=st.integers(0, 3 * 7 * DAY),
    gap=st.integers(1, 3 * 7 * DAY),
    bucket=st.sampled_from([60, 300, 900]),
)
def test_gap_buckets_per_slot_have_the_closed_form_of_the_hour_walk(start_minute, gap, bucket):
    t_start = T0 + start_minute * 60 - (T0 + start_minute * 60) % bucket
    n = max(1, gap * 60 // bucket)
    walked = kernel.slot_counts(t_start, n, bucket, False)
    assert kernel.slot_counts(t_start, n, bucket, True) == walked
    assert sum(walked) == n


def test_calendar_slots_are_utc_hours_split_by_weekday_and_weekend():
    assert kernel.calendar_slot(T0) == 0  # Monday 00:00 UTC
    assert kernel.calendar_slot(T0 + 4 * 86_400 + 23 * 3600 + 3599) == 23  # Friday 23:59:59
    assert kernel.calendar_slot(T0 + 5 * 86_400 + 13 * 3600) == 37  # Saturday 13:00
    assert kernel.calendar_slot(T0 + 7 * 86_400) == 0  # Monday again


@given(st.integers(-3 * 365 * 86_400, 3 * 365 * 86_400))
def test_calendar_slots_hold_before_1970_too(t):
    """`backtest --input` takes any timestamp; C's division rounds toward zero."""
    when = datetime.fromtimestamp(t, UTC)
    assert kernel.calendar_slot(t) == when.hour + (24 if when.weekday() >= 5 else 0)
    n = 200
    walked = kernel.slot_counts(t - t % 60, n, 60, False)
    assert kernel.slot_counts(t - t % 60, n, 60, True) == walked and sum(walked) == n


def test_the_bank_refuses_times_it_cannot_place():
    bank = sp.SeasonalPoissonBank(60)
    row = bank.add()
    for t in (math.nan, math.inf, 1e300):
        with pytest.raises(ValueError, match="finite"):
            bank.score(np.array([row]), t, np.array([1.0]))
        with pytest.raises(ValueError, match="finite"):
            bank.learn_zeros(np.array([row]), np.array([t]), T0)


@pytest.mark.parametrize(
    ("m", "below"), [(0.3, 0.55), (1.0, 0.4), (3.0, 0.25), (10.0, 0.12), (100.0, 0.03)]
)
def test_the_poisson_tail_errs_only_on_the_cautious_side(m, below):
    """Across the counts a detector cares about (exact deviate between 0 and 7), the
    approximate deviate is at most a hair above the exact one, and `below` under it."""
    from scipy.stats import norm, poisson

    x = np.arange(math.ceil(m), m + 60 * math.sqrt(m) + 20)
    exact = -norm.ppf(poisson.sf(x - 1, m))  # P(X >= x) as a normal deviate
    cared = (exact > 0) & (exact < 7)
    approx = np.array([kernel.poisson_upper_z(v, m) for v in x])
    assert cared.sum() >= 3
    error = (approx - exact)[cared]
    assert error.max() < 0.02 and error.min() > -below
    lower = -norm.ppf(poisson.cdf(0, m))  # P(X <= 0)
    if lower < 7:
        assert lower - max(below, 0.2) < kernel.poisson_lower_z(0, m) < lower + 0.02


def test_the_bank_refuses_rows_and_values_the_kernel_would_read_past():
    bank = sp.SeasonalPoissonBank(60)
    row = bank.add()
    with pytest.raises(IndexError):
        bank.score(np.array([row + 1]), T0, np.array([1.0]))
    with pytest.raises(ValueError, match="values"):
        bank.score(np.array([row, row]), T0, np.array([1.0]))
    bank.score(np.array([row]), T0, np.array([1.0]))
    with pytest.raises(ValueError, match="weights"):
        bank.learn(np.array([1.0, 1.0]))
