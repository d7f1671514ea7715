"""The quarter-hour shape of each service's day, on top of the model's hourly profile.

The seasonal model knows each hour of the day; a 30-minute evening bump
that comes every day is averaged over its hour, so its own minutes look
like a 1.5-2.5x excess every evening, for ever. This keeps, per service,
the ratio of what its buckets held to what the model expected in each of
the 96 quarter-hours of the day (exponentially weighted sums, a half-life
of `halflife_days`), and multiplies the expectation by it:

    factor[q] = (reports[q] + prior) / (expected[q] + prior)

The `prior` (in reports) shrinks the factor towards 1 until the quarter has
seen many more reports than that, so the shape is learned where a service
has the volume to learn it and left at 1 where it has not. A service's
regions share its shape (the evening is the same evening), so the state is
per service, in float32: 768 bytes per service, nothing per region.
"""

from __future__ import annotations

import numpy as np

QUARTERS = 96
QUARTER_MS = 900_000
DAY_MS = 86_400_000


class QuarterShape:
    """Per service id: EW sums of reports and of expectations per quarter-hour of the day.

    >>> shape = QuarterShape(bucket_ms=60_000, prior=5.0)
    >>> ids = np.array([0])
    >>> for day in range(14):  # 3 reports a minute, 9 in the quarter from 21:00
    ...     for minute in range(20 * 60, 22 * 60):
    ...         t = day * DAY_MS + minute * 60_000
    ...         x = 9.0 if 21 * 60 <= minute < 21 * 60 + 15 else 3.0
    ...         shape.learn(ids, t, np.array([x]), np.array([3.0]), np.array([1.0]))
    >>> t = 14 * DAY_MS
    >>> [round(float(shape.factor(ids, t + m * 60_000)[0]), 1) for m in (20 * 60, 21 * 60)]
    [1.0, 3.0]
    """

    def __init__(self, bucket_ms: int, halflife_days: float = 7.0, prior: float = 30.0):
        self.bucket_ms = bucket_ms
        per_quarter_day = max(QUARTER_MS // bucket_ms, 1)
        # Each quarter sees `per_quarter_day` buckets a day.
        self.keep = np.float32(0.5 ** (1.0 / (halflife_days * per_quarter_day)))
        self.prior = np.float32(prior)
        self.sums = np.zeros((0, 2, QUARTERS), dtype=np.float32)
        # Start of each service's last learned bucket, -1 before the first.
        self.last_ms = np.zeros(0, dtype=np.int64)

    def ensure(self, services: int) -> None:
        n = len(self.sums)
        if services > n:
            size = max(services, 2 * n, 16)
            grown = np.zeros((size, 2, QUARTERS), dtype=np.float32)
            grown[:n] = self.sums
            self.sums = grown
            self.last_ms = np.concatenate([self.last_ms, np.full(size - n, -1, dtype=np.int64)])

    @staticmethod
    def quarter(start_ms: int) -> int:
        return int(start_ms % DAY_MS // QUARTER_MS)

    def factor(self, services: np.ndarray, start_ms: int) -> np.ndarray:
        """The multiplier of the expectation of each service's bucket at `start_ms`."""
        self.ensure(int(services.max()) + 1 if len(services) else 0)
        q = self.quarter(start_ms)
        reports = self.sums[services, 0, q]
        expected = self.sums[services, 1, q]
        return ((reports + self.prior) / (expected + self.prior)).astype(float)

    def learn(self, services: np.ndarray, start_ms: int, x: np.ndarray, expected: np.ndarray,
              weights: np.ndarray) -> None:
        """Learn the service-wide buckets (with the model's hourly expectation)
        of `services`; weights of 0 (anomalous buckets) teach nothing."""
        learn = weights > 0
        if not learn.any():
            return
        services = services[learn]
        self.ensure(int(services.max()) + 1)
        q = self.quarter(start_ms)
        expected = expected[learn]
        # A service has no bucket on the minutes it got no report: those of
        # this quarter since its last bucket are zeros expected at this rate.
        last = self.last_ms[services]
        quarter_start = start_ms - start_ms % QUARTER_MS
        zeros = np.where(last >= quarter_start, (start_ms - last) // self.bucket_ms - 1, 0)
        zeros = np.maximum(zeros, 0).astype(np.float32)
        sums = self.sums[services, :, q]
        sums *= (self.keep ** (zeros + 1))[:, None]
        sums[:, 0] += x[learn]
        sums[:, 1] += expected * (1.0 + zeros)
        self.sums[services, :, q] = sums
        self.last_ms[services] = start_ms

    def state(self) -> dict:
        return {"services": len(self.sums), "sums": self.sums.ravel().tolist(),
                "last_ms": self.last_ms.tolist()}

    def load_state(self, state: dict) -> None:
        self.sums = np.array(state["sums"], dtype=np.float32).reshape(
            state["services"], 2, QUARTERS
        )
        self.last_ms = np.array(state["last_ms"], dtype=np.int64)
