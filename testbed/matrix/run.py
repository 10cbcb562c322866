"""Running a traversal matrix: the spec's slots dealt to labs, the labs run by workers,
the results gathered into one MatrixResult."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from peers.session import Timing
from testbed.coturn import require_turnserver
from testbed.lab import new_lab_name, require_root
from testbed.matrix.document import (
    build_document,
    configuration,
    documents,
    environment,
    iso,
    phase_summary,
)
from testbed.matrix.lab import Layout, PackedLayout, TopologyLayout
from testbed.matrix.progress import Progress
from testbed.matrix.runner import LabJob
from testbed.matrix.spec import MatrixSpec, plan
from testbed.matrix.workers import Workers
from testbed.nat import NatSpec, default_nats
from testbed.results import MatrixResult, PairResult


def layout_of(spec: MatrixSpec) -> Layout:
    if spec.topology is None:
        return PackedLayout()
    return TopologyLayout(spec.topology, dict(spec.nodes))


def lab_jobs(spec: MatrixSpec, layout: Layout, jobs: int) -> list[LabJob]:
    groups = plan(spec.slots(), jobs, layout.max_slots)
    names: list[str] = []
    for _ in groups:
        name = new_lab_name()
        while name in names:
            name = new_lab_name()
        names.append(name)
    return [LabJob(i, n, tuple(g)) for i, (n, g) in enumerate(zip(names, groups, strict=True))]


def _collect(by_lab: dict[int, list[PairResult]]) -> list[PairResult]:
    return [r for lab in sorted(by_lab) for r in by_lab[lab]]


@dataclass
class MatrixRun:
    """One run of a spec; `progress`, `on_idle` and `on_outcomes` are for the command line
    (a progress bar, loading plotting code while labs run, drawing the heatmap before
    coturn's counters are in)."""

    spec: MatrixSpec
    jobs: int
    progress: Progress | None = None
    on_idle: Callable[[], None] | None = None
    on_outcomes: Callable[[MatrixResult], None] | None = None
    documents: dict[str, MatrixResult] | None = None  # by strategy, after run()

    def run(self) -> MatrixResult:
        """The results document (of the first strategy when there are several: all of them
        are in `documents`)."""
        require_root()
        require_turnserver()
        layout = layout_of(self.spec)
        lab_list = lab_jobs(self.spec, layout, self.jobs)
        if self.progress is not None:
            self.progress.start(sum(len(j.slots) for j in lab_list), len(lab_list))
        t_start, t0 = time.time(), time.monotonic()
        workers = Workers(layout, self.spec.timing, self.jobs, self.progress, self.on_idle)
        if self.on_outcomes is not None:
            early = self.on_outcomes
            workers.on_outcomes = lambda: early(
                build_document(self.spec, _collect(workers.early), {}))
        workers.run(lab_list)
        meta = environment()
        meta.update(started=iso(t_start), finished=iso(time.time()),
                    configuration=configuration(self.spec, layout, self.jobs, len(lab_list)),
                    timings_s={"run": round(time.monotonic() - t0, 3),
                               "phases_max_over_labs": phase_summary(workers.labs),
                               "labs": workers.labs})
        self.documents = documents(self.spec, _collect(workers.final), meta)
        return next(iter(self.documents.values()))


def run_matrix(nats: Sequence[NatSpec] | None = None, *, repeats: int = 1,
               jobs: int | None = None, only: Iterable[tuple[NatSpec, NatSpec]] | None = None,
               topology: str | Path | None = None, a_node: str = "alice",
               b_node: str = "bob", timing: Timing | None = None,
               progress: Progress | None = None) -> MatrixResult:
    """Every ordered pairing of `nats` (default: none and the four classic types), each
    `repeats` times in fresh namespaces, or only the `only` (Alice's, Bob's) cells; in
    the packed matrix lab, or one lab of `topology` per pairing with Alice and Bob in
    `a_node` and `b_node`. The result carries the model's prediction for every cell."""
    cells = tuple(only) if only is not None else None
    if cells is not None:
        nats = list(dict.fromkeys(n for cell in cells for n in cell))
    spec = MatrixSpec(tuple(nats or default_nats()), repeats, cells, timing or Timing(),
                      Path(topology) if topology is not None else None,
                      (("alice", a_node), ("bob", b_node)))
    return MatrixRun(spec, jobs or os.cpu_count() or 1, progress).run()
