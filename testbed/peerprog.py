"""Run two contract programs (docs/peers.md) in a pair lab and judge the cell by the wire.

    run_contract_pair(nat_a, nat_b, get("aioice"), get("own"))

builds the pair lab (testbed.pair: home-pair, or any topology with `topology=` and
the two nodes), starts the rendezvous (and a libp2p circuit relay when an adapter
needs one), installs the wire counters (testbed.wire) in both routers, starts the two
programs with their NT_* environment, waits for both until the deadline, kills what
is still running, and returns one cell:

    {"a", "b", "peer_a", "peer_b", "outcome", "reason", "flags",
     "wire": {...verdict, "counters": {router: {...}}},
     "claims": {"alice": result line | null, "bob": ...},
     "programs": {"alice": {"adapter", "version", "exit", "killed", "error",
                            "stdout_bytes", "stderr_tail"}, ...},
     "tcp": {router: behaviour}, "deadline_s", "send_bytes", "lab", "elapsed_ms"}

`outcome` is the wire's verdict; the programs' own words are only shown beside it,
and `flags` lists where they disagree, or where a program broke the contract (hung,
crashed, printed no result line). A misbehaving program costs at most its deadline
plus KILL_GRACE_S, never the run: `run_cell` works on any lab whose nodes a
`testbed.pair.Placement` names, so the matrix runs it on its own slots, with a
rendezvous (and relay) that the lab's slots share (`CellServices`).

Deadlines: a program has `deadline_s` to connect (NT_CONNECT_DEADLINE_S) and then
`data_s` more for its data (NT_DEADLINE_S is their sum): a program that connects
late on a loaded machine still has the time to send what the judge measures.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers.candidates import Candidate, CandidateError
from peers.result import PeerResult, StageTimings
from testbed import wire
from testbed.adapters import (
    DEFAULT_DATA_S,
    DEFAULT_DEADLINE_S,
    LIBP2P_RELAY,
    NODE_DIR,
    REPO,
    Adapter,
    common_protocol,
)
from testbed.errors import LabError
from testbed.lab import Lab
from testbed.nat import Kind, NatSpec, SynReply
from testbed.pair import CANDIDATE_LEGEND, DEFAULT_NODES, Placement, pair_lab, pair_topology
from testbed.results import (
    ROLES,
    PairResult,
    PairTimings,
    ProgramReport,
    WireEvidence,
)

RENDEZVOUS_PORT = 7001
LIBP2P_RELAY_PORT = 4001
DEFAULT_SEND_BYTES = 65536
CHUNK = 1000  # bytes per message: a datagram under the lab's MTU with TURN and DTLS
KILL_GRACE_S = 2.0  # past the deadline: SIGTERM, then SIGKILL after this much more
TAIL_BYTES = 16 * 1024  # kept of each program's stdout and stderr (bounded memory)
START_TIMEOUT_S = 10.0


HOME_PAIR = Placement(DEFAULT_NODES, {"alice": "home-a", "bob": "home-b"})


@dataclass(frozen=True)
class CellServices:
    """A rendezvous session (and a libp2p relay) that someone else runs for the cell:
    the matrix starts one rendezvous per lab, with a session per slot."""

    rendezvous: tuple[str, int]
    session: str
    relay_multiaddr: str = ""  # "" when no adapter of the lab needs a libp2p relay


def tcp_behaviour(spec: NatSpec) -> str:
    """What the router does to TCP (nft-templates: the NAT's behaviours apply to it)."""
    if spec.kind is Kind.NONE:
        return "routed, no filtering"
    syn = "an unsolicited SYN is " + ("answered with a RST" if spec.unsolicited_syn is SynReply.RST
                                      else "dropped")
    if spec.kind is Kind.FIREWALL:
        return f"routed; inbound only as replies of tracked connections; {syn}"
    return (f"{spec.mapping.value} mapping, {spec.filtering.value} filtering, port allocation "
            f"{spec.port_allocation.value}, as for UDP; {syn}")


# ---------------------------------------------------------------- one program


class _Tail(threading.Thread):
    """Drains a pipe, keeping its last TAIL_BYTES and counting the rest."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(daemon=True)
        self.pipe, self.data, self.total = pipe, b"", 0

    def run(self) -> None:
        while chunk := self.pipe.read1(65536):
            self.total += len(chunk)
            self.data = (self.data + chunk)[-TAIL_BYTES:]


@dataclass
class Program:
    who: str
    adapter: Adapter
    proc: subprocess.Popen[bytes]
    out: _Tail
    err: _Tail
    node: str = ""
    killed: bool = False

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL if it is still there after the grace."""
        if self.proc.poll() is None:
            self.killed = True
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:  # children it left behind in its group
            _signal_group(self.proc.pid, signal.SIGKILL)
        self.out.join(timeout=1.0)
        self.err.join(timeout=1.0)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def parse_claim(stdout_tail: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The program's result line (the last non-empty line of stdout), or why not."""
    lines = [x for x in stdout_tail.splitlines() if x.strip()]
    if not lines:
        return None, "printed no result line"
    last = lines[-1]
    try:
        obj = json.loads(last)
    except ValueError:
        return None, f"last line is not JSON: {last[:120].decode('utf-8', 'replace')!r}"
    if not isinstance(obj, dict) or obj.get("outcome") not in wire.OUTCOMES:
        return None, f"result line has no outcome direct|relay|failed: {last[:120]!r}"
    return obj, None


def contract_env(c: dict[str, str]) -> dict[str, str]:
    """The program's whole environment: the contract, a PATH, and nothing of ours."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            "NODE_NO_WARNINGS": "1", "NO_UPDATE_NOTIFIER": "1"}
    if "DEBUG" in os.environ:  # the debug loggers of Node libraries (DEBUG=libp2p:dcutr*)
        base["DEBUG"] = os.environ["DEBUG"]
    return {**base, **c}


def start_program(lab: Lab, node: str, who: str, adapter: Adapter,
                  env: dict[str, str], cwd: Path) -> Program:
    proc = lab.popen(node, adapter.command(), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    out, err = _Tail(proc.stdout), _Tail(proc.stderr)
    out.start()
    err.start()
    return Program(who, adapter, proc, out, err, node)


def program_report(p: Program) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    claim, error = parse_claim(p.out.data)
    if p.killed:
        error = "killed at the deadline" + (f" ({error})" if error else "")
    elif claim is None and p.proc.returncode != 0:
        error = f"exited {p.proc.returncode}; {error}"
    report = {"adapter": p.adapter.name, "version": p.adapter.version(), "node": p.node,
              "exit": p.proc.returncode, "killed": p.killed, "error": error,
              "stdout_bytes": p.out.total,
              "stderr_tail": p.err.data[-600:].decode("utf-8", "replace").strip()}
    return claim, report


# ---------------------------------------------------------------- lab services


def _wait_line(proc: subprocess.Popen[Any], log: Path, word: str, what: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if line.startswith(word):
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
    raise LabError(f"{what} did not start: {tail.strip()}")


def start_rendezvous(lab: Lab, node: str, sessions: dict[str, tuple[str, str]]
                     ) -> tuple[subprocess.Popen[Any], tuple[str, int]]:
    """A rendezvous in `node` for these sessions (session id -> the two ids)."""
    addr = lab.addr(node)
    tag = secrets.token_hex(4)
    listing = lab.workdir() / f"rendezvous-{tag}.sessions"
    fd = os.open(listing, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # session ids: secrets
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{s} {a},{b}\n" for s, (a, b) in sessions.items())
    log = lab.workdir() / f"rendezvous-{tag}.log"
    with log.open("w") as f:
        proc = lab.python(node, "peers.rendezvous", "--listen", addr, "--port",
                          str(RENDEZVOUS_PORT), "--sessions-file", str(listing),
                          stdout=f, stderr=f, start_new_session=True)
    try:
        _wait_line(proc, log, "ready", f"lab {lab.name}: the rendezvous")
    except LabError:
        end_helper(proc)
        raise
    return proc, (addr, RENDEZVOUS_PORT)


def start_libp2p_relay(lab: Lab, node: str) -> tuple[subprocess.Popen[Any], str]:
    """A js-libp2p circuit relay v2 node in `node`; its multiaddr (with its peer id)."""
    addr = lab.addr(node)
    log = lab.workdir() / "libp2p-relay.log"

    node_name = node
    relay = Adapter("libp2p-relay", "node", ("{node}", "--import", str(NODE_DIR / "labshim.mjs"),
                                             str(NODE_DIR / "relay.mjs")), "")
    with log.open("w") as f:
        proc = lab.popen(node_name, relay.command(), stdout=f, stderr=f, cwd=NODE_DIR,
                         env=contract_env({"NT_LISTEN": f"{addr}:{LIBP2P_RELAY_PORT}"}),
                         start_new_session=True)
    try:
        line = _wait_line(proc, log, "ready ", f"lab {lab.name}: the libp2p relay")
    except LabError:
        end_helper(proc)
        raise
    return proc, line.split()[1]


def end_helper(proc: subprocess.Popen[Any]) -> None:
    """Stop a helper of one cell (the lab stops whatever is left when it goes down)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- one cell


def relay_addresses(lab: Lab, place: Placement) -> list[str]:
    return [lab.addr(place.relay)]


@dataclass(frozen=True)
class Deadlines:
    """Seconds a cell's programs get: to connect, then for the data (docs/peers.md)."""

    connect_s: float = DEFAULT_DEADLINE_S
    data_s: float = DEFAULT_DATA_S

    @property
    def total_s(self) -> float:
        return self.connect_s + self.data_s

    def env(self) -> dict[str, str]:
        return {"NT_DEADLINE_S": f"{self.total_s:g}",
                "NT_CONNECT_DEADLINE_S": f"{self.connect_s:g}"}


def run_cell(lab: Lab, adapter_a: Adapter, adapter_b: Adapter, *,
             place: Placement = HOME_PAIR, deadline_s: float = DEFAULT_DEADLINE_S,
             data_s: float = DEFAULT_DATA_S, send_bytes: int = DEFAULT_SEND_BYTES,
             services: CellServices | None = None) -> dict[str, Any]:
    """Alice runs adapter_a, Bob adapter_b, on a lab that is up; the judged cell.
    Whatever the programs do, it returns within deadline_s + data_s + KILL_GRACE_S
    (plus the helpers' start-up) and leaves no process of the cell running. Without
    `services` it starts (and stops) a rendezvous and relay of its own."""
    t0 = time.monotonic()
    times = Deadlines(deadline_s, data_s)
    helpers: list[subprocess.Popen[Any]] = []
    progs: list[Program] = []
    try:
        env = _cell_env(lab, place, adapter_a, adapter_b, times, send_bytes, helpers, services)
        workdir = lab.workdir()
        for role, adapter, kind in ((ROLES[0], adapter_a, "controlling"),
                                    (ROLES[1], adapter_b, "controlled")):
            me, remote = place.nodes[role], place.nodes[ROLES[1 - ROLES.index(role)]]
            mine = {k: v for k, v in env.items() if adapter.turn or not k.startswith("NT_TURN")}
            penv = contract_env({**mine, "NT_ROLE": kind, "NT_ID": me, "NT_REMOTE": remote})
            progs.append(start_program(lab, me, role, adapter, penv, workdir))
        end = time.monotonic() + times.total_s
        for p in progs:
            try:
                p.proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    except (LabError, OSError) as e:  # a helper or a program that could not start
        for p in progs:
            p.stop()
        for h in helpers:
            end_helper(h)
        return _broken_cell(adapter_a, adapter_b, f"cell not run: {e}", times,
                            send_bytes, t0)
    for p in progs:
        p.stop()
    for h in helpers:
        end_helper(h)
    routers = [place.routers[r] for r in ROLES]
    counters = {r: wire.read(lab, r) for r in routers}
    verdict = wire.judge(counters[routers[0]], counters[routers[1]], send_bytes)
    return _judged_cell(adapter_a, adapter_b, progs, counters, verdict, times,
                        send_bytes, t0)


def install_wire(lab: Lab, place: Placement) -> None:
    """Fresh wire counters in both routers of a placement."""
    relays = relay_addresses(lab, place)
    for role in ROLES:
        other = ROLES[1 - ROLES.index(role)]
        wire.install(lab, place.routers[role], place.routers[other], relays,
                     peer_host=lab.addr(place.nodes[other]))


def _cell_env(lab: Lab, place: Placement, adapter_a: Adapter, adapter_b: Adapter,
              times: Deadlines, send_bytes: int, helpers: list[subprocess.Popen[Any]],
              services: CellServices | None) -> dict[str, str]:
    """Start the cell's helpers (rendezvous, libp2p relay) unless `services` has them,
    install fresh wire counters; the contract's environment common to both programs."""
    if services is None:
        session = secrets.token_hex(16)
        proc, rv = start_rendezvous(lab, place.signaling, {
            session: (place.nodes[ROLES[0]], place.nodes[ROLES[1]])})
        helpers.append(proc)
        relay_ma = ""
        if LIBP2P_RELAY in adapter_a.needs + adapter_b.needs:
            proc, relay_ma = start_libp2p_relay(lab, place.relay)
            helpers.append(proc)
        services = CellServices(rv, session, relay_ma)
    install_wire(lab, place)
    rv = services.rendezvous
    env = {"NT_RENDEZVOUS": f"{rv[0]}:{rv[1]}", "NT_SESSION": services.session,
           **times.env(), "NT_SEND_BYTES": str(send_bytes), "NT_CHUNK": str(CHUNK),
           "NT_RELAY": services.relay_multiaddr}
    return env | server_env(lab)


def server_env(lab: Lab) -> dict[str, str]:
    """NT_STUN and NT_TURN* for the lab's servers."""
    svc, env = lab.services, {}
    if "stun" in svc:
        env["NT_STUN"] = f"{svc['stun']['address']}:{svc['stun']['port']}"
    if "turn" in svc:
        t = svc["turn"]
        env |= {"NT_TURN": f"{t['address']}:{t['port']}", "NT_TURN_USER": t["username"],
                "NT_TURN_PASS": t["password"], "NT_TURN_REALM": t["realm"]}
        if t.get("tls_port") and t.get("cert"):
            env |= {"NT_TURN_TLS": f"{t['address']}:{t['tls_port']}", "NT_TURN_CA": t["cert"]}
    return env


def _judged_cell(adapter_a: Adapter, adapter_b: Adapter, progs: list[Program],
                 counters: dict[str, dict[str, int]], verdict: wire.Verdict,
                 times: Deadlines, send_bytes: int, t0: float) -> dict[str, Any]:
    claims, reports, flags, broken = {}, {}, [], []
    for p, sends in zip(progs, ("a->b", "b->a"), strict=False):
        claims[p.who], reports[p.who] = program_report(p)
        flags += wire.disagreements(claims[p.who], verdict, p.who, sends)
        flags += wire.short_data(claims[p.who], p.who, send_bytes)
        if reports[p.who]["error"]:
            broken.append(f"{p.who} ({p.adapter.name}): {reports[p.who]['error']}")
    if (why := common_protocol(adapter_a, adapter_b)) is not None:
        broken.append(why)
    reason = verdict.reason
    if verdict.outcome == "failed":
        reason = "; ".join([*broken, reason or ""]).strip("; ") or None
    return {"peer_a": adapter_a.name, "peer_b": adapter_b.name, "outcome": verdict.outcome,
            "reason": reason, "flags": flags + broken,
            "wire": {**verdict.to_json(), "counters": counters},
            "claims": claims, "programs": reports, "deadline_s": times.connect_s,
            "data_s": times.data_s, "send_bytes": send_bytes,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 1)}


def broken_cell(adapter_a: Adapter, adapter_b: Adapter, why: str) -> dict[str, Any]:
    """A cell that could not run (its helpers or programs did not start)."""
    return _broken_cell(adapter_a, adapter_b, why, Deadlines(), DEFAULT_SEND_BYTES,
                        time.monotonic())


def _broken_cell(adapter_a: Adapter, adapter_b: Adapter, why: str, times: Deadlines,
                 send_bytes: int, t0: float) -> dict[str, Any]:
    return {"peer_a": adapter_a.name, "peer_b": adapter_b.name, "outcome": "failed",
            "reason": why, "flags": [why], "wire": None, "claims": {}, "programs": {},
            "deadline_s": times.connect_s, "data_s": times.data_s, "send_bytes": send_bytes,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 1)}


