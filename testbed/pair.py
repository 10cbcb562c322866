"""One pairing on real kernels: Alice behind NAT A, Bob behind NAT B.

`run_pair` deploys topologies/home-pair.yaml with the two routers' `nat:`
replaced, lets the lab start its STUN, TURN (coturn) and signaling servers,
runs `python -m peers.peer` in alice and in bob at the same time, and
collects both JSON results into one pairing result:

    {"a": label, "b": label, "outcome": "direct"|"relay"|"failed",
     "stage": ..., "reason": str|null, "peers": {"alice": {...}, "bob": {...}},
     "relay_bytes": int|null, "relay": {"alice": {...}|null, "bob": ...},
     "lab": name, "kept": bool, "elapsed_ms": float}

`relay_bytes` is coturn's own count of payload bytes its relayed addresses
sent to peers for this lab's two allocations (the peers release them on
exit; coturn logs the totals when it closes the session): the evidence that
relayed data really crossed coturn. null when coturn did not report in time.

`format_pair(result)` renders the same for a terminal.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from peers.session import Timing
from peers.signaling import peer_token
from testbed import services
from testbed import turn as tb
from testbed.lab import Lab
from testbed.nat import Kind, NatSpec
from testbed.topology import Topology, parse_topology

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "home-pair.yaml"
PEERS = (("alice", "home-a", "bob"), ("bob", "home-b", "alice"))  # (peer, its router, remote)
USAGE_WAIT_S = 3.0  # coturn frees released allocations on a 1 s timer


def nat_section(spec: NatSpec) -> dict[str, Any]:
    """A NatSpec as the topology file's `nat:` section."""
    if spec.kind is not Kind.NAT:
        out: dict[str, Any] = {"type": spec.kind.value}
        if spec.kind is Kind.FIREWALL:
            out["mapping-timeout"] = spec.mapping_timeout
        return out
    return {"mapping": spec.mapping.value, "filtering": spec.filtering.value,
            "port-allocation": spec.port_allocation.value, "hairpinning": spec.hairpinning,
            "mapping-timeout": spec.mapping_timeout}


def pair_topology(nat_a: NatSpec, nat_b: NatSpec, source: Path = TOPOLOGY) -> Topology:
    """home-pair with home-a's NAT set to nat_a and home-b's to nat_b. The file is edited
    and parsed again, so routes are derived for these NATs (none and firewall are routed)."""
    doc = yaml.safe_load(source.read_text())
    for router, spec in (("home-a", nat_a), ("home-b", nat_b)):
        if router not in doc.get("nodes", {}):
            raise ValueError(f"{source}: no router named {router}")
        doc["nodes"][router]["nat"] = nat_section(spec)
    return parse_topology(yaml.safe_dump(doc, sort_keys=False), str(source))


def timing_args(timing: Timing) -> list[str]:
    """Command-line flags for the peer program, only where they differ from its defaults."""
    default = Timing()
    out: list[str] = []
    for f in fields(Timing):
        value = getattr(timing, f.name)
        if value != getattr(default, f.name) and f.name not in ("stun_transmits", "turn_rto",
                                                                "punch_grace"):
            out += [f"--{f.name.replace('_', '-')}", str(value)]
    return out


def peer_argv(svc: dict[str, Any], me: str, remote: str, result: Path,
              timing: Timing) -> list[str]:
    sig, stun, turn = svc["signaling"], svc["stun"], svc["turn"]
    return ["--id", me, "--remote", remote, "--result", str(result),
            "--signaling", f"{sig['address']}:{sig['port']}",
            "--token", peer_token(bytes.fromhex(sig["secret"]), me),
            "--stun", f"{stun['address']}:{stun['port']}",
            "--turn", f"{turn['address']}:{turn['port']}",
            "--turn-user", turn["username"], "--turn-pass", turn["password"],
            *timing_args(timing)]


def wait_budget(t: Timing) -> float:
    """How long a peer can legitimately run, plus a margin for process start-up."""
    return (t.signaling_timeout + t.gather_timeout + t.punch_timeout + t.punch_grace
            + t.relay_timeout + max(t.done_timeout, t.hold) + 10.0)


def crashed_result(me: str, remote: str, why: str) -> dict[str, Any]:
    """Stand-in when a peer wrote no result: failed, with the reason."""
    return {"id": me, "remote": remote, "outcome": "failed", "stage": "signaling",
            "reason": why, "candidate_pair": None, "candidates": {"local": [], "remote": []},
            "timings_ms": {"signaling": 0.0, "gather": 0.0, "punch": None, "relay": None,
                           "connect": 0.0},
            "packets": {"sent": 0, "received": 0, "probes_sent": 0, "probes_received": 0,
                        "relay_sent": 0, "relay_received": 0}}


@contextlib.contextmanager
def pair_lab(nat_a: NatSpec, nat_b: NatSpec, *, keep: bool = False,
             topology: Topology | None = None, lab_name: str | None = None) -> Iterator[Lab]:
    """The home-pair lab with these two NATs, its servers running; removed at exit
    unless `keep` (then `nat-testbed down LAB` removes it)."""
    lab = Lab(topology or pair_topology(nat_a, nat_b), name=lab_name)
    lab.up()
    try:
        yield lab
    finally:
        if keep:
            lab.detach()
        else:
            lab.down()


