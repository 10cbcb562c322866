"""The birthday study's figures (testbed.study): intervals, nested points, the plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from peers.birthday import success_probability
from testbed.study import format_points, plot, points, wilson


def _score_bound(k: int, n: int, upper: bool, z: float = 1.959963984540054) -> float:
    """Wilson's definition solved by bisection: the p where |k/n - p| = z sqrt(p(1-p)/n)."""
    lo, hi = (k / n, 1.0) if upper else (0.0, k / n)
    for _ in range(200):
        mid = (lo + hi) / 2
        outside = abs(k / n - mid) > z * (mid * (1 - mid) / n) ** 0.5
        if outside == upper:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(("k", "n"), [(81, 263), (1, 20), (108, 200), (199, 200)])
def test_wilson_interval_solves_the_score_equation(k: int, n: int) -> None:
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(_score_bound(k, n, False), abs=1e-9)
    assert hi == pytest.approx(_score_bound(k, n, True), abs=1e-9)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_points_count_first_hits_below_each_probe_count() -> None:
    hits = [0, 5, 9, None, 100]
    pts = points(hits, [1, 10, 101], 1000, 10)
    assert [(p.probes, p.successes, p.trials) for p in pts] == [(1, 1, 5), (10, 3, 5),
                                                              (101, 4, 5)]
    assert pts[1].analytic == pytest.approx(success_probability(1000, 10, 10))
    assert all(p.tailscale is None for p in pts)  # Tailscale's figures are for 256 ports


def test_tailscale_points_appear_for_256_ports_and_the_mean_open_ports_interpolates() -> None:
    pts = points([10] * 4, [174], 64512, 256, open_ports=255.5)
    assert pts[0].tailscale == 0.5
    mid = (success_probability(64512, 255, 174) + success_probability(64512, 256, 174)) / 2
    assert pts[0].analytic == pytest.approx(mid)
    assert pts[0].analytic_nominal == pytest.approx(success_probability(64512, 256, 174))
    assert "174" in format_points(pts) and "50%" in format_points(pts)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pts = points([3, 50, None], [10, 100], 1000, 16)
    plot(pts, 1000, 16, "t", str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
