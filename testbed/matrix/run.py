"""Running a traversal matrix: the spec's slots (or one shard's) dealt to labs, the labs
run by workers, each lab's results handed on as it reports: gathered into one
MatrixResult (run_matrix, the Python API) or streamed to records.jsonl with a manifest
(the command line, shards; testbed.matrix.records). Slots are made from their numbers
as labs start, so a run holds the running labs' slots, not the whole run's."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers.session import Timing
from testbed.admission import settings as admission_settings
from testbed.coturn import require_turnserver
from testbed.lab import new_lab_name, require_root
from testbed.matrix import records
from testbed.matrix.batch import BatchSettings
from testbed.matrix.dimensions import kind
from testbed.matrix.document import (
    Predictor,
    build_document,
    cell_head,
    configuration,
    dimension_infos,
    environment,
    iso,
    mechanisms,
    phase_summary,
)
from testbed.matrix.lab import Layout, PackedLayout, TopologyLayout
from testbed.matrix.pool import Pool, workers_needed
from testbed.matrix.progress import Progress
from testbed.matrix.runner import LabJob
from testbed.matrix.spec import (
    DEFAULT_DEADLINE,
    MatrixSpec,
    Selector,
    Shard,
    SlotIndex,
    n_labs,
    spec_hash,
    spec_to_json,
)
from testbed.matrix.workers import Workers
from testbed.nat import NatSpec, default_nats
from testbed.report import Streamed
from testbed.results import MatrixResult, PairResult


def layout_of(spec: MatrixSpec) -> Layout:
    if spec.topology is None:
        return PackedLayout()
    return TopologyLayout(spec.topology, dict(spec.nodes))


@dataclass(frozen=True)
class Plan:
    """A run's (or a shard's) slots dealt to labs; the labs are made as they start."""

    spec: MatrixSpec
    layout: Layout
    shard: Shard
    slots: int  # in this shard
    slots_total: int
    labs: int
    positions: Sequence[int] = field(repr=False)
    index: SlotIndex = field(repr=False)

    def jobs(self) -> Iterator[LabJob]:
        """Lab j gets the shard's slots j, j + labs, j + 2 labs, ... (every lab a mix)."""
        names: set[str] = set()
        for j in range(self.labs):
            name = new_lab_name()
            while name in names:
                name = new_lab_name()
            names.add(name)
            slots = tuple(self.index[self.positions[i]] for i in range(j, self.slots, self.labs))
            yield LabJob(j, name, slots, tuple(self.spec.setup(s) for s in slots))


def plan_run(spec: MatrixSpec, jobs: int, shard: Shard | None = None) -> Plan:
    layout = layout_of(spec)
    index = SlotIndex(spec)
    shard = shard or Shard()
    positions = shard.positions(len(index))
    return Plan(spec, layout, shard, len(positions), len(index),
                n_labs(len(positions), jobs, layout.max_slots), positions, index)


class EarlyOutcomes:
    """Per cell, the outcomes decided so far (from the workers' per-slot messages)."""

    def __init__(self, spec: MatrixSpec) -> None:
        self.points = list(spec.points())
        self.cell_of = {",".join(f"{n}={v.label}" for n, v in p): i
                        for i, p in enumerate(self.points)}
        self.counts: list[dict[str, int]] = [{} for _ in self.points]
        self.decided = 0

    def add(self, job: LabJob, k: int, outcome: str) -> None:
        slot = job.slots[k]
        c = self.counts[self.cell_of[",".join(f"{n}={v.label}" for n, v in slot.point)]]
        c[outcome] = c.get(outcome, 0) + 1
        self.decided += 1

    def document(self, spec: MatrixSpec) -> Streamed:
        model = Predictor(spec)
        heads = [cell_head(p, model(p)) for p in self.points]
        return Streamed({}, tuple(n.label for n in spec.nats), heads, self.counts,
                        lambda i: iter(()), dimension_infos(spec))


