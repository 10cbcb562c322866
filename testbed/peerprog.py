"""Run two contract programs (docs/peers.md) in a pair lab and judge the cell by the wire.

    run_contract_pair(nat_a, nat_b, get("aioice"), get("own"))

builds the home-pair lab (testbed.pair.pair_lab), starts the rendezvous (and a
libp2p circuit relay when an adapter needs one), installs the wire counters
(testbed.wire) in both routers, starts the two programs with their NT_* environment,
waits for both until the deadline, kills what is still running, and returns one
cell:

    {"a", "b", "peer_a", "peer_b", "outcome", "reason", "flags",
     "wire": {...verdict, "counters": {router: {...}}},
     "claims": {"alice": result line | null, "bob": ...},
     "programs": {"alice": {"adapter", "version", "exit", "killed", "error",
                            "stdout_bytes", "stderr_tail"}, ...},
     "tcp": {router: behaviour}, "deadline_s", "send_bytes", "lab", "elapsed_ms"}

`outcome` is the wire's verdict; the programs' own words are only shown beside it,
and `flags` lists where they disagree, or where a program broke the contract (hung,
crashed, printed no result line). A misbehaving program costs at most its deadline
plus KILL_GRACE_S, never the run: `run_cell` works on any lab whose nodes `Placement`
names, so the matrix can call it on its own slots.
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

from testbed import wire
from testbed.adapters import DEFAULT_DEADLINE_S, LIBP2P_RELAY, NODE_DIR, REPO, Adapter
from testbed.errors import LabError
from testbed.lab import Lab
from testbed.nat import Kind, NatSpec
from testbed.pair import CANDIDATE_LEGEND, pair_lab, pair_topology

RENDEZVOUS_PORT = 7001
LIBP2P_RELAY_PORT = 4001
DEFAULT_SEND_BYTES = 65536
CHUNK = 1000  # bytes per message: a datagram under the lab's MTU with TURN and DTLS
KILL_GRACE_S = 2.0  # past the deadline: SIGTERM, then SIGKILL after this much more
TAIL_BYTES = 16 * 1024  # kept of each program's stdout and stderr (bounded memory)
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Placement:
    """Which nodes of a lab play which part (defaults: topologies/home-pair.yaml)."""

    alice: str = "alice"
    bob: str = "bob"
    router_a: str = "home-a"
    router_b: str = "home-b"
    rendezvous: str = "signal"  # runs the rendezvous
    relay: str = "turn"  # runs coturn (started with the lab) and the libp2p relay


def tcp_behaviour(spec: NatSpec) -> str:
    """What the router does to TCP (nft-templates: NAT behaviours cover UDP only)."""
    if spec.kind is Kind.NONE:
        return "routed, no filtering"
    if spec.kind is Kind.FIREWALL:
        return "routed; inbound only as replies of tracked flows (address-and-port-dependent)"
    return ("snat to the WAN address, port kept while free (kernel's choice); inbound only "
            "as replies of tracked flows (address-and-port-dependent filtering)")


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
    return Program(who, adapter, proc, out, err)


def program_report(p: Program) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    claim, error = parse_claim(p.out.data)
    if p.killed:
        error = "killed at the deadline" + (f" ({error})" if error else "")
    elif claim is None and p.proc.returncode != 0:
        error = f"exited {p.proc.returncode}; {error}"
    report = {"adapter": p.adapter.name, "version": p.adapter.version(),
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


def start_rendezvous(lab: Lab, place: Placement, session: str) -> tuple[subprocess.Popen[Any],
                                                                      tuple[str, int]]:
    addr = lab.addr(place.rendezvous)
    log = lab.workdir() / f"rendezvous-{session[:8]}.log"
    with log.open("w") as f:
        proc = lab.python(place.rendezvous, "peers.rendezvous", "--listen", addr, "--port",
                          str(RENDEZVOUS_PORT), "--session", session,
                          "--ids", f"{place.alice},{place.bob}", stdout=f, stderr=f,
                          start_new_session=True)
    try:
        _wait_line(proc, log, "ready", f"lab {lab.name}: the rendezvous")
    except LabError:
        _end(proc)
        raise
    return proc, (addr, RENDEZVOUS_PORT)


def start_libp2p_relay(lab: Lab, place: Placement) -> tuple[subprocess.Popen[Any], str]:
    """A js-libp2p circuit relay v2 node; its multiaddr (with its peer id)."""
    addr = lab.addr(place.relay)
    log = lab.workdir() / "libp2p-relay.log"

    node = Adapter("libp2p-relay", "node", ("{node}", "--import", str(NODE_DIR / "labshim.mjs"),
                                            str(NODE_DIR / "relay.mjs")), "")
    with log.open("w") as f:
        proc = lab.popen(place.relay, node.command(), stdout=f, stderr=f, cwd=NODE_DIR,
                         env=contract_env({"NT_LISTEN": f"{addr}:{LIBP2P_RELAY_PORT}"}),
                         start_new_session=True)
    try:
        line = _wait_line(proc, log, "ready ", f"lab {lab.name}: the libp2p relay")
    except LabError:
        _end(proc)
        raise
    return proc, line.split()[1]


def _end(proc: subprocess.Popen[Any]) -> None:
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


def run_cell(lab: Lab, adapter_a: Adapter, adapter_b: Adapter, *,
             place: Placement = Placement(), deadline_s: float = DEFAULT_DEADLINE_S,
             send_bytes: int = DEFAULT_SEND_BYTES) -> dict[str, Any]:
    """Alice runs adapter_a, Bob adapter_b, on a lab that is up; the judged cell.
    Whatever the programs do, it returns within deadline_s + KILL_GRACE_S (plus the
    helpers' start-up) and leaves no process of the cell running."""
    t0 = time.monotonic()
    helpers: list[subprocess.Popen[Any]] = []
    progs: list[Program] = []
    try:
        env = _cell_env(lab, place, adapter_a, adapter_b, deadline_s, send_bytes, helpers)
        workdir = lab.workdir()
        for who, remote, adapter, role in ((place.alice, place.bob, adapter_a, "controlling"),
                                           (place.bob, place.alice, adapter_b, "controlled")):
            penv = contract_env({**env, "NT_ROLE": role, "NT_ID": who, "NT_REMOTE": remote})
            progs.append(start_program(lab, who, who, adapter, penv, workdir))
        end = time.monotonic() + deadline_s
        for p in progs:
            try:
                p.proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    except (LabError, OSError) as e:  # a helper or a program that could not start
        for p in progs:
            p.stop()
        for h in helpers:
            _end(h)
        return _broken_cell(adapter_a, adapter_b, f"cell not run: {e}", deadline_s,
                            send_bytes, t0)
    for p in progs:
        p.stop()
    for h in helpers:
        _end(h)
    counters = {r: wire.read(lab, r) for r in (place.router_a, place.router_b)}
    verdict = wire.judge(counters[place.router_a], counters[place.router_b], send_bytes)
    return _judged_cell(adapter_a, adapter_b, progs, counters, verdict, deadline_s,
                        send_bytes, t0)


def _cell_env(lab: Lab, place: Placement, adapter_a: Adapter, adapter_b: Adapter,
              deadline_s: float, send_bytes: int,
              helpers: list[subprocess.Popen[Any]]) -> dict[str, str]:
    """Start the cell's helpers (rendezvous, libp2p relay), install fresh wire counters;
    the contract's environment common to both programs."""
    session = secrets.token_hex(16)
    proc, rv = start_rendezvous(lab, place, session)
    helpers.append(proc)
    relay_ma = ""
    if LIBP2P_RELAY in adapter_a.needs + adapter_b.needs:
        proc, relay_ma = start_libp2p_relay(lab, place)
        helpers.append(proc)
    relays = relay_addresses(lab, place)
    for router, other, host in ((place.router_a, place.router_b, place.bob),
                                (place.router_b, place.router_a, place.alice)):
        wire.install(lab, router, other, relays, peer_host=lab.addr(host))
    svc = lab.services
    env = {"NT_RENDEZVOUS": f"{rv[0]}:{rv[1]}", "NT_SESSION": session,
           "NT_DEADLINE_S": str(deadline_s), "NT_SEND_BYTES": str(send_bytes),
           "NT_CHUNK": str(CHUNK), "NT_RELAY": relay_ma}
    if "stun" in svc:
        env["NT_STUN"] = f"{svc['stun']['address']}:{svc['stun']['port']}"
    if "turn" in svc:
        t = svc["turn"]
        env |= {"NT_TURN": f"{t['address']}:{t['port']}", "NT_TURN_USER": t["username"],
                "NT_TURN_PASS": t["password"], "NT_TURN_REALM": t["realm"]}
    return env


def _judged_cell(adapter_a: Adapter, adapter_b: Adapter, progs: list[Program],
                 counters: dict[str, dict[str, int]], verdict: wire.Verdict,
                 deadline_s: float, send_bytes: int, t0: float) -> dict[str, Any]:
    claims, reports, flags, broken = {}, {}, [], []
    for p, sends in zip(progs, ("a->b", "b->a"), strict=False):
        claims[p.who], reports[p.who] = program_report(p)
        flags += wire.disagreements(claims[p.who], verdict, p.who, sends)
        if reports[p.who]["error"]:
            broken.append(f"{p.who} ({p.adapter.name}): {reports[p.who]['error']}")
    if None not in (adapter_a.family, adapter_b.family) and adapter_a.family != adapter_b.family:
        broken.append(f"no common protocol: {adapter_a.name} speaks {adapter_a.family}, "
                      f"{adapter_b.name} speaks {adapter_b.family}")
    reason = verdict.reason
    if verdict.outcome == "failed":
        reason = "; ".join([*broken, reason or ""]).strip("; ") or None
    return {"peer_a": adapter_a.name, "peer_b": adapter_b.name, "outcome": verdict.outcome,
            "reason": reason, "flags": flags + broken,
            "wire": {**verdict.to_json(), "counters": counters},
            "claims": claims, "programs": reports, "deadline_s": deadline_s,
            "send_bytes": send_bytes, "elapsed_ms": round((time.monotonic() - t0) * 1000, 1)}


def _broken_cell(adapter_a: Adapter, adapter_b: Adapter, why: str, deadline_s: float,
                 send_bytes: int, t0: float) -> dict[str, Any]:
    return {"peer_a": adapter_a.name, "peer_b": adapter_b.name, "outcome": "failed",
            "reason": why, "flags": [why], "wire": None, "claims": {}, "programs": {},
            "deadline_s": deadline_s, "send_bytes": send_bytes,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 1)}


def run_contract_pair(nat_a: NatSpec, nat_b: NatSpec, adapter_a: Adapter,
                      adapter_b: Adapter, *, keep: bool = False,
                      deadline_s: float = DEFAULT_DEADLINE_S,
                      send_bytes: int = DEFAULT_SEND_BYTES,
                      lab_name: str | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    topo, _ = pair_topology(nat_a, nat_b)
    with pair_lab(topo, keep=keep, lab_name=lab_name) as lab:
        cell = run_cell(lab, adapter_a, adapter_b, deadline_s=deadline_s,
                        send_bytes=send_bytes)
    return {"a": nat_a.label, "b": nat_b.label, **cell,
            "tcp": {"home-a": tcp_behaviour(nat_a), "home-b": tcp_behaviour(nat_b)},
            "lab": lab.name, "kept": keep,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 1),
            "cell_ms": cell["elapsed_ms"]}


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