def run_contract_pair(nat_a: NatSpec, nat_b: NatSpec, adapter_a: Adapter,
                      adapter_b: Adapter, *, keep: bool = False,
                      deadline_s: float = DEFAULT_DEADLINE_S, data_s: float = DEFAULT_DATA_S,
                      send_bytes: int = DEFAULT_SEND_BYTES,
                      topology: str | Path | None = None, a_node: str = "alice",
                      b_node: str = "bob", lab_name: str | None = None) -> dict[str, Any]:
    """One cell in its own pair lab: home-pair, or `topology` with Alice in `a_node` and
    Bob in `b_node` (as testbed.pair.run_pair)."""
    t0 = time.monotonic()
    path = Path(topology) if topology is not None else None
    topo, place = pair_topology(nat_a, nat_b, path, {"alice": a_node, "bob": b_node})
    with pair_lab(topo, keep=keep, lab_name=lab_name) as lab:
        cell = run_cell(lab, adapter_a, adapter_b, place=place, deadline_s=deadline_s,
                        data_s=data_s, send_bytes=send_bytes)
    routers = place.routers
    return {"a": nat_a.label, "b": nat_b.label, **cell,
            "tcp": {routers["alice"]: tcp_behaviour(nat_a),
                    routers["bob"]: tcp_behaviour(nat_b)},
            "lab": lab.name, "kept": keep,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 1),
            "cell_ms": cell["elapsed_ms"]}


