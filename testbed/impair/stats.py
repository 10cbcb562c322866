"""Acceptance intervals for measured conditions: what a count or a mean may be, given
the configured value, at a confidence level. Pure; used by the conformance tests and
available to sweeps.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def _log_pmf(n: int, k: int, p: float) -> float:
    if p in (0.0, 1.0):
        return 0.0 if (k == 0 and p == 0.0) or (k == n and p == 1.0) else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_interval(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """The central interval [lo, hi] of Binomial(n, p) holding at least `level` of its
    mass: P(X < lo) <= (1-level)/2 and P(X > hi) <= (1-level)/2 (exact, from the pmf)."""
    if not 0 <= p <= 1 or n < 0:
        raise ValueError(f"binomial_interval: n={n}, p={p}")
    tail = (1 - level) / 2
    pmf = [math.exp(_log_pmf(n, k, p)) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while lo < n and acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while hi > 0 and acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def markov_share_interval(n: int, p: float, r: float, level: float = 0.99
                          ) -> tuple[float, float]:
    """Where the share of the Bad state over n steps of a two-state chain (G->B p,
    B->G r) lies: mean pi = p/(p+r); the variance of the sum is n pi (1-pi) (1+l)/(1-l)
    with l = 1-p-r, the correlation that makes bursty loss vary more than random loss."""
    pi = p / (p + r)
    lam = 1 - p - r
    sd = math.sqrt(pi * (1 - pi) * (1 + lam) / (1 - lam) / n)
    z = _z(level)
    return pi - z * sd, pi + z * sd


def geometric_mean_interval(bursts: int, r: float, level: float = 0.99
                            ) -> tuple[float, float]:
    """Where the mean of `bursts` geometric run lengths (success r, mean 1/r) lies."""
    mean = 1 / r
    sd = math.sqrt((1 - r) / r**2 / max(bursts, 1))
    z = _z(level)
    return mean - z * sd, mean + z * sd


def within(measured: float, configured: float, absolute: float, relative: float) -> bool:
    """|measured - configured| within `absolute` or `relative` of configured, whichever
    is larger (the issue's "within 1 ms or 5%")."""
    return abs(measured - configured) <= max(absolute, relative * abs(configured))
