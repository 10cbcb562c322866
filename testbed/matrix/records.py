"""A run's records on disk: one JSON line per slot, and the manifest that says what ran.

Every `matrix` run with an output directory (a whole run, or one shard of it) streams
there, as its labs report:

    records.jsonl   one PAIR object (docs/results.md) per slot, on one line, with its
                    `key` and the other dimensions' fields; appended a lab at a time
                    and flushed, so a killed run keeps every slot its labs reported
    manifest.json   written when the run starts (complete: false) and replaced when it
                    ends: the tool, its commit and dirty flag, kernel, nftables and
                    coturn versions, the run spec and its hash, seed, shard, slot
                    counts, wall time, the labs' phases

Another producer (a Dask pool, say) writes the same two files. `merge` reads any
number of such directories (testbed.matrix.merge).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from peers import record as rec
from testbed.matrix.spec import Shard
from testbed.results import PairResult, ResultsError, pair_from_json, pair_to_json

RECORDS = "records.jsonl"
MANIFEST = "manifest.json"
FORMAT = "nat-testbed-matrix-part/1"
# What must be equal in every part of one result: the outcome depends on each.
SAME_TOOL = ("tool_version", "tool_commit", "tool_dirty", "tool_changes")
SAME_HOST = ("kernel", "nftables", "coturn")
ENVIRONMENT = (*SAME_TOOL, *SAME_HOST, "python", "cpus", "host")


class PartError(ValueError):
    """A part directory that cannot be read or does not belong; the message names it."""


@dataclass(frozen=True)
class Manifest:
    environment: Mapping[str, Any]  # ENVIRONMENT's fields
    spec: Mapping[str, Any]  # testbed.matrix.spec.spec_to_json
    spec_hash: str
    shard: Shard
    slots: int  # in this shard
    slots_total: int  # in the whole run
    started: str
    configuration: Mapping[str, Any] = field(default_factory=dict)  # results' configuration
    records: int = 0  # lines written to records.jsonl
    complete: bool = False  # every slot of the shard reported
    finished: str | None = None
    wall_s: float | None = None
    labs: tuple[Mapping[str, Any], ...] = ()  # per lab: its phases (results' timings_s.labs)
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format, **dict(self.environment),
            "spec_hash": self.spec_hash, "seed": self.shard.seed,
            "shard": {"index": self.shard.index, "count": self.shard.count},
            "slots": self.slots, "slots_total": self.slots_total, "records": self.records,
            "complete": self.complete, "started": self.started, "finished": self.finished,
            "wall_s": self.wall_s, "spec": dict(self.spec),
            "configuration": dict(self.configuration), "labs": [dict(x) for x in self.labs],
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """Read and check a manifest; errors name `where` and the field."""
        try:
            return _manifest(data)
        except rec.RecordError as exc:
            raise PartError(f"{where}: {exc}") from None

    def finished_with(self, **changes: Any) -> Manifest:
        return replace(self, **changes)


def _manifest(data: Any) -> Manifest:
    fmt = rec.get(data, "format", "", (str,))
    if fmt != FORMAT:
        raise rec.RecordError(f"format: expected {FORMAT}, got {fmt!r} (another version's part?)")
    shard = rec.get(data, "shard", "", (dict,))
    index = rec.get(shard, "index", "shard", (int,))
    count = rec.get(shard, "count", "shard", (int,))
    if not 1 <= index <= count:
        raise rec.RecordError(f"shard: index {index} of {count}")
    env = {k: rec.opt(data, k, "", (str, int, bool, list)) for k in ENVIRONMENT}
    return Manifest(
        environment=env, spec=rec.get(data, "spec", "", (dict,)),
        spec_hash=rec.get(data, "spec_hash", "", (str,)),
        shard=Shard(index, count, rec.get(data, "seed", "", (int,))),
        slots=rec.get(data, "slots", "", (int,)),
        slots_total=rec.get(data, "slots_total", "", (int,)),
        started=rec.get(data, "started", "", (str,)),
        configuration=rec.opt(data, "configuration", "", (dict,), {}),
        records=rec.get(data, "records", "", (int,)),
        complete=rec.get(data, "complete", "", (bool,)),
        finished=rec.opt(data, "finished", "", (str,)),
        wall_s=rec.opt(data, "wall_s", "", rec.NUMBER),
        labs=tuple(rec.items(data, "labs", "", lambda v, w: rec.obj(v, w), required=False)),
        format=fmt)


def host_environment(versions: Mapping[str, Any]) -> dict[str, Any]:
    """ENVIRONMENT's fields from testbed.matrix.document.environment() and this host."""
    env = {k: versions.get(k) for k in ENVIRONMENT}
    env["host"] = socket.gethostname()
    return env


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace the manifest in one step (a reader never sees half of one)."""
    tmp = directory / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    tmp.replace(directory / MANIFEST)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PartError(f"{directory}/: no {MANIFEST} (not the --out directory of a matrix "
                        "run)") from None
    except OSError as exc:
        raise PartError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PartError(f"{path}: line {exc.lineno}: {exc.msg}") from None
    return Manifest.from_json(data, str(path))


class RecordWriter:
    """Appends records, one JSON line per slot; each batch in one write, then flushed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._f = path.open("wb")

    def write(self, results: Sequence[PairResult]) -> None:
        data = b"".join(json.dumps(pair_to_json(r), separators=(",", ":")).encode() + b"\n"
                        for r in results)
        self._f.write(data)
        self._f.flush()
        self.count += len(results)

    def close(self) -> None:
        self._f.close()


@dataclass(frozen=True)
class Line:
    offset: int  # byte offset in the file
    number: int  # 1-based line number
    pair: PairResult


def read_records(path: Path, dims: Sequence[str]) -> Iterator[Line]:
    """Every record of a records.jsonl, checked (ResultsError naming file, line and
    field). A last line without its newline is a record cut short by a kill: skipped."""
    offset = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ResultsError(f"{path}: line {number}: {exc.msg}") from None
            pair = pair_from_json(data, f"{path}: line {number}", dims)
            if pair.key is None or pair.repeat is None:
                raise ResultsError(f"{path}: line {number}: key and repeat: missing (not a "
                                   "matrix slot's record)")
            yield Line(offset, number, pair)
            offset += len(raw)


def truncated_tail(path: Path) -> bool:
    """Whether the file ends in a line cut short (a writer killed mid-line)."""
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"


class RecordReader:
    """Records read back by (file, offset), a few files kept open."""

    def __init__(self, paths: Sequence[Path], dims: Sequence[str], keep_open: int = 32) -> None:
        self.paths = list(paths)
        self.dims = list(dims)
        self.keep_open = keep_open
        self._open: dict[int, Any] = {}

    def read_json(self, file_no: int, offset: int) -> Any:
        """The record at that place as JSON (it was checked when it was first read)."""
        f = self._open.pop(file_no, None) or self.paths[file_no].open("rb")
        self._open[file_no] = f  # most recently used last
        if len(self._open) > self.keep_open:
            oldest = next(iter(self._open))
            self._open.pop(oldest).close()
        f.seek(offset)
        return json.loads(f.readline())

    def read(self, file_no: int, offset: int) -> PairResult:
        return pair_from_json(self.read_json(file_no, offset), str(self.paths[file_no]),
                              self.dims)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
