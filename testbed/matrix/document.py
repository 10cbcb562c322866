"""The matrix's results document: a cell per pairing that ran, with the model's prediction,
every repeat in order, and the metadata that makes a run reproducible (versions of
everything that decides an outcome, the configuration, timings)."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testbed.matrix.dimensions import NotModelled, SlotSetup
from testbed.matrix.lab import Layout
from testbed.matrix.spec import MatrixSpec, Point
from testbed.model import PortReuse, Strategy, predict, predict_strategy
from testbed.results import Cell, DimensionInfo, MatrixResult, PairResult, spec_to_json
from testbed.strategy import DEFAULT as DEFAULT_STRATEGY
from testbed.version import VERSION

# (direct | relay | None: not modelled, reason, P(direct) for a strategy of chance)
Prediction = tuple[str | None, str, float | None]


class Predictor:
    """The reference model's prediction per point of a spec: its NATs, changed by what the
    other dimensions declare (testbed.matrix.dimensions), or 'not modelled' with why.
    Equal model inputs are asked once."""

    def __init__(self, spec: MatrixSpec) -> None:
        self.spec = spec
        self._seen: dict[object, Prediction] = {}

    def __call__(self, point: Point) -> Prediction:
        inp = self.spec.model_input(point)
        if isinstance(inp, NotModelled):
            return None, inp.reason, None
        if inp not in self._seen:
            if inp.peer_strategy != DEFAULT_STRATEGY:
                p = predict_strategy(inp.nat_a, inp.nat_b, inp.peer_strategy)
            else:
                p = predict(inp.nat_a, inp.nat_b, inp.strategy, reuse=inp.port_reuse,
                            transport=inp.transport)
            self._seen[inp] = (p.outcome, p.reason, p.probability)
        return self._seen[inp]


def cell_head(point: Point, prediction: Prediction) -> Cell:
    """A cell without its repeats: its point and the model's prediction."""
    by_name = dict(point)
    a, b = by_name["a"], by_name["b"]
    extra = {n: v.label for n, v in point if n not in ("a", "b")}
    return Cell(a.label, b.label, a, b, prediction[0], prediction[1], (), extra,
                prediction[2])


def make_cell(head: Cell, repeats: Iterable[PairResult]) -> Cell:
    """The cell with its repeats in order."""
    ordered = sorted(repeats, key=lambda r: r.repeat or 0)
    return dataclasses.replace(head, repeats=tuple(ordered))


def dimension_infos(spec: MatrixSpec) -> tuple[DimensionInfo, ...]:
    return tuple(DimensionInfo(d.name, d.title, d.labels) for d in spec.facet_dimensions())


def build_document(spec: MatrixSpec, results: Iterable[PairResult],
                   meta: dict[str, Any]) -> MatrixResult:
    """Every cell of the spec, facet by facet and row-major; a cell without results is
    'not run'."""
    by_cell: dict[str, list[PairResult]] = {}
    for r in results:
        key = ",".join(f"{n}={v}" for n, v in (("a", r.a), ("b", r.b), *r.point.items()))
        by_cell.setdefault(key, []).append(r)
    model = Predictor(spec)
    cells = []
    for point in spec.points():
        head = cell_head(point, model(point))
        cells.append(make_cell(head, by_cell.get(head.key, [])))
    return MatrixResult(meta, tuple(n.label for n in spec.nats), tuple(cells),
                        dimension_infos(spec))


