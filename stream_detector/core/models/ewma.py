"""The simple baseline: exponentially weighted mean and variance, Gaussian tail.

It knows nothing of seasonality. It stays selectable (`model = "ewma"`) so
that every better model is measured against it.
"""

from __future__ import annotations

import math

from river import stats

from stream_detector.core.models.base import Scored


class EWMAModel:
    """Exponentially weighted z-score, mapped to [0, 1] by the Gaussian CDF.

    >>> m = EWMAModel(bucket_seconds=60, warmup_buckets=3)
    >>> for i in range(50):
    ...     m.learn_one(i * 60, 10 + (i % 3))
    >>> round(m.score_one(50 * 60, 11).expected, 1)
    10.9
    >>> m.score_one(50 * 60, 11).score < 0.9 < m.score_one(50 * 60, 60).score
    True
    """

    __slots__ = ("bucket_seconds", "warmup_buckets", "seen", "mean", "var", "last_t")

    def __init__(self, bucket_seconds: float, alpha: float = 0.05, warmup_buckets: int = 60):
        self.bucket_seconds = bucket_seconds
        self.warmup_buckets = warmup_buckets
        self.seen = 0
        self.mean = stats.EWMean(fading_factor=alpha)
        self.var = stats.EWVar(fading_factor=alpha)
        self.last_t: float | None = None

    def score_one(self, t: float, x: float) -> Scored:
        expected = self.mean.get()
        # Counts are at least Poisson-noisy: never trust a spread below sqrt(mean).
        spread = math.sqrt(max(self.var.get(), expected, 1.0))
        if self.seen < self.warmup_buckets:
            return Scored(0.0, expected, spread)
        z = (x - expected) / spread
        score = math.erf(z / math.sqrt(2.0)) if z > 0 else 0.0
        return Scored(score, expected, spread)

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        if weight <= 0.0:
            return
        if weight < 1.0:
            x = self.mean.get() + weight * (x - self.mean.get())
        self.mean.update(x)
        self.var.update(x)
        self.seen += 1
        self.last_t = t

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        n = int(round((t_end - t_start) / self.bucket_seconds))
        # Beyond a few hundred zeros the moments have converged to zero anyway.
        for _ in range(min(n, 500)):
            self.mean.update(0.0)
            self.var.update(0.0)
        self.seen += n