@contextlib.contextmanager
def _in_background(work: Callable[[], None] | None) -> Iterator[None]:
    """`work` in a thread while the pool runs the labs (they build elsewhere)."""
    if work is None:
        yield
        return
    t = threading.Thread(target=work, name="matrix-background", daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join()


@dataclass(frozen=True)
class Ran:
    started: float
    finished: float
    wall_s: float
    labs: list[dict[str, Any]]


@dataclass
class MatrixRun:
    """One run of a spec (or of one shard of it); `progress`, `background` and
    `on_outcomes` are for the command line (a progress bar, loading plotting code while
    the first labs build, drawing the heatmap from the outcomes before coturn's counters
    are in). `admission`: slots start as testbed.admission admits them. With `dask` (a
    scheduler's address) the labs run on that pool's workers (testbed.matrix.pool);
    `jobs` is then at least how many labs the slots are dealt into (default: the pool's
    threads)."""

    spec: MatrixSpec
    jobs: int | None
    progress: Progress | None = None
    background: Callable[[], None] | None = None
    on_outcomes: Callable[[Streamed], None] | None = None
    shard: Shard = field(default_factory=Shard)
    dask: str | None = None
    contract_jobs: int | None = None  # contract cells (peer programs) at once; None: CPUs
    admission: bool = True

    def plan(self, pool: Pool | None = None) -> Plan:
        return plan_run(self.spec, workers_needed(pool, self.jobs), self.shard)

    def pool(self) -> contextlib.AbstractContextManager[Pool | None]:
        """The Dask pool the run uses, connected and checked; None for a local run."""
        if self.dask is None:
            return contextlib.nullcontext()
        return Pool(self.dask, self.spec.topology, self.progress)

    def execute(self, plan: Plan, on_results: Callable[[LabJob, list[PairResult]], None],
                on_decided: Callable[[LabJob, int, PairResult], None] | None = None,
                pool: Pool | None = None) -> Ran:
        """Run the plan's labs, here or on `pool`'s workers; `on_results` gets each
        lab's results as it reports, `on_decided` each slot's as it decides (without
        coturn's counters)."""
        if pool is None:
            require_root()
            require_turnserver()
        if self.progress is not None:
            self.progress.start(plan.slots, plan.labs)
        early = EarlyOutcomes(self.spec) if self.on_outcomes is not None else None

        def on_slot(job: LabJob, k: int, outcome: str, result: PairResult) -> None:
            if on_decided is not None:
                on_decided(job, k, result)
            if early is None or self.on_outcomes is None:
                return
            early.add(job, k, outcome)
            if early.decided == plan.slots:  # while the workers wait for coturn's counters
                self.on_outcomes(early.document(self.spec))

        t_start, t0 = time.time(), time.monotonic()
        if pool is not None:
            pool.on_slot, pool.on_results = on_slot, on_results
            with _in_background(self.background):
                pool.run(plan.jobs(), plan.layout,
                         BatchSettings(self.admission, self.contract_jobs))
            return Ran(t_start, time.time(), time.monotonic() - t0, pool.labs)
        workers = Workers(plan.layout, workers_needed(None, self.jobs), self.progress,
                          self.background, on_slot, on_results,
                          contract_jobs=self.contract_jobs, admission=self.admission)
        workers.run(plan.jobs())
        return Ran(t_start, time.time(), time.monotonic() - t0, workers.labs)

    def configuration(self, plan: Plan, pool: Pool | None) -> dict[str, Any]:
        admission = admission_settings() if self.admission else None
        if admission is not None and pool is not None:
            admission["scope"] = "lab"  # a pool's batch processes share no places
        conf = configuration(self.spec, plan.layout, workers_needed(pool, self.jobs),
                             plan.labs, admission)
        if pool is not None:
            conf["pool"] = pool.describe()
        return conf

    def metadata(self, plan: Plan, ran: Ran, env: Mapping[str, Any],
                 pool: Pool | None = None) -> dict[str, Any]:
        meta = dict(env)
        meta.update(started=iso(ran.started), finished=iso(ran.finished),
                    configuration=self.configuration(plan, pool),
                    conditions_mechanism=mechanisms(ran.labs),
                    timings_s={"run": round(ran.wall_s, 3),
                               "phases_max_over_labs": phase_summary(ran.labs),
                               "labs": ran.labs})
        return meta

    def run(self) -> MatrixResult:
        """The whole result in memory (the Python API)."""
        with self.pool() as pool:
            plan = self.plan(pool)
            results: list[PairResult] = []
            ran = self.execute(plan, lambda job, rs: results.extend(rs), pool=pool)
            env = pool.environment() if pool is not None else environment()
            return build_document(self.spec, results, self.metadata(plan, ran, env, pool))

    def run_to(self, out: Path) -> records.Manifest:
        """Stream every slot's record to out/records.jsonl as its lab reports, with
        out/manifest.json; an interrupted run leaves what it decided, marked incomplete:
        the labs that reported, and the slots a lab cut short had decided (their coturn
        counters never read: relay bytes unknown)."""
        with self.pool() as pool:
            return self._run_to(out, pool)

    def _run_to(self, out: Path, pool: Pool | None) -> records.Manifest:
        plan = self.plan(pool)
        out.mkdir(parents=True, exist_ok=True)
        spec_json = spec_to_json(self.spec)
        env = pool.environment() if pool is not None else \
            records.host_environment(environment())
        manifest = records.Manifest(
            environment=env, spec=spec_json,
            spec_hash=spec_hash(spec_json), shard=plan.shard, slots=plan.slots,
            slots_total=plan.slots_total, started=iso(time.time()),
            configuration=self.configuration(plan, pool))
        records.write_manifest(out, manifest)
        writer = records.RecordWriter(out / records.RECORDS)
        labs: list[dict[str, Any]] = []
        t0 = time.monotonic()
        cut_short: dict[int, dict[int, PairResult]] = {}  # running labs' decided slots

        def lab_reported(job: LabJob, results: list[PairResult]) -> None:
            writer.write(results)
            cut_short.pop(job.index, None)

        def slot_decided(job: LabJob, k: int, result: PairResult) -> None:
            cut_short.setdefault(job.index, {})[k] = result

        try:
            ran = self.execute(plan, lab_reported, slot_decided, pool)
            labs = ran.labs
        except KeyboardInterrupt:
            writer.write([r for j in sorted(cut_short) for _, r in sorted(cut_short[j].items())])
            raise
        finally:
            writer.close()
            manifest = manifest.finished_with(
                records=writer.count, complete=writer.count == plan.slots,
                finished=iso(time.time()), wall_s=round(time.monotonic() - t0, 3),
                labs=tuple(labs))
            records.write_manifest(out, manifest)
        return manifest


def run_matrix(nats: Sequence[NatSpec] | None = None, *, repeats: int = 1,
               jobs: int | None = None, only: Iterable[tuple[NatSpec, NatSpec]] | None = None,
               topology: str | Path | None = None, a_node: str = "alice",
               b_node: str = "bob", timing: Timing | None = None,
               progress: Progress | None = None,
               dimensions: Mapping[str, Iterable[Any]] | None = None,
               cross_family: bool = False, deadline: float | None = None,
               peer_jobs: int | None = None) -> MatrixResult:
    """Every ordered pairing of `nats` (default: none and the four classic types), each
    `repeats` times in fresh namespaces, or only the `only` (Alice's, Bob's) cells; in
    the packed matrix lab, or one lab of `topology` per pairing with Alice and Bob in
    `a_node` and `b_node`. `dimensions` adds other dimensions by name, each a list of
    values or labels ({"punch": ["0.2s", "1s"]}, {"peer_a": ["own", "aioice"], "peer_b":
    [...]}). Cells that cannot work (two peer programs with no common protocol) are
    skipped unless `cross_family`; contract programs have `deadline` seconds to connect
    (default 10), `peer_jobs` cells of them run at once (default: CPUs). The result
    carries the model's prediction for every cell."""
    spec = matrix_spec(nats, repeats=repeats, only=only, topology=topology, a_node=a_node,
                       b_node=b_node, timing=timing, dimensions=dimensions,
                       cross_family=cross_family, deadline=deadline)
    return MatrixRun(spec, jobs or os.cpu_count() or 1, progress,
                     contract_jobs=peer_jobs).run()


def matrix_spec(nats: Sequence[NatSpec] | None = None, *, repeats: int = 1,
                only: Iterable[tuple[NatSpec, NatSpec]] | None = None,
                topology: str | Path | None = None, a_node: str = "alice",
                b_node: str = "bob", timing: Timing | None = None,
                dimensions: Mapping[str, Iterable[Any]] | None = None,
                cross_family: bool = False, deadline: float | None = None) -> MatrixSpec:
    """run_matrix's arguments as a run spec (ValueError naming what is wrong)."""
    cells = tuple(only) if only is not None else None
    if cells is not None:
        nats = list(dict.fromkeys(n for cell in cells for n in cell))
    extra = tuple(
        kind(name).with_values(v if hasattr(v, "label") else kind(name).parse(str(v))
                               for v in values)
        for name, values in (dimensions or {}).items())
    return MatrixSpec(tuple(nats or default_nats()), repeats,
                      None if cells is None else tuple(Selector.cell(a, b) for a, b in cells),
                      timing or Timing(), Path(topology) if topology is not None else None,
                      (("alice", a_node), ("bob", b_node)), extra, cross_family,
                      DEFAULT_DEADLINE if deadline is None else deadline)
