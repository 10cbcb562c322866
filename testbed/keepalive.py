"""The keepalive study: a NAT mapping timeout T, keepalive intervals around it, and where
the direct path dies, measured from the wire.

    runs = run_study(StudyConfig(timeout=2, intervals=(1.5, 1.9, 2.1, 2.5)))
    for row in summarize(runs, 2): ...

Each run is a pair lab whose two routers both time out idle UDP mappings after T
seconds; the peers connect directly, then keep an idle call (no data: keepalives
alone, the project's peer's consent checks) for a few intervals. Both peers' hosts are
tapped (testbed.dynamics.FlowTap): a keepalive probe or ack that left one host and
never reached the other is the path dying, and the path's idle time at the first such
loss says where (testbed.callflow.idle). With port allocation `random` (the default
here), a mapping that expired comes back on another port and the old path is dead for
sure; with port preservation it comes back on the same port, and one side's probe
may open the way for the other's (see docs/conditions.md).

Expected: a path whose keepalives come more often than T never loses one; a path
whose keepalives come less often loses the first one after connecting, at an idle
time of about one interval. The study shows whether the boundary lies where T is.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from peers import probe as pr
from peers.session import Timing
from testbed.callflow import Sighting, idle
from testbed.dynamics import FlowTap
from testbed.nat import NatSpec, nat_from_label
from testbed.pair import pair_lab, pair_topology, run_peers
from testbed.results import ROLES
from testbed.stats import wilson

MAX_RUNS = 2000
PUNCH_BURST_S = 0.25  # punching rounds are at most 0.2 s apart (Timing.punch_interval_max)
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.05, 60.0


@dataclass(frozen=True)
class StudyConfig:
    timeout: int  # the NATs' UDP mapping timeout T, whole seconds (as the NAT takes it)
    intervals: tuple[float, ...]  # keepalive intervals (s)
    repeats: int = 3
    nat: str = "port-restricted-cone:random"  # both routers; T is added to it
    keepalives: int = 4  # the call lasts this many intervals (and at least 2 T)
    jobs: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.timeout <= 600:
            raise ValueError(f"timeout: 1 to 600 s, got {self.timeout}")
        if not self.intervals or len(set(self.intervals)) != len(self.intervals):
            raise ValueError("intervals: distinct intervals, at least one")
        for k in self.intervals:
            if not MIN_INTERVAL_S <= k <= MAX_INTERVAL_S:
                raise ValueError(f"intervals: {k:g}s is outside {MIN_INTERVAL_S:g}.."
                                 f"{MAX_INTERVAL_S:g} s")
        if not 1 <= self.repeats or len(self.intervals) * self.repeats > MAX_RUNS:
            raise ValueError(f"repeats: 1 or more, at most {MAX_RUNS} runs in all")
        if not 2 <= self.keepalives <= 100:
            raise ValueError(f"keepalives: 2 to 100, got {self.keepalives}")
        if not 1 <= self.jobs <= 16:
            raise ValueError(f"jobs: 1 to 16, got {self.jobs}")
        spec = nat_from_label(self.nat)
        if spec.mapping_timeout != NatSpec().mapping_timeout:
            raise ValueError(f"nat: {self.nat!r} sets its own mapping timeout; give T apart")

    @property
    def nat_spec(self) -> NatSpec:
        return nat_from_label(f"{self.nat}:{self.timeout}s")

    def call(self, interval: float) -> float:
        return round(max(self.keepalives * interval, 2 * self.timeout) + 0.5, 3)

    def timing(self, interval: float) -> Timing:
        """Keepalives every `interval`, no data; consent given up only after several
        intervals, so that the first loss is seen on the wire before any restart."""
        return Timing(keepalive_interval=interval, consent_timeout=3 * interval,
                      call=self.call(interval), data_interval=0.0)


@dataclass(frozen=True)
class Run:
    interval: float
    repeat: int
    outcome: str  # how the peers connected: direct (else the run says nothing)
    probes: int  # keepalive probes and acks sent during the call, both ways
    lost: int  # ... that never arrived
    idle_ms: float | None  # the path's idle time at the first loss (either way)
    restarts: int  # restarts the peers made (both)
    lab: str

    @property
    def died(self) -> bool:
        return self.lost > 0

    def to_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "repeat": self.repeat, "outcome": self.outcome,
                "probes": self.probes, "lost": self.lost, "died": self.died,
                "idle_at_death_ms": self.idle_ms, "restarts": self.restarts, "lab": self.lab}


def run_one(cfg: StudyConfig, interval: float, repeat: int) -> Run:
    """One pair lab, one idle call, both hosts tapped."""
    nat = cfg.nat_spec
    topo, where = pair_topology(nat, nat)
    timing = cfg.timing(interval)
    with pair_lab(topo) as lab:
        hosts = [(where.nodes[r], topo.node(where.nodes[r]).interfaces[0].name) for r in ROLES]
        with FlowTap(lab, hosts) as tap:
            run = run_peers(lab, timing, where.nodes)
        name = lab.name
    a, b = where.nodes["alice"], where.nodes["bob"]
    peers = run.peers
    outcome = peers["alice"].outcome if peers["alice"].outcome == peers["bob"].outcome \
        else "failed"
    seen = tap.sightings
    start = punch_end(seen, interval)  # punching probes may be lost: that is punching
    ways = [idle(seen, a, b, after=start), idle(seen, b, a, after=start)]
    idles = [w.first_lost_idle_ms for w in ways if w.first_lost_idle_ms is not None]
    return Run(interval, repeat, outcome, sum(w.probes for w in ways),
               sum(w.lost for w in ways), min(idles) if idles else None,
               sum(len(p.restarts) for p in peers.values()), name)


def punch_end(seen: Sequence[Sighting], interval: float) -> float:
    """When punching ended, from the wire: the last ack of the first burst of acks (a
    burst's acks come closer together than PUNCH_BURST_S or half the keepalive
    interval, whichever is less; keepalives only start one interval later)."""
    acks = sorted(s.t for s in seen if s.kind == pr.ACK and not s.outgoing)
    if not acks:
        return math.inf
    gap = min(PUNCH_BURST_S, interval / 2)
    end = acks[0]
    for t in acks[1:]:
        if t - end > gap:
            break
        end = t
    return end + 0.001


def _one(args: tuple[StudyConfig, float, int]) -> Run:
    return run_one(*args)


def run_study(cfg: StudyConfig, progress: Callable[[Run], None] | None = None) -> list[Run]:
    """Every interval x repeat, in `cfg.jobs` worker processes (one lab each)."""
    work = [(cfg, k, r) for r in range(1, cfg.repeats + 1) for k in cfg.intervals]
    out: list[Run] = []
    if cfg.jobs == 1:
        for w in work:
            out.append(run_one(*w))
            if progress:
                progress(out[-1])
        return out
    with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("fork")) as ex:
        for run in ex.map(_one, work):
            out.append(run)
            if progress:
                progress(run)
    return out


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class Row:
    interval: float
    runs: int  # runs whose peers connected directly (the others say nothing)
    died: int
    ci: tuple[float, float]  # 95 % Wilson interval of the share that died
    idle_ms: float | None  # median idle time at the first loss

    def to_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "runs": self.runs, "died": self.died,
                "ci95": [round(x, 4) for x in self.ci], "median_idle_at_death_ms": self.idle_ms}


def summarize(runs: Sequence[Run]) -> list[Row]:
    rows = []
    for k in sorted({r.interval for r in runs}):
        mine = [r for r in runs if r.interval == k and r.outcome == "direct"]
        died = [r for r in mine if r.died]
        idles = [r.idle_ms for r in died if r.idle_ms is not None]
        rows.append(Row(k, len(mine), len(died), wilson(len(died), len(mine)) if mine
                        else (0.0, 1.0), round(statistics.median(idles), 1) if idles else None))
    return rows


@dataclass(frozen=True)
class Verdict:
    survives_up_to: float | None  # the longest interval at which no run died
    dies_from: float | None  # the shortest interval at which every run died
    exact: bool  # all below T survived, all above died, and the boundary brackets T

    def text(self, timeout: int) -> str:
        if self.exact:
            return (f"the path dies exactly where the mapping timeout is: every run with "
                    f"keepalives every {self.survives_up_to:g} s or less kept it, every run "
                    f"with {self.dies_from:g} s or more lost it (T = {timeout} s)")
        return (f"not a clean boundary at T = {timeout} s: survived up to "
                f"{self.survives_up_to}, died from {self.dies_from} (see the table)")


def verdict(rows: Sequence[Row], timeout: int) -> Verdict:
    below = [r for r in rows if r.interval < timeout and r.runs]
    above = [r for r in rows if r.interval > timeout and r.runs]
    survives = max((r.interval for r in rows if r.runs and r.died == 0), default=None)
    dies = min((r.interval for r in rows if r.runs and r.died == r.runs), default=None)
    exact = (bool(below) and bool(above) and all(r.died == 0 for r in below)
             and all(r.died == r.runs for r in above))
    return Verdict(survives, dies, exact)


def format_rows(rows: Sequence[Row], timeout: int) -> str:
    lines = [f"NAT UDP mapping timeout T = {timeout} s",
             f"{'keepalive':>10} {'runs':>5} {'died':>5} {'share died (95% CI)':>22} "
             f"{'idle at death':>14}"]
    for r in rows:
        share = f"{r.died / r.runs:.0%} [{r.ci[0]:.0%}, {r.ci[1]:.0%}]" if r.runs else "-"
        idle_s = "-" if r.idle_ms is None else f"{r.idle_ms / 1000:.3f} s"
        mark = " <T" if r.interval < timeout else (" >T" if r.interval > timeout else " =T")
        lines.append(f"{r.interval:>9g}s {r.runs:>5} {r.died:>5} {share:>22} "
                     f"{idle_s:>14}{mark}")
    return "\n".join(lines)
