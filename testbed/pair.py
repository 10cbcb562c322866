"""One pairing on real kernels: Alice behind NAT a, Bob behind NAT b, one call attempt.

`run_pair` deploys a topology (topologies/home-pair.yaml unless told otherwise) with
the NATs of the routers in front of Alice's and Bob's nodes replaced, lets the lab
start its STUN, TURN (coturn) and signaling servers, runs the peer program
(`python -m peers.peer`) in both nodes at once and combines their reports with
coturn's own counters into a PairResult (testbed.results):

- `relay_bytes` is what coturn says its relayed addresses sent to peers for the two
  allocations (the peers release them on exit; coturn logs the totals when it closes
  the session): the evidence that relayed data really crossed coturn. None when
  coturn did not report in time.
- With `trace_dir`, both sides of both routers are captured (testbed.trace) and the
  pcaps, nft traces, crossings and a sequence diagram are written there.

`format_pair(result)` and `format_trace(result)` render it for a terminal.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from peers.driver import wait_budget
from peers.result import PeerResult
from peers.session import Timing
from testbed import coturn, resources
from testbed.lab import Lab
from testbed.nat import NatSpec, nat_section
from testbed.results import ROLES, PairResult, PairTimings, TraceSummary, combine
from testbed.services import PeerServers
from testbed.topology import Topology, load_topology, parse_topology
from testbed.trace.capture import Capture
from testbed.trace.folder import tell, write_folder
from testbed.trace.narrate import crossing_json
from testbed.trace.packets import pcap_name

DEFAULT_TOPOLOGY = "home-pair"
DEFAULT_NODES = {"alice": "alice", "bob": "bob"}  # role -> node of the default topology
SERVICES = ("stun", "turn", "signaling")


# ------------------------------------------------------------------ the lab


@dataclass(frozen=True)
class Placement:
    """Where each role sits in a pair topology: its node and the router in front of it."""

    nodes: Mapping[str, str]  # role -> host node
    routers: Mapping[str, str]  # role -> the router that is its default gateway

    def wan(self, topo: Topology) -> dict[str, str]:
        """role -> the address its router shows upstream."""
        out = {}
        for role, r in self.routers.items():
            node = topo.node(r)
            out[role] = str(node.iface(node.upstream or node.interfaces[-1].name).address.ip)
        return out


def gateway(topo: Topology, node: str, what: str) -> str:
    """The router in front of a host: the owner of its default route's next hop."""
    try:
        host = topo.node(node)
    except KeyError:
        raise ValueError(f"{what}: no node {node!r} in {topo.source} (nodes: "
                         f"{', '.join(n.name for n in topo.nodes)})") from None
    via = next((r.via for r in host.routes if r.dest is None), None)
    owner = next((n for n in topo.nodes for i in n.interfaces
                  if via is not None and any(a.ip == via for a in i.addresses)), None)
    if owner is None or owner.kind != "router":
        raise ValueError(f"{what}: {node!r} has no router as its default gateway in "
                         f"{topo.source}")
    return owner.name


def place(topo: Topology, nodes: Mapping[str, str]) -> Placement:
    missing = [s for s in SERVICES if not any(n.service == s for n in topo.nodes)]
    if missing:
        raise ValueError(f"topology {topo.source} has no {', '.join(missing)} server "
                         "(a node with service: stun, turn and signaling)")
    routers = {role: gateway(topo, nodes[role], f"{role}'s node") for role in ROLES}
    if nodes[ROLES[0]] == nodes[ROLES[1]]:
        raise ValueError(f"alice's and bob's node must differ, both are {nodes[ROLES[0]]!r}")
    return Placement(dict(nodes), routers)


def pair_topology(nat_a: NatSpec, nat_b: NatSpec, source: Path | None = None,
                  nodes: Mapping[str, str] = DEFAULT_NODES) -> tuple[Topology, Placement]:
    """The topology with the NATs of the routers in front of Alice's and Bob's nodes set
    to nat_a and nat_b. The file is edited and parsed again, so routes are derived for
    these NATs (a LAN behind none or firewall is routed)."""
    path = source or resources.topology_file(DEFAULT_TOPOLOGY)
    where = place(load_topology(path), nodes)
    if where.routers["alice"] == where.routers["bob"] and nat_a != nat_b:
        raise ValueError(f"alice and bob are both behind {where.routers['alice']}: one "
                         f"router cannot be {nat_a.label} and {nat_b.label} at once")
    doc = yaml.safe_load(path.read_text())
    for role, spec in (("alice", nat_a), ("bob", nat_b)):
        doc["nodes"][where.routers[role]]["nat"] = nat_section(spec)
    return parse_topology(yaml.safe_dump(doc, sort_keys=False), str(path)), where


