"""The matrix's results document: a cell per pairing that ran, with the model's prediction,
every repeat in order, and the metadata that makes a run reproducible (versions of
everything that decides an outcome, the configuration, timings)."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testbed.matrix.lab import Layout
from testbed.matrix.spec import MatrixSpec
from testbed.model import PortReuse, Strategy, predict_strategy
from testbed.nat import NatSpec
from testbed.results import Cell, MatrixResult, PairResult, spec_to_json
from testbed.strategy import DEFAULT as DEFAULT_STRATEGY
from testbed.strategy import Strategy as PeerStrategy
from testbed.version import VERSION


def make_cell(a: NatSpec, b: NatSpec, repeats: Iterable[PairResult],
              strategy: PeerStrategy = DEFAULT_STRATEGY) -> Cell:
    """One cell: the model's prediction for (a, b) with `strategy` and its repeats in
    order."""
    p = predict_strategy(a, b, strategy)
    ordered = sorted(repeats, key=lambda r: r.repeat or 0)
    name = None if strategy == DEFAULT_STRATEGY else strategy.label
    return Cell(a.label, b.label, a, b, p.outcome, p.reason, tuple(ordered), name,
                p.probability)


def build_document(spec: MatrixSpec, results: Iterable[PairResult],
                   meta: dict[str, Any],
                   strategy: PeerStrategy = DEFAULT_STRATEGY) -> MatrixResult:
    """Every cell of the spec with `strategy`, in row-major order; a cell with no result
    is 'not run'. Until the results document has N dimensions, a run with a strategy
    dimension makes one document per strategy (documents)."""
    name = None if strategy == DEFAULT_STRATEGY else strategy.label
    by_cell: dict[tuple[str | None, str | None], list[PairResult]] = {}
    for r in results:
        if r.strategy == name:
            by_cell.setdefault((r.a, r.b), []).append(r)
    cells = []
    seen: set[tuple[str, str]] = set()
    for point in spec.points():
        a, b = point[0][1], point[1][1]
        if (a.label, b.label) in seen:
            continue
        seen.add((a.label, b.label))
        cells.append(make_cell(a, b, by_cell.get((a.label, b.label), []), strategy))
    meta = dict(meta, strategy=name) if name is not None else meta
    return MatrixResult(meta, tuple(n.label for n in spec.nats), tuple(cells))


def documents(spec: MatrixSpec, results: Iterable[PairResult],
              meta: dict[str, Any]) -> dict[str, MatrixResult]:
    """One results document per strategy of the spec, by strategy label."""
    rs = list(results)
    return {s.label: build_document(spec, rs, meta, s) for s in spec.strategies}


def _version(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def _git_commit() -> str | None:
    """The checkout's commit, for results from an unreleased tree (None when installed)."""
    repo = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions of everything that decides the outcome: kernel, nftables, coturn, us."""
    nft = _version(["nft", "--version"]) or ""
    return {
        "tool_version": VERSION,
        "tool_commit": _git_commit(),
        "kernel": platform.release(),
        "nftables": nft.split()[1].lstrip("v") if len(nft.split()) > 1 else nft or None,
        "coturn": _version(["turnserver", "--version"]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def command_line(spec: MatrixSpec, jobs: int) -> str:
    """The command that runs this spec again."""
    parts = ["nat-testbed matrix"]
    if spec.cells is None:
        parts.append(f"--nats {','.join(n.label for n in spec.nats)}")
    else:
        parts += [f"--only {a.label},{b.label}" for a, b in spec.cells]
    parts.append(f"--repeat {spec.repeats} --jobs {jobs}")
    if spec.varies_strategy:
        parts.append(f"--strategies {','.join(s.label for s in spec.strategies)}")
    if spec.topology is not None:
        parts.append(f"--topology {spec.topology}")
        parts += [f"--{role[0]}-node {node}" for role, node in spec.nodes]
    return " ".join(parts)


def configuration(spec: MatrixSpec, layout: Layout, jobs: int, n_labs: int) -> dict[str, Any]:
    return {
        "command": command_line(spec, jobs),
        "nats": [spec_to_json(n) for n in spec.nats],
        "cells": None if spec.cells is None else [[a.label, b.label] for a, b in spec.cells],
        "repeat": spec.repeats,
        "jobs": jobs,
        "labs": n_labs,
        "max_pairings_per_lab": layout.max_slots,
        "timing": dataclasses.asdict(spec.timing),
        "model": {"strategy": dataclasses.asdict(Strategy()),
                  "port_reuse": PortReuse.EXCLUSIVE.value},
        "topology": layout.describe(),
    }


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00",
                                                                                      "Z")


def phase_summary(labs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("build", "punch", "relay", "teardown")
    return {k: round(max((info.get(k, 0.0) for info in labs), default=0.0), 3) for k in keys}