# ---------------------------------------------------------------- as a typed result


def _candidate(c: Any) -> Candidate:
    return Candidate.from_json({k: c.get(k) for k in ("type", "ip", "port")})


def claimed_peer(role: str, place: Placement, claim: dict[str, Any] | None,
                 error: str | None) -> PeerResult:
    """A program's claim as a PeerResult (its own word, for the CSV's per-peer columns):
    outcome, the pair it names (where it names a whole one), its time to connect."""
    me, remote = place.nodes[role], place.nodes[ROLES[1 - ROLES.index(role)]]
    if claim is None:
        return PeerResult.crashed(me, remote, error or "no result line")
    sp = claim.get("selected_pair")
    try:
        pair = (_candidate(sp["local"]), _candidate(sp["remote"])) if sp else None
    except (AttributeError, CandidateError, KeyError, TypeError):
        pair = None  # e.g. libwebrtc hides a peer-reflexive address
    ms = claim.get("connect_ms")
    errors = claim.get("errors")
    return PeerResult(
        id=me, remote=remote, outcome=claim["outcome"], stage="contract",
        reason=error, candidate_pair=pair,
        timings_ms=StageTimings(connect=float(ms) if isinstance(ms, int | float) else None),
        packets=None,
        errors=tuple(str(e) for e in errors[:10]) if isinstance(errors, list) else ())


