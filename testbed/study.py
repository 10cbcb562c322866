"""The birthday study's figures (pure): success per probe count, intervals, the curve.

A trial is one hard side (`sockets` open mappings) and one easy side probing random
ports of the hard side's address until the first hit, up to the largest probe count.
Its probes are a uniform random sequence of distinct ports, so its first k probes
are a uniform random k-subset of the range for every k: one trial answers every probe
count at once (success at k when the first hit came at an index below k). The points
of one run are therefore nested, not independent of each other; each point alone is
a binomial count over independent trials, with a Wilson score interval.

Analytic: 1 - C(N - open, k) / C(N, k) with N the size of the probed range
(peers.birthday.success_probability). Tailscale's published points ("How NAT
traversal works") are for 256 open ports and the whole port range.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peers.birthday import Birthday, success_probability
from testbed.nat import Kind, NatSpec
from testbed.stats import wilson

TAILSCALE = {174: 0.50, 256: 0.64, 1024: 0.98, 2048: 0.999}  # 256 ports open
TAILSCALE_OPEN = 256
MAX_TRIALS = 10000
MAX_CONCURRENCY = 32  # trials at once


@dataclass(frozen=True)
class StudyConfig:
    """What `study birthday` runs: the two NATs, the birthday parameters, how many trials
    and how many at once (checked here, so a bad flag is refused before a lab exists)."""

    hard: NatSpec
    easy: NatSpec
    birthday: Birthday  # sockets, largest probe count, rate, probed range
    trials: int
    concurrency: int = 8
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.trials <= MAX_TRIALS:
            raise ValueError(f"trials: must be 1 to {MAX_TRIALS}, got {self.trials}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency: must be 1 to {MAX_CONCURRENCY}, "
                             f"got {self.concurrency}")
        for what, spec in (("hard", self.hard), ("easy", self.easy)):
            if spec.kind is not Kind.NAT:
                raise ValueError(f"{what}: must be a NAT, not {spec.label!r}")


@dataclass(frozen=True)
class Point:
    probes: int
    successes: int
    trials: int
    ci: tuple[float, float]
    analytic: float  # for the mean number of open ports measured in the range
    analytic_nominal: float  # for `sockets` open ports
    tailscale: float | None

    @property
    def rate(self) -> float:
        return self.successes / self.trials

    @property
    def agrees(self) -> bool:
        """The analytic value lies inside the measured interval."""
        return self.ci[0] <= self.analytic <= self.ci[1]

    def to_json(self) -> dict[str, Any]:
        return {"probes": self.probes, "successes": self.successes, "trials": self.trials,
                "rate": round(self.rate, 6), "ci95": [round(x, 6) for x in self.ci],
                "analytic": round(self.analytic, 6),
                "analytic_nominal": round(self.analytic_nominal, 6),
                "tailscale": self.tailscale, "agrees": self.agrees}


def points(first_hits: Sequence[int | None], probes: Sequence[int], range_size: int,
           sockets: int, open_ports: float | None = None) -> list[Point]:
    """Each probe count's successes among the trials (first hit index < count), with the
    analytic value for the open ports measured (`open_ports`, else `sockets`)."""
    n = len(first_hits)
    k_open = sockets if open_ports is None else open_ports
    out = []
    for k in probes:
        wins = sum(1 for h in first_hits if h is not None and h < k)
        out.append(Point(k, wins, n, wilson(wins, n), _analytic(range_size, k_open, k),
                         success_probability(range_size, sockets, k),
                         TAILSCALE.get(k) if sockets == TAILSCALE_OPEN else None))
    return out


def _analytic(n: int, open_ports: float, k: int) -> float:
    """success_probability for a non-integer mean of open ports: interpolated between the
    two integers around it (the curve is smooth in the open ports)."""
    lo = math.floor(open_ports)
    frac = open_ports - lo
    p_lo = success_probability(n, lo, k)
    return p_lo if frac == 0 else p_lo + frac * (success_probability(n, lo + 1, k) - p_lo)


def format_points(pts: Sequence[Point]) -> str:
    lines = ["probes  success          95% CI            analytic  Tailscale  in CI"]
    for p in pts:
        ts = "-" if p.tailscale is None else f"{p.tailscale * 100:g}%"
        lines.append(f"{p.probes:<7d} {p.successes:>4d}/{p.trials:<4d} {p.rate * 100:5.1f}%  "
                     f"[{p.ci[0] * 100:5.1f}, {p.ci[1] * 100:5.1f}]%   "
                     f"{p.analytic * 100:6.2f}%   {ts:<9}  {'yes' if p.agrees else 'NO'}")
    return "\n".join(lines)


def plot(pts: Sequence[Point], range_size: int, open_ports: float, title: str,
         path: str) -> None:
    """The measured points with their intervals over the analytic curve (and Tailscale's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(p.probes for p in pts)
    xs = sorted({*range(1, top + 1, max(1, top // 400)), top})
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, [_analytic(range_size, open_ports, x) for x in xs], color="#4477aa",
            label=f"analytic: 1 - C(N-{open_ports:g}, k)/C(N, k), N = {range_size}")
    ax.errorbar([p.probes for p in pts], [p.rate for p in pts],
                yerr=[[p.rate - p.ci[0] for p in pts], [p.ci[1] - p.rate for p in pts]],
                fmt="o", color="#cc3311", capsize=4, label="measured (95% Wilson CI)")
    ts = [(p.probes, p.tailscale) for p in pts if p.tailscale is not None]
    if ts:
        ax.plot([k for k, _ in ts], [v for _, v in ts], "x", color="black",
                markersize=8, label="Tailscale's published points")
    ax.set_xscale("log")
    ax.set_xlabel("probes (log scale)")
    ax.set_ylabel("P(connection)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
