"""Putting a run's parts together: manifests checked, records indexed, one document.

A part is the --out directory of a matrix run (testbed.matrix.records): a whole run is
a merge of its one part, a sharded run of its N. collect() refuses parts that do not
belong together (another run spec, seed, shard count, tool or commit; another kernel,
nftables or coturn unless allowed), reads every record once to check it and to note
where it is, and keeps per cell only its outcome counts and its records' places
(8 bytes a slot). The document it gives renders like any other (testbed.report), the
repeats read back one cell at a time.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers.result import OUTCOMES
from testbed.matrix import records
from testbed.matrix.document import (
    Predictor,
    cell_head,
    dimension_infos,
    mechanisms,
    phase_summary,
)
from testbed.matrix.records import Manifest, PartError
from testbed.matrix.spec import MatrixSpec, Shard, SlotIndex, spec_from_json
from testbed.report import Streamed
from testbed.results import PairResult

EXAMPLES = 3  # slot keys quoted per problem
_FILE_BITS = 40  # a record's place: file number << 40 | byte offset


@dataclass
class Problems:
    """What is not as it should be in a set of parts, for the user to read."""

    missing: dict[int, list[int]] = field(default_factory=dict)  # shard -> [count, total]
    missing_keys: list[str] = field(default_factory=list)
    duplicated: int = 0
    duplicated_keys: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)  # parts whose last record was cut short
    unfinished: list[str] = field(default_factory=list)  # parts whose run did not finish

    @property
    def n_missing(self) -> int:
        return sum(c for c, _ in self.missing.values())

    def lines(self, count: int) -> list[str]:
        out = []
        for part in self.unfinished:
            out.append(f"{part}: its run did not finish (the manifest says incomplete)")
        for part in self.cut:
            out.append(f"{part}: the last record was cut short (a killed run): left out")
        if self.missing:
            shards = "; ".join(
                f"shard {k}/{count}: {'absent' if c == t else f'{c} of {t}'}"
                for k, (c, t) in sorted(self.missing.items()))
            out.append(f"missing: {self.n_missing} slots ({shards}); e.g. "
                       + ", ".join(self.missing_keys))
        if self.duplicated:
            out.append(f"duplicated: {self.duplicated} slots recorded twice, the first record "
                       "of each kept; e.g. " + ", ".join(self.duplicated_keys))
        return out


def _mismatch(first: Manifest, m: Manifest,
              allow_mixed_env: bool) -> tuple[str, Any, Any, str] | None:
    """(what, this part's, the first part's, a hint) for the first thing that differs."""
    if m.spec_hash != first.spec_hash:
        return ("run spec", m.spec_hash, first.spec_hash,
                " (parts of different runs: merge each run on its own)")
    if m.shard.seed != first.shard.seed:
        return "seed", m.shard.seed, first.shard.seed, ""
    if m.shard.count != first.shard.count:
        return "shard count", m.shard.count, first.shard.count, ""
    for key in records.SAME_TOOL:
        if m.environment.get(key) != first.environment.get(key):
            return (key, m.environment.get(key), first.environment.get(key),
                    " (every part must come from the same tool and commit)")
    for key in records.SAME_HOST:
        if not allow_mixed_env and m.environment.get(key) != first.environment.get(key):
            return (key, m.environment.get(key), first.environment.get(key),
                    " (--allow-mixed-env merges parts from different kernels and daemons)")
    return None


def check_compatible(parts: Sequence[tuple[Path, Manifest]], allow_mixed_env: bool) -> None:
    """One-line errors naming the part that does not belong with the first one."""
    first_path, first = parts[0]
    for path, m in parts[1:]:
        bad = _mismatch(first, m, allow_mixed_env)
        if bad is not None:
            what, mine, theirs, hint = bad
            raise PartError(f"{path}/: {what} {mine!r} differs from {first_path}/'s "
                            f"{theirs!r}{hint}")


class Collected:
    """A set of parts, checked and indexed: the document and the problems."""

    def __init__(self, parts: Sequence[tuple[Path, Manifest]]) -> None:
        self.parts = list(parts)
        first = self.parts[0][1]
        try:
            self.spec: MatrixSpec = spec_from_json(first.spec)
        except ValueError as exc:
            raise PartError(f"{self.parts[0][0]}/{records.MANIFEST}: {exc}") from None
        self.count = first.shard.count
        self.seed = first.shard.seed
        self.index = SlotIndex(self.spec)
        self.dims = [d.name for d in self.spec.facet_dimensions()]
        self.cell_of = {",".join(f"{n}={v.label}" for n, v in p): i
                        for i, p in enumerate(self.index.points)}
        n_cells, repeats = len(self.index.points), self.spec.repeats
        self.where = array("q", [-1]) * (n_cells * repeats)
        self.counts = array("l", [0]) * (n_cells * len(OUTCOMES))
        self.problems = Problems()

    def read(self) -> Collected:
        for file_no, (path, manifest) in enumerate(self.parts):
            recs = path / records.RECORDS
            if not recs.exists():
                raise PartError(f"{path}/: no {records.RECORDS}")
            if not manifest.complete:
                self.problems.unfinished.append(f"{path}/")
            if records.truncated_tail(recs):
                self.problems.cut.append(f"{path}/")
            for line in records.read_records(recs, self.dims):
                self._add(line, file_no, recs, manifest.shard)
        self._find_missing()
        return self

    def _add(self, line: records.Line, file_no: int, path: Path, shard: Shard) -> None:
        pair = line.pair
        cell_key = ",".join(f"{n}={v}" for n, v in (("a", pair.a), ("b", pair.b),
                                                      *pair.point.items()))
        cell = self.cell_of.get(cell_key)
        number = None if cell is None else self.index.number(cell, pair.repeat or 0)
        if cell is None or number is None or f"{cell_key},repeat={pair.repeat}" != pair.key:
            raise PartError(f"{path}: line {line.number}: slot {pair.key} is not in the run "
                            "spec of its manifest")
        n = len(self.index)
        if shard.count > 1 and Shard(1, shard.count, shard.seed).part(number, n) != shard.index:
            raise PartError(f"{path}: line {line.number}: slot {pair.key} belongs to shard "
                            f"{Shard(1, shard.count, shard.seed).part(number, n)}/{shard.count}"
                            f", not to this part's {shard.label}")
        place = cell * self.spec.repeats + (pair.repeat or 1) - 1
        if self.where[place] >= 0:
            self.problems.duplicated += 1
            if len(self.problems.duplicated_keys) < EXAMPLES:
                self.problems.duplicated_keys.append(pair.key)
            return
        self.where[place] = (file_no << _FILE_BITS) | line.offset
        self.counts[cell * len(OUTCOMES) + OUTCOMES.index(pair.outcome)] += 1

    def _find_missing(self) -> None:
        n = len(self.index)
        owner = Shard(1, self.count, self.seed)
        totals: dict[int, int] = {}
        for i in range(n):
            cell, repeat = self.index.locate(i)
            k = owner.part(i, n)
            totals[k] = totals.get(k, 0) + 1
            if self.where[cell * self.spec.repeats + repeat - 1] < 0:
                self.problems.missing.setdefault(k, [0, 0])[0] += 1
                if len(self.problems.missing_keys) < EXAMPLES:
                    self.problems.missing_keys.append(self.index[i].key)
        for k, entry in self.problems.missing.items():
            entry[1] = totals[k]

    # ------------------------------------------------------------------ the document

    def document(self) -> Streamed:
        model = Predictor(self.spec)
        heads = [cell_head(p, model(p)) for p in self.index.points]
        reader = records.RecordReader([p / records.RECORDS for p, _ in self.parts], self.dims)
        repeats = self.spec.repeats

        def places(i: int) -> Iterator[tuple[int, int]]:
            for r in range(repeats):
                place = self.where[i * repeats + r]
                if place >= 0:
                    yield place >> _FILE_BITS, place & ((1 << _FILE_BITS) - 1)

        def cell_repeats(i: int) -> Iterator[PairResult]:
            return (reader.read(f, offset) for f, offset in places(i))

        def cell_raw(i: int) -> Iterator[dict[str, Any]]:
            return (reader.read_json(f, offset) for f, offset in places(i))

        return Streamed(self.metadata(), tuple(n.label for n in self.spec.nats), heads,
                        _Counts(self.counts, len(heads)), cell_repeats,
                        dimension_infos(self.spec), cell_raw)

    def metadata(self) -> dict[str, Any]:
        manifests = [m for _, m in self.parts]
        first = manifests[0]
        meta: dict[str, Any] = {k: v for k, v in first.environment.items() if k != "host"}
        labs = [dict(lab) for m in manifests for lab in m.labs]
        conf = dict(first.configuration)
        if conf:
            conf["labs"] = sum(int(m.configuration.get("labs", 0)) for m in manifests)
        meta.update(
            started=min(m.started for m in manifests),
            finished=max((m.finished or m.started) for m in manifests),
            # false: a run was interrupted (report.incomplete says so on every output)
            complete=all(m.complete for m in manifests),
            pairings={"planned": first.slots_total, "decided": sum(m.records for m in manifests)},
            configuration=conf,
            conditions_mechanism=mechanisms(labs),
            timings_s={"run": max((m.wall_s or 0.0) for m in manifests),
                       "phases_max_over_labs": phase_summary(labs), "labs": labs})
        if len(manifests) > 1 or first.shard.count > 1:
            meta["shards"] = [
                {"index": m.shard.index, "count": m.shard.count, "seed": m.shard.seed,
                 "part": str(path), "host": m.environment.get("host"),
                 "started": m.started, "finished": m.finished, "wall_s": m.wall_s,
                 "slots": m.slots, "records": m.records, "complete": m.complete}
                for path, m in self.parts]
        return meta


class _Counts(Sequence[Mapping[str, int]]):
    """Per cell, {outcome: repeats}, read from the flat counts array."""

    def __init__(self, flat: array[int], n: int) -> None:
        self.flat, self.n = flat, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        k = len(OUTCOMES)
        return {o: c for o, c in zip(OUTCOMES, self.flat[i * k:(i + 1) * k], strict=True) if c}


def collect(parts: Sequence[Path], *, allow_mixed_env: bool = False) -> Collected:
    """Read, check and index the parts (PartError or ResultsError: one line naming it)."""
    if not parts:
        raise PartError("no parts given")
    seen: dict[Path, Path] = {}
    manifests = []
    for part in parts:
        real = part.resolve()
        if real in seen:
            raise PartError(f"{part}/: given twice (also as {seen[real]})")
        seen[real] = part
        manifests.append((Path(str(part).rstrip("/") or "/"), records.read_manifest(part)))
    check_compatible(manifests, allow_mixed_env)
    return Collected(manifests).read()
