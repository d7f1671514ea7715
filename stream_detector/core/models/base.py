"""The one small protocol every per-series model speaks.

A model sees one series (one service, or one service in one region) as a count
per closed bucket. For every bucket the detector first asks for a score, then
decides how much the model may learn from it (nothing while an incident is
open, so an outage is never learned as the new normal).

Like river's estimators, a model keeps its state in plain attributes, so it
pickles and snapshots as it is.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Scored(NamedTuple):
    """What a model says about one bucket."""

    score: float
    """Anomaly score in [0, 1]; 0 while the model is still warming up."""
    expected: float
    """The model's baseline for this bucket (same unit as the value)."""
    spread: float
    """How far from `expected` a normal value may lie (about one standard deviation)."""


class SeriesModel(Protocol):
    """Online model of one count series."""

    def score_one(self, t: float, x: float) -> Scored:
        """Score value `x` of the bucket starting at epoch seconds `t`, without learning it."""
        ...

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        """Learn value `x` of the bucket at `t`; `weight` in [0, 1] down-weights it."""
        ...

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        """Learn that every bucket in [t_start, t_end) had no reports, in one step."""
        ...
