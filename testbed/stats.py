"""Small statistics for measured rates and times (pure): Wilson intervals, quantiles.

A rate over n independent trials is a binomial proportion; its 95 % interval here is
the Wilson score interval (Wilson 1927; recommended over the normal approximation by
Brown, Cai and DasGupta, "Interval estimation for a binomial proportion", Statistical
Science 2001), which stays inside [0, 1] and is sensible at 0 and n successes. Quantiles
are the nearest-rank definition on the sorted sample (a measured value, never an
interpolated one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of successes/n (95 % by default)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes ({successes}) <= n ({n}) and n > 0")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 there,
    high = 1.0 if successes == n else min(1.0, centre + half)  # not 1e-19 off
    return low, high


def quantile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q <= 1): the smallest value with at least q of the
    sample at or below it. None for an empty sample."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float | None:
    """The middle value (the mean of the two middle ones for an even count)."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