def run_pair(nat_a: NatSpec, nat_b: NatSpec, *, keep: bool = False,
             timing: Timing | None = None, topology: Topology | None = None,
             lab_name: str | None = None) -> dict[str, Any]:
    timing = timing or Timing()
    t0 = time.monotonic()
    with pair_lab(nat_a, nat_b, keep=keep, topology=topology, lab_name=lab_name) as lab:
        peers = run_peers(lab, timing)
        usage = relay_usage(lab)
    return combine(nat_a.label, nat_b.label, peers, usage, lab=lab.name, kept=keep,
                   elapsed_ms=round((time.monotonic() - t0) * 1000, 1))


def run_peers(lab: Lab, timing: Timing, tag: str = "") -> dict[str, dict[str, Any]]:
    """Run alice and bob once, concurrently; their results by name."""
    d = services.lab_dir(lab)
    procs = {}
    for me, _router, remote in PEERS:
        result = d / f"peer-{me}{tag}.json"
        with (d / f"peer-{me}{tag}.log").open("w") as log:
            procs[me] = (lab.python(me, "peers.peer", *peer_argv(lab.services, me, remote,
                                                                 result, timing),
                                    stdout=log, stderr=log), result, remote)
    deadline = time.monotonic() + wait_budget(timing)
    out = {}
    for me, (proc, result, remote) in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # a hung peer is a result, not a crash of ours
            proc.kill()
            proc.wait()
        try:
            out[me] = json.loads(result.read_text())
        except (OSError, ValueError):
            tail = (d / f"peer-{me}{tag}.log").read_text(errors="replace")[-400:].strip()
            out[me] = crashed_result(me, remote, f"peer exited {proc.returncode} without a "
                                     f"result: {tail}")
    return out


def relay_usage(lab: Lab) -> dict[str, dict[str, Any] | None]:
    """coturn's closed-session counters for each peer's allocation, keyed by peer.

    A session is the peer's if its client address is on the peer's router WAN."""
    log = Path(lab.services["turn"]["log"])
    wans = {me: lab.addr(router, lab.node(router).upstream) for me, router, _ in PEERS}
    found: dict[str, dict[str, Any] | None] = {me: None for me in wans}
    deadline = time.monotonic() + USAGE_WAIT_S
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        for u in tb.parse_usage(text).values():
            owner = next((me for me, ip in wans.items()
                          if u.remote and u.remote.rsplit(":", 1)[0] == ip), None)
            if owner is not None and u.closed:
                found[owner] = {"session": u.session, "client_address": u.remote,
                                "client": u.client.__dict__, "peer": u.peer.__dict__}
        if all(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def combine(label_a: str, label_b: str, peers: dict[str, dict[str, Any]],
            usage: dict[str, dict[str, Any] | None], **extra: Any) -> dict[str, Any]:
    a, b = peers["alice"], peers["bob"]
    if a["outcome"] == b["outcome"]:
        outcome, stage = a["outcome"], a["stage"]
        reason = a["reason"] or b["reason"]
    else:
        outcome, stage = "failed", f"{a['stage']}/{b['stage']}"
        reason = f"peers disagree: alice {a['outcome']}, bob {b['outcome']}"
    relay_bytes = None
    if all(usage.values()):
        relay_bytes = sum(u["peer"]["sb"] for u in usage.values() if u)
    return {"a": label_a, "b": label_b, "outcome": outcome, "stage": stage, "reason": reason,
            "peers": peers, "relay_bytes": relay_bytes, "relay": usage, **extra}


# ---------------------------------------------------------------- text


def _cand(c: dict[str, Any] | None) -> str:
    return "-" if c is None else f"{c['type']} {c['ip']}:{c['port']}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_pair(result: dict[str, Any]) -> str:
    lines = [f"pair: {result['a']} (alice) x {result['b']} (bob)",
             f"outcome: {result['outcome']} (decided in stage {result['stage']})"]
    if result.get("reason"):
        lines.append(f"reason: {result['reason']}")
    for name, r in result["peers"].items():
        pair = r.get("candidate_pair")
        path = f"{_cand(pair['local'])} -> {_cand(pair['remote'])}" if pair else "no path"
        t, p = r["timings_ms"], r["packets"]
        lines += [
            f"{name}: {r['outcome']} via {path}",
            f"  time to connect {_ms(t['connect'])} ms (signaling {_ms(t['signaling'])}, "
            f"gather {_ms(t['gather'])}, punch {_ms(t['punch'])}, relay {_ms(t['relay'])})",
            f"  packets sent {p['sent']} received {p['received']}; probes {p['probes_sent']} "
            f"sent {p['probes_received']} received; relayed {p['relay_sent']} sent "
            f"{p['relay_received']} received",
        ]
        if r.get("reason") and r["reason"] != result.get("reason"):
            lines.append(f"  reason: {r['reason']}")
    rb = result.get("relay_bytes")
    if rb is None:
        lines.append("relay: coturn did not report its counters in time")
    else:
        per = ", ".join(f"{n} {u['peer']['sp']} packets/{u['peer']['sb']} bytes"
                        for n, u in result["relay"].items() if u)
        lines.append(f"relay: coturn relayed {rb} bytes to peers ({per})")
    if result.get("kept"):
        lines.append(f"lab {result['lab']} kept: nat-testbed down {result['lab']}")
    return "\n".join(lines)
