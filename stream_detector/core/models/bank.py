"""Many series scored at once: the form in which the detector holds its models.

Every series of a partition closes its buckets at the same instants, so one
closed bucket is one step for all of them. A `ModelBank` keeps the state of
all its series side by side and scores the series that have something to
say in a bucket (reports, or an open incident) with array arithmetic, one
call per bucket instead of a Python call per series: per-series Python was
the detector's bottleneck (about 8 microseconds per series and bucket,
where a consumer reading 300,000 reports a second has about one).

A series is a row, numbered from 0 in the order `add` created them. Per
bucket the detector calls `score` with `catch_up` (first learn the empty
buckets each row skipped) and then `learn` with the weight each row may
learn with.

`SingleSeries` turns a bank of one row back into the per-series protocol
(`score_one`/`learn_one`/`learn_zeros`) for one-series uses such as
`backtest --input`; `PerSeriesBank` does the opposite for a model written
per series, such as the EWMA baseline.
"""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np

from stream_detector.core.models.base import Scored, SeriesModel


class BankScores(NamedTuple):
    """What a bank says about one bucket of several rows; arrays in row order."""

    score: np.ndarray
    expected: np.ndarray
    spread: np.ndarray


class ModelBank(Protocol):
    bucket_seconds: float

    def __len__(self) -> int:
        """Rows in the bank."""
        ...

    def add(self) -> int:
        """A new series' row, with nothing learned yet."""
        ...

    def learn_zeros(self, rows: np.ndarray, t_start: np.ndarray, t_end: float) -> None:
        """Learn that every bucket in [t_start[i], t_end) of row i had no reports."""
        ...

    def score(
        self, rows: np.ndarray, t: float, x: np.ndarray, catch_up: bool = False
    ) -> BankScores:
        """Score value x[i] of row rows[i] in the bucket starting at epoch second `t`.

        With `catch_up`, each row first learns the empty buckets between its
        last learned bucket and `t` (a series of irregular rows does not want that).
        `learn` must follow, and stores both.
        """
        ...

    def learn(self, weights: np.ndarray | None = None) -> None:
        """Learn the bucket last scored; weights[i] in [0, 1] (default 1) down-weights row i."""
        ...

    def state(self) -> dict:
        """Everything learned, as JSON-ready values."""
        ...

    def load_state(self, state: dict) -> None:
        """Replace everything learned by a `state()` of a bank built the same way."""
        ...


_ROW0 = np.zeros(1, dtype=np.intp)


class SingleSeries:
    """One series' model over row 0 of a bank (the per-series `SeriesModel` protocol)."""

    __slots__ = ("bank", "_scored")

    def __init__(self, bank: ModelBank):
        self.bank = bank
        bank.add()
        self._scored: tuple[float, float] | None = None

    def score_one(self, t: float, x: float) -> Scored:
        s = self.bank.score(_ROW0, t, np.array([x], dtype=float))
        self._scored = (t, x)
        return Scored(float(s.score[0]), float(s.expected[0]), float(s.spread[0]))

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        if self._scored != (t, x):
            self.score_one(t, x)
        self._scored = None
        self.bank.learn(np.array([weight], dtype=float))

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        self._scored = None
        self.bank.learn_zeros(_ROW0, np.array([t_start], dtype=float), t_end)

    def __getstate__(self) -> dict:
        return {"bank": self.bank}

    def __setstate__(self, state: dict) -> None:
        self.bank = state["bank"]
        self._scored = None


class PerSeriesBank:
    """A bank of per-series model objects, stepped one by one.

    For models simple enough that per-series Python is their natural form
    (the EWMA baseline, the metric model, river estimators). Their state is
    captured through `__slots__`, as river keeps estimator state in plain
    attributes, or by the model's own `state()` / `load_state()` where it
    has them (`RiverModel`: a pickle as text).
    """

    def __init__(self, factory: Callable[[float], SeriesModel], bucket_seconds: float):
        self.factory = factory
        self.bucket_seconds = bucket_seconds
        self.models: list[SeriesModel] = []
        self.last_t: list[float | None] = []
        self._scored: tuple[np.ndarray, float, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.models)

    def add(self) -> int:
        self.models.append(self.factory(self.bucket_seconds))
        self.last_t.append(None)
        return len(self.models) - 1

    def learn_zeros(self, rows: np.ndarray, t_start: np.ndarray, t_end: float) -> None:
        for row, start in zip(rows.tolist(), t_start.tolist(), strict=True):
            self.models[row].learn_zeros(start, t_end)
            self.last_t[row] = t_end - self.bucket_seconds

    def score(
        self, rows: np.ndarray, t: float, x: np.ndarray, catch_up: bool = False
    ) -> BankScores:
        if catch_up:
            step = self.bucket_seconds
            for row in rows.tolist():
                last = self.last_t[row]
                if last is not None and t - last > step:
                    self.models[row].learn_zeros(last + step, t)
        scored = [self.models[r].score_one(t, v) for r, v in zip(rows.tolist(), x.tolist(),
                                                                   strict=True)]
        self._scored = (rows, t, x)
        columns = np.array(scored, dtype=float).reshape(len(scored), 3)
        return BankScores(columns[:, 0], columns[:, 1], columns[:, 2])

    def learn(self, weights: np.ndarray | None = None) -> None:
        assert self._scored is not None, "learn() follows score()"
        rows, t, x = self._scored
        self._scored = None
        w = [1.0] * len(rows) if weights is None else weights.tolist()
        for row, v, weight in zip(rows.tolist(), x.tolist(), w, strict=True):
            self.models[row].learn_one(t, v, weight)
            self.last_t[row] = t

    def state(self) -> dict:
        return {"models": [_model_state(m) for m in self.models], "last_t": self.last_t}

    def load_state(self, state: dict) -> None:
        self.models = [
            _load_model(self.factory(self.bucket_seconds), s) for s in state["models"]
        ]
        self.last_t = list(state["last_t"])


def _model_state(model: Any) -> Any:
    """A model's own `state()` where it has one (a river estimator's pickle), else its slots."""
    return model.state() if hasattr(model, "load_state") else _slots_state(model)


def _load_model(model: Any, state: Any) -> Any:
    if hasattr(model, "load_state"):
        model.load_state(state)
        return model
    return _load_slots(model, state)


def _slots_state(model: Any) -> list:
    state = []
    for name in type(model).__slots__:
        value = getattr(model, name)
        if isinstance(value, array):
            # Raw bytes keep NaN and cost 8 bytes a float.
            value = {"a": value.typecode, "b": base64.b64encode(value.tobytes()).decode()}
        elif isinstance(value, float) and not math.isfinite(value):
            value = {"f": repr(value)}  # JSON has no NaN or infinity
        state.append(value)
    return state


def _load_slots(model: Any, state: list) -> Any:
    names = type(model).__slots__
    if len(names) != len(state):
        raise ValueError("stored model state does not match the model's fields")
    for name, value in zip(names, state, strict=True):
        if isinstance(value, dict) and "a" in value:
            value = array(value["a"], base64.b64decode(value["b"]))
        elif isinstance(value, dict) and "f" in value:
            value = float(value["f"])
        setattr(model, name, value)
    return model
