"""The simple baseline: exponentially weighted mean and variance, Gaussian tail.

It knows nothing of seasonality. It stays selectable (`model = "ewma"`) so
that every better model is measured against it.
"""

from __future__ import annotations

import math

from stream_detector.core.models.base import Scored


class EWMAModel:
    """Exponentially weighted z-score, mapped to [0, 1] by the Gaussian CDF.

    The moments follow the same recurrences as river's `stats.EWMean` and
    `stats.EWVar`, kept as two plain floats here because a run of n empty
    buckets then has a closed form (`learn_zeros` is O(1)), which river's
    objects cannot offer.

    >>> m = EWMAModel(bucket_seconds=60, warmup_buckets=3)
    >>> for i in range(50):
    ...     m.learn_one(i * 60, 10 + (i % 3))
    >>> round(m.score_one(50 * 60, 11).expected, 1)
    10.9
    >>> m.score_one(50 * 60, 11).score < 0.9 < m.score_one(50 * 60, 60).score
    True
    """

    __slots__ = ("bucket_seconds", "alpha", "warmup_buckets", "seen", "mean", "var")

    def __init__(self, bucket_seconds: float, alpha: float = 0.05, warmup_buckets: int = 60):
        self.bucket_seconds = bucket_seconds
        self.alpha = alpha
        self.warmup_buckets = warmup_buckets
        self.seen = 0
        self.mean = 0.0
        self.var = 0.0

    def score_one(self, t: float, x: float) -> Scored:
        expected = self.mean
        # Counts are at least Poisson-noisy: never trust a spread below sqrt(mean).
        spread = math.sqrt(max(self.var, expected, 1.0))
        if self.seen < self.warmup_buckets:
            return Scored(0.0, expected, spread)
        z = (x - expected) / spread
        score = math.erf(z / math.sqrt(2.0)) if z > 0 else 0.0
        return Scored(score, expected, spread)

    def learn_one(self, t: float, x: float, weight: float = 1.0) -> None:
        if weight <= 0.0:
            return
        if self.seen == 0:
            self.mean = x
        alpha = self.alpha * weight
        diff = x - self.mean
        self.mean += alpha * diff
        self.var = (1.0 - alpha) * (self.var + alpha * diff * diff)
        self.seen += 1

    def learn_zeros(self, t_start: float, t_end: float) -> None:
        n = int(round((t_end - t_start) / self.bucket_seconds))
        if n <= 0:
            return
        # n steps of the recurrences above with x = 0, summed as a geometric series.
        decay = (1.0 - self.alpha) ** n
        self.var = decay * (self.var + self.mean * self.mean * (1.0 - decay))
        self.mean *= decay
        self.seen += n