@contextlib.contextmanager
def pair_lab(topo: Topology, *, keep: bool = False,
             lab_name: str | None = None) -> Iterator[Lab]:
    """A pair topology's lab, its servers running; removed at exit unless `keep` (then
    `nat-testbed down LAB` removes it)."""
    lab = Lab(topo, name=lab_name)
    lab.up()
    try:
        yield lab
    finally:
        if keep:
            lab.detach()
        else:
            lab.down()


# ------------------------------------------------------------------ the peers


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


def _addr(a: tuple[str, int]) -> str:
    return f"{a[0]}:{a[1]}"


def peer_argv(servers: PeerServers, me: str, remote: str, result: Path,
              timing: Timing) -> list[str]:
    return ["--id", me, "--remote", remote, "--result", str(result),
            "--signaling", _addr(servers.signaling), "--token", servers.token(me),
            "--stun", _addr(servers.stun), "--turn", _addr(servers.turn),
            "--turn-user", servers.turn_user, "--turn-pass", servers.turn_pass,
            *timing_args(timing)]


@dataclass(frozen=True)
class PeersRun:
    peers: dict[str, PeerResult]  # by role
    total_ms: float  # from starting both peer programs until both ended


def run_peers(lab: Lab, timing: Timing, nodes: Mapping[str, str] = DEFAULT_NODES,
              tag: str = "") -> PeersRun:
    """The peer program in both roles' nodes at once; their results by role."""
    d = lab.workdir()
    servers = PeerServers.of(lab.services)
    procs = {}
    t0 = time.monotonic()
    for role in ROLES:
        me, remote = nodes[role], nodes[ROLES[1 - ROLES.index(role)]]
        result, log = d / f"peer-{me}{tag}.json", d / f"peer-{me}{tag}.log"
        with log.open("w") as out:
            proc = lab.python(me, "peers.peer", *peer_argv(servers, me, remote, result, timing),
                              stdout=out, stderr=out)
        procs[role] = (proc, result, log, me, remote)
    deadline = time.monotonic() + wait_budget(timing)
    peers = {}
    for role, (proc, result, log, me, remote) in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # a hung peer is a result, not a crash of ours
            proc.kill()
            proc.wait()
        peers[role] = _read_result(result, log, proc.returncode, me, remote)
    return PeersRun(peers, round((time.monotonic() - t0) * 1000, 3))


def _read_result(path: Path, log: Path, returncode: int | None, me: str,
                 remote: str) -> PeerResult:
    try:
        return PeerResult.from_json(json.loads(path.read_text()), str(path))
    except (OSError, ValueError):
        tail = log.read_text(errors="replace")[-400:].strip()
        return PeerResult.crashed(me, remote, f"peer exited {returncode} without a result: "
                                  f"{tail}")


def relay_usage(lab: Lab, peers: Mapping[str, PeerResult]) -> dict[str, coturn.RelayUsage | None]:
    """coturn's closed-session counters for each role's allocation."""
    return coturn.relay_usage(Path(lab.services["turn"]["log"]),
                              {role: p.turn_client for role, p in peers.items()})


# ------------------------------------------------------------------ one pairing


def run_pair(nat_a: NatSpec, nat_b: NatSpec, *, topology: str | Path | None = None,
             a_node: str = "alice", b_node: str = "bob", keep: bool = False,
             timing: Timing | None = None, lab_name: str | None = None,
             trace_dir: str | Path | None = None) -> PairResult:
    """Alice in `a_node` behind NAT a, Bob in `b_node` behind NAT b, in `topology`
    (a file, or the bundled home-pair); one call attempt, with its evidence."""
    timing = timing or Timing()
    path = Path(topology) if topology is not None else None
    topo, where = pair_topology(nat_a, nat_b, path, {"alice": a_node, "bob": b_node})
    t0 = time.monotonic()
    summary = None
    with pair_lab(topo, keep=keep, lab_name=lab_name) as lab:
        if trace_dir is None:
            run = run_peers(lab, timing, where.nodes)
            usage = relay_usage(lab, run.peers)
        else:
            run, usage, summary = _traced(lab, where, Path(trace_dir).resolve(), timing,
                                          f"{nat_a.label} (alice) x {nat_b.label} (bob)")
    return combine(run.peers, usage, a=nat_a.label, b=nat_b.label, lab=lab.name, kept=keep,
                   wan=where.wan(topo), timings_ms=PairTimings(total=run.total_ms),
                   elapsed_ms=round((time.monotonic() - t0) * 1000, 1), trace=summary)


