"""Wilson intervals and quantiles (testbed.stats) against values computed by hand from
the textbook formulas (Brown, Cai and DasGupta 2001, eq. 4; nearest-rank quantiles)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.stats import median, quantile, wilson


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # p = k/n, z = 1.96: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    (0, 10, 0.0, 0.27753),
    (10, 10, 0.72247, 1.0),
    (5, 10, 0.23659, 0.76341),
    (1, 20, 0.00889, 0.23613),
    (19, 20, 0.76387, 0.99111),
    (50, 100, 0.40383, 0.59617),
])
def test_wilson_matches_the_formula(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-5) and hi == pytest.approx(high, abs=1e-5)


@given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate_inside_0_1(kn: tuple[int, int]) -> None:
    k, n = kn
    lo, hi = wilson(k, n)
    assert 0 <= lo <= k / n <= hi <= 1
    assert hi - lo <= 2 * 1.96 * math.sqrt(0.25 / n) + 1e-9  # never wider than the worst case


def test_wilson_refuses_nonsense() -> None:
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson(k, n)


def test_quantiles_are_measured_values() -> None:
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert quantile(xs, 0.5) == 3.0 and median(xs) == 3.0
    assert quantile(xs, 0.95) == 5.0 and quantile(xs, 0.2) == 1.0 and quantile(xs, 0.21) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert quantile([], 0.5) is None and median([]) is None
    with pytest.raises(ValueError):
        quantile(xs, 0.0)
