"""Any river anomaly detector or forecaster as a per-series model: `model = "river:<Name>"`.

`RiverModel` speaks the project's `SeriesModel` protocol around one river
estimator per series, so `PerSeriesBank` steps it in the detector and
`backtest --input --model river:<Name>` scores a file with it:

- a forecaster (`river.time_series`, e.g. `HoltWinters`, `SNARIMAX`) forecasts
  the bucket one step ahead; its surprise is the absolute error over the EW
  mean absolute error so far;
- a univariate detector (`river.anomaly.GaussianScorer`,
  `StandardAbsoluteDeviation`: `score_one(x, y)`) scores the value itself;
- any other detector (`HalfSpaceTrees`, `LODA`, `OneClassSVM`, ...) scores the
  features `{"value": x}`.

The surprise is then calibrated into [0, 1] on the series' own history: the
Gaussian probability of its standard score against the EW mean and variance
of the surprises seen so far, 0 during `warmup_buckets`. So one threshold
serves every river estimator, whatever the scale of its own score.

river's estimators keep their state in plain attributes and pickle; a
model's `state()` is the pickle as base64 text beside the calibration
numbers, which the detector's JSON snapshots carry as they are.
"""

from __future__ import annotations

import base64
import importlib
import math
import pickle
from collections.abc import Callable
from typing import Any

from stream_detector.core.models.base import Scored

PREFIX = "river:"
_DAY = 86_400.0


