"""The general metric model: any real values, one calibrated score, state that snapshots."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from river import stats

from stream_detector.core.models import MetricModel, model_bank
from stream_detector.series_backtest import score_series

STEP = 300.0


def noisy(n: int, seed: int, level: float = 40.0, sd: float = 2.0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0, sd) for _ in range(n)]


def scores(model: MetricModel, values: list[float]) -> list[float]:
    out = []
    for i, x in enumerate(values):
        out.append(model.score_one(STEP * i, x).score)
        model.learn_one(STEP * i, x)
    return out


def test_a_level_shift_down_pages_at_once_and_five_days_of_noise_hardly_ever():
    values = noisy(1500, seed=1) + noisy(50, seed=2, level=25.0)
    rows = [(str(1_400_000_000 + STEP * i), v) for i, v in enumerate(values)]
    alerts = [i for i, r in enumerate(score_series(rows, "metric", "both")) if r["alert"]]
    assert alerts and 1500 <= alerts[-1] <= 1505
    assert len(alerts) <= 2


@pytest.mark.parametrize("scale", [1e8, 1e-3, -1.0])
def test_huge_tiny_and_negative_values_score_alike(scale):
    values = noisy(1200, seed=3) + [70.0] * 3
    plain = scores(MetricModel(STEP), values)
    moved = scores(MetricModel(STEP), [v * scale for v in values])
    assert moved == pytest.approx(plain, abs=1e-6)


def test_a_constant_series_is_silent_and_its_first_change_is_not_infinite():
    m = MetricModel(STEP)
    s = scores(m, [45.0] * 1000)
    assert max(s) < 0.5
    change = m.score_one(STEP * 1000, 46.0)
    assert math.isfinite(change.spread) and change.spread > 0 and change.score > 0.99


def test_a_daily_rhythm_is_forecast_by_its_profile():
    day = 86_400 / STEP
    values = [20 + 30 * math.sin(2 * math.pi * i / day) for i in range(int(4 * day))]
    m = MetricModel(STEP)
    s = scores(m, values)
    assert max(s[int(day):]) < 0.5
    assert m.err_seasonal < m.err_level


def test_profile_and_level_follow_rivers_ew_mean_when_nothing_is_clipped():
    m = MetricModel(STEP, learn_clip=1e9)
    c = m._c()
    level = stats.EWMean(fading_factor=c.a_level)
    values = noisy(500, seed=5)
    for i, x in enumerate(values):
        m.learn_one(STEP * i, x)
        level.update(x)
    # river's EWMean starts at 0; ours at the first value, whose weight has decayed away.
    assert m.level == pytest.approx(level.get(), rel=1e-6)


def test_state_goes_through_the_bank_as_json_and_scores_the_same():
    bank = model_bank("metric", STEP)
    rows = np.array([bank.add(), bank.add()])
    values = noisy(700, seed=6)
    for i, x in enumerate(values):
        bank.score(rows, STEP * i, np.array([x, -x]))
        bank.learn()
    restored = model_bank("metric", STEP)
    restored.load_state(json.loads(json.dumps(bank.state())))
    x = np.array([55.0, -55.0])
    a, b = bank.score(rows, STEP * 700, x), restored.score(rows, STEP * 700, x)
    assert a.score.tolist() == b.score.tolist() and a.score.min() > 0.99


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="direction"):
        MetricModel(STEP, direction="sideways")
    with pytest.raises(TypeError, match="unknown MetricModel option"):
        MetricModel(STEP, halflife=3)