def _version(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when run from a checkout
SOURCES = ("testbed", "peers", "nft-templates", "topologies")  # what a new file changes
MAX_CHANGES = 50  # changed paths listed in the metadata


def _git(repo: Path, *argv: str) -> str | None:
    """git's output in `repo`, or None: not a checkout, no git, or git failed."""
    if shutil.which("git") is None or not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_commit(repo: Path = CHECKOUT) -> str | None:
    """The checkout's commit, for results from an unreleased tree (None when installed)."""
    out = _git(repo, "rev-parse", "HEAD")
    return (out.strip() or None) if out is not None else None


def git_changes(repo: Path = CHECKOUT) -> list[str] | None:
    """What differs from the commit: tracked files changed (staged or not, as `git
    describe --dirty` counts them) and new files in the sources, as `git status --short`
    lines. [] for a clean tree; None when there is no checkout to ask."""
    tracked = _git(repo, "status", "--porcelain", "--untracked-files=no")
    new = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", *SOURCES)
    if tracked is None or new is None:
        return None
    lines = tracked.splitlines() + [x for x in new.splitlines() if x.startswith("??")]
    return sorted(set(lines), key=lambda line: line[3:])  # by path


def environment() -> dict[str, Any]:
    """Versions of everything that decides the outcome: kernel, nftables, coturn, us."""
    nft = _version(["nft", "--version"]) or ""
    changes = git_changes()
    return {
        "tool_version": VERSION,
        "tool_commit": _git_commit(),
        "tool_dirty": None if changes is None else bool(changes),
        "tool_changes": None if changes is None else changes[:MAX_CHANGES],
        "kernel": platform.release(),
        "nftables": nft.split()[1].lstrip("v") if len(nft.split()) > 1 else nft or None,
        "coturn": _version(["turnserver", "--version"]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def legacy_cells(spec: MatrixSpec) -> list[list[str]] | None:
    """--only as (Alice's NAT, Bob's NAT) pairs, when every selector is exactly one."""
    if spec.only is None or any(s.repeat is not None or [n for n, _ in s.point] != ["a", "b"]
                                for s in spec.only):
        return None
    return [[label for _, label in s.point] for s in spec.only]


def _nats_implied(spec: MatrixSpec) -> bool:
    """Whether --only alone names the run's NATs (then --nats is left out)."""
    cells = legacy_cells(spec)
    named = list(dict.fromkeys(label for c in cells or [] for label in c))
    return cells is not None and named == [n.label for n in spec.nats]


def command_line(spec: MatrixSpec, jobs: int) -> str:
    """The command that runs this spec again."""
    parts = ["nat-testbed matrix"]
    if not _nats_implied(spec):
        parts.append(f"--nats {','.join(n.label for n in spec.nats)}")
    cells = legacy_cells(spec)
    if cells is not None:
        parts += [f"--only {a},{b}" for a, b in cells]
    elif spec.only is not None:
        parts += [f"--only {s.key}" for s in spec.only]
    for d in spec.facet_dimensions():
        parts.append(f"{d.flag} {','.join(d.labels)}")
    if spec.run_skipped:
        parts.append("--cross-family")
    if spec.deadline != SlotSetup().deadline:
        parts.append(f"--deadline {spec.deadline:g}")
    parts.append(f"--repeat {spec.repeats} --jobs {jobs}")
    if spec.topology is not None:
        parts.append(f"--topology {spec.topology}")
        parts += [f"--{role[0]}-node {node}" for role, node in spec.nodes]
    return " ".join(parts)


def configuration(spec: MatrixSpec, layout: Layout, jobs: int, n_labs: int,
                  admission: dict[str, Any] | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "command": command_line(spec, jobs) + ("" if admission else " --no-admission"),
        "admission": admission,
        "nats": [spec_to_json(n) for n in spec.nats],
        "cells": legacy_cells(spec),
        "repeat": spec.repeats,
        "jobs": jobs,
        "labs": n_labs,
        "max_pairings_per_lab": layout.max_slots,
        "timing": dataclasses.asdict(spec.timing),
        "model": {"strategy": dataclasses.asdict(Strategy()),
                  "port_reuse": PortReuse.EXCLUSIVE.value},
        "topology": layout.describe(),
    }
    if spec.only is not None and conf["cells"] is None:
        conf["only"] = [s.key for s in spec.only]
    return conf


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00",
                                                                                      "Z")


def mechanisms(labs: Sequence[Mapping[str, Any]]) -> dict[str, list[str]] | None:
    """Which impairment mechanism the labs used for link conditions, with its parts
    (testbed.impair: netem or the forwarder; tbf, nft drops), or None: perfect links."""
    out: dict[str, set[str]] = {}
    for info in labs:
        for mech, parts in (info.get("conditions_mechanism") or {}).items():
            out.setdefault(mech, set()).update(parts)
    return {m: sorted(p) for m, p in out.items()} or None


def phase_summary(labs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("build", "punch", "relay", "teardown")
    return {k: round(max((info.get(k, 0.0) for info in labs), default=0.0), 3) for k in keys}