def _holt_winters(bucket_seconds: float) -> Any:
    from river import time_series

    # A daily season, as long as a day has buckets (at most 288: 5-minute slots).
    return time_series.HoltWinters(alpha=0.3, beta=0.01, gamma=0.3,
                                   seasonality=max(1, min(288, int(_DAY // bucket_seconds))))


def _snarimax(bucket_seconds: float) -> Any:
    from river import linear_model, optim, preprocessing, time_series

    regressor = preprocessing.StandardScaler() | linear_model.LinearRegression(
        optimizer=optim.SGD(0.005), intercept_lr=0.01)
    return time_series.SNARIMAX(p=3, d=1, q=1, regressor=regressor)


def _half_space_trees(bucket_seconds: float) -> Any:
    from river import anomaly, preprocessing

    # Half-space trees want features in [0, 1].
    return preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)


def _module_class(module: str, name: str) -> Callable[[float], Any]:
    def build(bucket_seconds: float) -> Any:
        return getattr(importlib.import_module(module), name)()

    return build


# Estimators with settings that suit one bucketed series; any other class of
# river.anomaly or river.time_series is built with its own defaults.
ESTIMATORS: dict[str, Callable[[float], Any]] = {
    "GaussianScorer": _module_class("river.anomaly", "GaussianScorer"),
    "HalfSpaceTrees": _half_space_trees,
    "HoltWinters": _holt_winters,
    "SNARIMAX": _snarimax,
    "StandardAbsoluteDeviation": _module_class("river.anomaly", "StandardAbsoluteDeviation"),
}


def estimator_factory(name: str) -> Callable[[float], Any]:
    """The builder of river estimator `name` (a class of `river.anomaly` or `river.time_series`)."""
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    for module in ("river.anomaly", "river.time_series"):
        if isinstance(getattr(importlib.import_module(module), name, None), type):
            return _module_class(module, name)
    raise ValueError(f"unknown river estimator {name!r}; name a class of river.anomaly or "
                     "river.time_series, e.g. " + ", ".join(sorted(ESTIMATORS)))


class RiverModel:
    """One series' river estimator, with a calibrated score in [0, 1].

    >>> m = RiverModel(300, "GaussianScorer", warmup_buckets=50)
    >>> for i in range(500):
    ...     m.learn_one(300 * i, 10 + (i * 7) % 5)
    >>> m.score_one(300 * 500, 12).score < 0.9 < m.score_one(300 * 500, 60).score
    True
    """

    __slots__ = ("bucket_seconds", "name", "estimator", "kind", "warmup_buckets", "alpha",
                 "seen", "error", "mean", "var")

    def __init__(self, bucket_seconds: float, name: str, warmup_buckets: int = 288,
                 halflife_buckets: float = 2016.0):
        from river import base, time_series

        self.bucket_seconds = float(bucket_seconds)
        self.name = name
        self.estimator = estimator_factory(name)(self.bucket_seconds)
        final = self.estimator
        if hasattr(final, "steps"):  # a pipeline: its last step decides the kind
            final = list(final.steps.values())[-1]
        if isinstance(final, time_series.base.Forecaster):
            self.kind = "forecaster"
        elif isinstance(final, base.SupervisedAnomalyDetector):
            self.kind = "univariate"
        else:
            self.kind = "features"
        self.warmup_buckets = warmup_buckets
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife_buckets)
        self.seen = 0
        self.error = 0.0
        self.mean = 0.0
        self.var = 0.0

    def _surprise(self, x: float) -> float | None:
        """The estimator's own score of x (None while it cannot give one)."""
        if self.kind == "forecaster":
            try:
                forecast = self.estimator.forecast(horizon=1)[0]
            except (IndexError, ValueError, ZeroDivisionError):
                return None  # not enough history for a forecast yet
            return abs(x - forecast) / self.error if self.error > 0 else None
        if self.kind == "univariate":
            return float(self.estimator.score_one(None, x))
        return float(self.estimator.score_one({"value": x}))

    def score_one(self, t: float, x: float) -> Scored:
        raw = self._surprise(x)
        spread = math.sqrt(self.var)
        if raw is None or self.seen < self.warmup_buckets or not spread > 0:
            return Scored(0.0, x, spread)
        z = (raw - self.mean) / spread
        return Scored(0.5 * math.erfc(-z / math.sqrt(2.0)), x, spread)

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        """Learn x; river estimators take no weights, so any weight above 0 learns in full."""
        if weight <= 0.0:
            return
        raw = self._surprise(x)
        if self.kind == "forecaster":
            try:
                forecast = self.estimator.forecast(horizon=1)[0]
            except (IndexError, ValueError, ZeroDivisionError):
                forecast = x
            a = max(self.alpha, 1.0 / (self.seen + 1))
            self.error += a * (abs(x - forecast) - self.error)
            self.estimator.learn_one(x)
        elif self.kind == "univariate":
            self.estimator.learn_one(None, x)
        else:
            self.estimator.learn_one({"value": x})
        if raw is not None and math.isfinite(raw):
            a = max(self.alpha, 1.0 / (self.seen + 1))
            diff = raw - self.mean
            self.mean += a * diff
            self.var = (1.0 - a) * (self.var + a * diff * diff)
        self.seen += 1

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        """Learn 0 for each bucket in [t_start, t_end), one by one, at most a day of them."""
        n = min(int(round((t_end - t_start) / self.bucket_seconds)),
                int(_DAY // self.bucket_seconds))
        for k in range(max(n, 0)):
            self.learn_one(t_start + k * self.bucket_seconds, 0.0)

    # --- state, as the detector's JSON snapshots carry it ----------------

    def state(self) -> dict:
        return {"name": self.name, "seen": self.seen, "error": self.error, "mean": self.mean,
                "var": self.var,
                "estimator": base64.b64encode(pickle.dumps(self.estimator)).decode()}

    def load_state(self, state: dict) -> None:
        if state["name"] != self.name:
            raise ValueError(f"stored river model {state['name']} is not {self.name}")
        self.estimator = pickle.loads(base64.b64decode(state["estimator"]))
        self.seen, self.error = state["seen"], state["error"]
        self.mean, self.var = state["mean"], state["var"]


def river_factory(model_name: str) -> Callable[[float], RiverModel]:
    """The per-series factory of `river:<Name>` (raises ValueError for an unknown name)."""
    name = model_name[len(PREFIX):]
    estimator_factory(name)  # fail now, naming the model, not at the first series
    return lambda bucket_seconds: RiverModel(bucket_seconds, name)