def _traced(lab: Lab, where: Placement, out: Path, timing: Timing, title: str
            ) -> tuple[PeersRun, dict[str, coturn.RelayUsage | None], TraceSummary]:
    """run_peers with both sides of both routers captured, and the trace folder written."""
    routers = [where.routers[r] for r in ROLES]
    with Capture(lab, out, routers=routers) as cap:
        run = run_peers(lab, timing, where.nodes)
        usage = relay_usage(lab, run.peers)
    captured = cap.result()
    servers = [n.name for n in lab.topo.nodes if n.kind == "server"]
    lanes = [where.nodes["alice"], routers[0], *servers, routers[1], where.nodes["bob"]]
    story = tell(captured, lab.topo, routers, lanes, title)
    files = write_folder(out, story)
    summary = TraceSummary(
        dir=str(out), complete=captured.complete,
        pcaps={tap: pcap_name(tap) for tap in captured.packets},
        packets={tap: len(p) for tap, p in captured.packets.items()},
        dropped=tuple(crossing_json(c) for c in story.dropped()),
        files=(*files, "capture.json"))
    return run, usage, summary


# ---------------------------------------------------------------- text


def _cand(c: Any) -> str:
    return "-" if c is None else f"{c.type} {c.ip}:{c.port}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _peer_lines(name: str, r: PeerResult, pair_reason: str | None) -> list[str]:
    path = f"{_cand(r.candidate_pair[0])} -> {_cand(r.candidate_pair[1])}" \
        if r.candidate_pair else "no path"
    t = r.timings_ms
    lines = [f"{name}: {r.outcome} via {path}",
             f"  time to connect {_ms(t.connect)} ms (signaling {_ms(t.signaling)}, "
             f"gather {_ms(t.gather)}, punch {_ms(t.punch)}, relay {_ms(t.relay)})"]
    p = r.packets
    if p is None:
        lines.append("  packets: unknown (the peer program wrote no result)")
    else:
        lines.append(f"  packets sent {p.sent} received {p.received}; probes {p.probes_sent} "
                     f"sent {p.probes_received} received; relayed {p.relay_sent} sent "
                     f"{p.relay_received} received")
    if r.reason and r.reason != pair_reason:
        lines.append(f"  reason: {r.reason}")
    return lines


CANDIDATE_LEGEND = ("host = own address, srflx = its NAT's mapping (from STUN), prflx = one "
                    "seen on a probe, relay = on the TURN server; docs/glossary.md")


def format_pair(result: PairResult) -> str:
    lines = [f"pair: {result.a} (alice) x {result.b} (bob)",
             f"outcome: {result.outcome} (decided in stage {result.stage})"]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    for name, r in result.peers.items():
        lines += _peer_lines(name, r, result.reason)
    if result.relay_bytes is None:
        lines.append("relay: coturn did not report its counters in time")
    else:
        per = ", ".join(f"{n} {u.peer.sp} packets/{u.peer.sb} bytes"
                        for n, u in result.relay.items() if u)
        lines.append(f"relay: coturn relayed {result.relay_bytes} bytes to peers ({per})")
    if result.kept:
        lines.append(f"lab {result.lab} kept: nat-testbed down {result.lab}")
    lines.append(CANDIDATE_LEGEND)
    return "\n".join(lines)


def format_trace(result: PairResult) -> str:
    """What `pair --trace` adds to format_pair: the terminal sequence diagram, the drops
    and where the files are."""
    tr = result.trace
    if tr is None:
        return ""
    d = Path(tr.dir)
    lines = []
    if (d / "sequence.txt").exists():
        lines.append((d / "sequence.txt").read_text().rstrip())
    counts: dict[tuple[str, str, str, str], int] = {}
    for c in tr.dropped:  # retransmitted probes: one line each, with a count
        key = (c["router"], c["what"], c["arrived"], c["rule"] or "")
        counts[key] = counts.get(key, 0) + 1
    for (router, what, flow, rule), n in counts.items():
        lines.append(f"dropped at {router}: {what} {flow}" + (f" x{n}" if n > 1 else "")
                     + (f" ({rule})" if rule else ""))
    pcaps = " ".join(tr.pcaps.values())
    lines.append(f"trace: {d}/ {pcaps} sequence.html crossings.txt"
                 + ("" if tr.complete else " (warning: a capture was incomplete)"))
    return "\n".join(lines)

