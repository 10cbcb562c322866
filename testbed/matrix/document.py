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

from testbed.conditions import spec_text
from testbed.matrix.lab import Layout
from testbed.matrix.spec import MatrixSpec
from testbed.model import PortReuse, Strategy, predict
from testbed.nat import NatSpec
from testbed.results import Cell, MatrixResult, PairResult, spec_to_json
from testbed.version import VERSION


def make_cell(a: NatSpec, b: NatSpec, repeats: Iterable[PairResult]) -> Cell:
    """One cell: the model's prediction for (a, b) and its repeats in order."""
    p = predict(a, b)
    ordered = sorted(repeats, key=lambda r: r.repeat or 0)
    return Cell(a.label, b.label, a, b, p.outcome, p.reason, tuple(ordered))


def build_document(spec: MatrixSpec, results: Iterable[PairResult],
                   meta: dict[str, Any]) -> MatrixResult:
    """Every cell of the spec, in row-major order; a cell with no result is 'not run'."""
    by_cell: dict[tuple[str | None, str | None], list[PairResult]] = {}
    for r in results:
        by_cell.setdefault((r.a, r.b), []).append(r)
    cells = []
    for point in spec.points():
        a, b = (v for _, v in point)
        cells.append(make_cell(a, b, by_cell.get((a.label, b.label), [])))
    return MatrixResult(meta, tuple(n.label for n in spec.nats), tuple(cells))


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
    if spec.conditions is not None:
        parts.append(f"--conditions {spec_text(spec.conditions)}")
    if spec.topology is not None:
        parts.append(f"--topology {spec.topology}")
        parts += [f"--{role[0]}-node {node}" for role, node in spec.nodes]
    return " ".join(parts)


def configuration(spec: MatrixSpec, layout: Layout, jobs: int, n_labs: int,
                  admission: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "admission": admission,
        "conditions": None if spec.conditions is None else {
            "where": "every slot's access links (each router's WAN link), each direction",
            "conditions": spec.conditions.to_dict(), "text": str(spec.conditions)},
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