def wire_evidence(cell: dict[str, Any], place: Placement) -> WireEvidence | None:
    """The cell's wire verdict with its counters by role (not by router name)."""
    w = cell.get("wire")
    if w is None:
        return None
    counters = {role: w["counters"][place.routers[role]] for role in ROLES}
    return WireEvidence(w["outcome"], w["reason"], w["threshold"], w["transport"],
                        dict(w["paths"]), w["direct"], w["relay"], counters)


def cell_result(cell: dict[str, Any], place: Placement, **where: Any) -> PairResult:
    """A judged cell (run_cell) as a PairResult: the wire's outcome, each program's
    claim as its peer and its report; `where` as for testbed.results.combine."""
    programs, peers = {}, {}
    for role in ROLES:
        rep = cell["programs"].get(role)
        claim = cell["claims"].get(role)
        error = rep["error"] if rep else cell["reason"]
        peers[role] = claimed_peer(role, place, claim, error)
        if rep is not None:
            programs[role] = ProgramReport(
                rep["adapter"], rep["version"], rep["node"], rep["exit"], rep["killed"],
                rep["error"], rep["stdout_bytes"], rep["stderr_tail"], claim)
    connects = [p.timings_ms.connect for p in peers.values()]
    connect = None if None in connects else max(c for c in connects if c is not None)
    return PairResult(
        outcome=cell["outcome"], stage="contract", reason=cell["reason"], peers=peers,
        relay={role: None for role in ROLES}, relay_bytes=None,
        timings_ms=PairTimings(connect, cell["elapsed_ms"]), wire=wire_evidence(cell, place),
        programs=programs, flags=tuple(cell["flags"]), **where)


