"""Tail probabilities of (overdispersed) counts, cheap enough for the hot path.

A count whose variance exceeds its mean is modelled as quasi-Poisson: with
variance `c * mean`, the count divided by `c` behaves like a Poisson variable
of mean `mean / c`. For a negative binomial with dispersion `phi`,
`c = 1 + phi * mean`, so peaks get the wider tail they have in real traffic.

The Poisson tail itself comes from the exact identity
`P(Poisson(m) >= x) = P(Gamma(x, 1) <= m)` and the Wilson-Hilferty cube-root
normal approximation of the gamma (chi-square) distribution. It keeps the
skew of small counts that a Gaussian z-score misses (3 reports when 0.3 are
expected has a Gaussian z of 4.9 but happens once in 280 buckets), costs
one cube root and one square root, and stays within about 0.2 of the exact
normal deviate over the range a detector cares about (it errs on the
cautious side for tiny means).

Results are normal deviates ("surprise z"): 0 means unremarkable, 3 is about
a 1-in-740 event, 5 about 1 in 3.5 million. River's `proba` module has no
Poisson or negative-binomial distribution; these few lines stand in for one,
on NumPy arrays.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr


def poisson_upper_z(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Surprise of at least `x` events when `m` are expected, as a normal deviate.

    The value `z` satisfies `P(Poisson(m) >= x) ~= Phi(-z)`; it is 0 or less
    when `x` is not above what is expected. Element-wise on arrays (the
    model bank scores a bucket's series at once), and on plain numbers.

    >>> float(poisson_upper_z(10, 1.0).round(2))  # exact tail 1.1e-7, i.e. z = 5.18
    4.98
    >>> float(poisson_upper_z(130, 100.0).round(2))  # exact tail 0.0023, i.e. z = 2.84
    2.84
    >>> poisson_upper_z(np.array([0.0, 3.0, 10.0]), 3.0).round(2).tolist()  # 10: exact z = 3.06
    [0.0, -0.19, 3.03]
    """
    x = np.asarray(x, dtype=float)
    # An empty count divides by zero here; it is no surprise, and `where` says so.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = -3.0 * np.sqrt(x) * (np.cbrt(m / x) - 1.0 + 1.0 / (9.0 * x))
    return np.where(x > 0.0, z, 0.0)


def poisson_lower_z(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Surprise of at most `x` events when `m` are expected, as a normal deviate.

    `P(Poisson(m) <= x) = 1 - P(Poisson(m) >= x + 1)`.

    >>> float(poisson_lower_z(0, 10.0).round(2))  # exact tail 4.5e-5, i.e. z = 3.91
    3.8
    """
    return -poisson_upper_z(np.asarray(x, dtype=float) + 1.0, m)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF.

    >>> float(normal_cdf(1.96).round(3))
    0.975
    """
    return ndtr(z)