# ---------------------------------------------------------------- text


def _pair_text(claim: dict[str, Any] | None) -> str:
    sp = (claim or {}).get("selected_pair")
    if not sp:
        return "no pair"
    try:
        return " -> ".join(f"{c.get('type')} {c.get('ip')}:{c.get('port')}"
                           for c in (sp["local"], sp["remote"]))
    except (AttributeError, KeyError, TypeError):
        return "unreadable pair"


def format_cell(cell: dict[str, Any]) -> str:
    w = cell["wire"] or {"transport": None, "direct": {}, "relay": {}, "threshold": 0}
    lines = [f"pair: {cell['a']} (alice, {cell['peer_a']}) x {cell['b']} (bob, {cell['peer_b']})",
             f"outcome (from the wire): {cell['outcome']}"
             + (f" over {w['transport']}" if w.get("transport") else "")]
    if w.get("paths") and len(set(w["paths"].values())) > 1:
        lines.append("paths: " + ", ".join(f"{k} {v or 'none'}" for k, v in w["paths"].items()))
    if cell.get("reason"):
        lines.append(f"reason: {cell['reason']}")
    for path in ("direct", "relay") if cell["wire"] else ():
        flows = ", ".join(f"{k} {v['udp']} B udp/{v['tcp']} B tcp" for k, v in w[path].items())
        lines.append(f"  {path}: {flows} (threshold {w['threshold']} B each way)")
    for who, rep in cell["programs"].items():
        claim = cell["claims"].get(who)
        said = claim["outcome"] if claim else "no claim"
        ms = claim.get("connect_ms") if claim else None
        lines.append(f"{who} ({rep['adapter']} {rep['version'] or '?'}): claims {said} via "
                     f"{_pair_text(claim)}" + (f", connected in {ms} ms" if ms else ""))
        if rep.get("error"):
            lines.append(f"  problem: {rep['error']}")
            if rep.get("stderr_tail"):
                lines.append("  stderr: " + rep["stderr_tail"][-300:].replace("\n", "\n  | "))
    for f in cell["flags"]:
        lines.append(f"FLAG: {f}")
    for router, text in (cell.get("tcp") or {}).items():
        lines.append(f"tcp at {router}: {text}")
    if cell.get("kept"):
        lines.append(f"lab {cell['lab']} kept: nat-testbed down {cell['lab']}")
    lines.append(CANDIDATE_LEGEND)
    return "\n".join(lines)
