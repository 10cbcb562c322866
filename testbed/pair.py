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
- With `conditions`, both directions of both routers' WAN links (the access links)
  behave so (testbed.impair; the topology's own `conditions:` blocks apply anyway).
- With a call (`Timing.call`), the peers keep the path and send data on it; `events`
  (and the topology's own) happen on schedule meanwhile (testbed.dynamics), and the
  result says, per event and direction, when data flowed again, from the wire.

`format_pair(result)` and `format_trace(result)` render it for a terminal.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from peers.driver import wait_budget
from peers.result import PeerResult
from peers.session import Timing
from testbed import coturn, impair, resources
from testbed.callflow import flow as call_flow
from testbed.callflow import recovery
from testbed.conditions import Conditions
from testbed.dynamics import EventDone, EventRunner, FlowTap
from testbed.events import Event, EventError, check_deadline, last_time
from testbed.lab import Lab
from testbed.nat import NatSpec, nat_section
from testbed.results import ROLES, EventResult, PairResult, PairTimings, TraceSummary, combine
from testbed.services import PeerServers
from testbed.strategy import DEFAULT as DEFAULT_STRATEGY
from testbed.strategy import Strategy, StrategyError
from testbed.topology import Topology, check_event, load_topology, parse_topology
from testbed.trace.capture import Capture
from testbed.trace.folder import tell, write_folder
from testbed.trace.narrate import crossing_json
from testbed.trace.packets import pcap_name

DEFAULT_TOPOLOGY = "home-pair"
DEFAULT_NODES = {"alice": "alice", "bob": "bob"}  # role -> node of the default topology
SERVICES = ("stun", "turn", "signaling")
CALL_AFTER_EVENTS_S = 10.0  # a call's default length: past the last event by this


# ------------------------------------------------------------------ the lab


@dataclass(frozen=True)
class Placement:
    """Where each role sits in a pair topology (its node and the router in front of
    it) and where the servers the peers use run. One placement serves the project's
    peer (run_pair), contract programs (testbed.peerprog) and a matrix slot."""

    nodes: Mapping[str, str]  # role -> host node
    routers: Mapping[str, str]  # role -> the router that is its default gateway
    signaling: str = "signal"  # the signaling server's node; contract programs' rendezvous
    relay: str = "turn"  # the TURN server's node; a libp2p circuit relay runs there too

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
    server = {s: next(n.name for n in topo.nodes if n.service == s) for s in SERVICES}
    return Placement(dict(nodes), routers, server["signaling"], server["turn"])


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
        if f.name == "punch_timeout" and timing.punch_fixed:
            out += ["--punch-timeout", str(value)]  # given, so fixed: even at the default
        elif f.name == "punch_timeout" and value != default.punch_timeout:
            out += ["--punch-floor", str(value)]  # scaled to the path, from there
        elif value != getattr(default, f.name) and f.name not in (
                "stun_transmits", "turn_rto", "punch_grace", "punch_fixed"):
            out += [f"--{f.name.replace('_', '-')}", str(value)]
    return out


def _addr(a: tuple[str, int]) -> str:
    return f"{a[0]}:{a[1]}"


def peer_argv(servers: PeerServers, me: str, remote: str, result: Path,
              timing: Timing, transport: str = "udp",
              strategy: Strategy = DEFAULT_STRATEGY,
              extra: tuple[str, ...] = ()) -> list[str]:
    tls: list[str] = []
    if servers.turn_tls is not None and servers.turn_cert is not None:
        tls = ["--turn-tls", _addr(servers.turn_tls), "--turn-ca", servers.turn_cert]
    return ["--id", me, "--remote", remote, "--result", str(result),
            "--signaling", _addr(servers.signaling), "--token", servers.token(me),
            "--stun", _addr(servers.stun), "--turn", _addr(servers.turn),
            "--turn-user", servers.turn_user, "--turn-pass", servers.turn_pass,
            "--transport", transport, *tls, *timing_args(timing), *strategy.peer_flags(),
            *extra]


@dataclass(frozen=True)
class PeersRun:
    peers: dict[str, PeerResult]  # by role
    total_ms: float  # from starting both peer programs until both ended


def run_peers(lab: Lab, timing: Timing, nodes: Mapping[str, str] = DEFAULT_NODES,
              tag: str = "", transport: str = "udp",
              strategy: Strategy = DEFAULT_STRATEGY,
              extra: Mapping[str, tuple[str, ...]] | None = None,
              on_start: Callable[[], None] | None = None) -> PeersRun:
    """The peer program in both roles' nodes at once; their results by role. `extra`:
    more flags per role (a port mapping the role's router gave it). `on_start` runs once
    both programs are started (time 0 of a call's events)."""
    d = lab.workdir()
    servers = PeerServers.of(lab.services)
    procs = {}
    t0 = time.monotonic()
    for role in ROLES:
        me, remote = nodes[role], nodes[ROLES[1 - ROLES.index(role)]]
        result, log = d / f"peer-{me}{tag}.json", d / f"peer-{me}{tag}.log"
        with log.open("w") as out:
            argv = peer_argv(servers, me, remote, result, timing, transport, strategy,
                             (extra or {}).get(role, ()))
            proc = lab.python(me, "peers.peer", *argv, stdout=out, stderr=out)
        procs[role] = (proc, result, log, me, remote)
    if on_start is not None:
        on_start()
    deadline = time.monotonic() + wait_budget(timing) + strategy.extra_s
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


def plan_call(topo: Topology, events: Sequence[Event], timing: Timing,
              call: float | None) -> tuple[list[Event], Timing]:
    """The run's events (the topology's, then these) checked against the topology and
    the call, and the timing with its call: `call` seconds, or by default long enough
    for the last event and CALL_AFTER_EVENTS_S more. EventError if an event cannot
    happen (names the event's position, `[i].FIELD`)."""
    all_events = [*topo.events, *events]
    names = {n.name for n in topo.nodes}
    for i, ev in enumerate(events):
        try:
            check_event(topo, ev, names)
        except EventError as exc:
            raise EventError(f"[{i}].{exc.field}", exc.message) from None
    if call is None:
        call = last_time(all_events) + CALL_AFTER_EVENTS_S if all_events else timing.call
    if all_events:
        check_deadline(all_events, call, "the call")
    return all_events, Timing(**{**timing.__dict__, "call": call})


def access_links(lab: Lab, where: Placement) -> list[tuple[str, str]]:
    """Both directions of Alice's and Bob's routers' WAN links."""
    out = []
    for role in ROLES:
        node = lab.topo.node(where.routers[role])
        wan = node.upstream or node.interfaces[-1].name
        out += [(node.name, wan), impair.far_end(lab, node.name, wan)]
    return list(dict.fromkeys(out))


def run_pair(nat_a: NatSpec, nat_b: NatSpec, *, topology: str | Path | None = None,
             a_node: str = "alice", b_node: str = "bob", keep: bool = False,
             timing: Timing | None = None, lab_name: str | None = None,
             trace_dir: str | Path | None = None, transport: str = "udp",
             conditions: Conditions | None = None, events: Sequence[Event] = (),
             call: float | None = None,
             strategy: Strategy = DEFAULT_STRATEGY) -> PairResult:
    """Alice in `a_node` behind NAT a, Bob in `b_node` behind NAT b, in `topology`
    (a file, or the bundled home-pair); one call attempt with `strategy`, with its
    evidence. With transport "tcp" the peers punch by TCP simultaneous open and reach
    TURN over TCP (the default strategy only: the others punch UDP). `conditions` on
    the access links; with events (or `call` > 0), a call of `call` seconds (default:
    the last event + CALL_AFTER_EVENTS_S) during which they happen."""
    if transport == "tcp" and strategy.name != DEFAULT_STRATEGY.name:
        raise StrategyError(f"strategy {strategy.name!r} works over UDP only; over TCP "
                            f"only {DEFAULT_STRATEGY.name!r}")
    path = Path(topology) if topology is not None else None
    topo, where = pair_topology(nat_a, nat_b, path, {"alice": a_node, "bob": b_node})
    all_events, timing = plan_call(topo, events, timing or Timing(), call)
    t0 = time.monotonic()
    summary = None
    with pair_lab(topo, keep=keep, lab_name=lab_name) as lab:
        if conditions is not None and not conditions.is_zero:
            impair.apply_many(lab, dict.fromkeys(access_links(lab, where), conditions))
        extra = request_mappings(lab, where) if strategy.name == "portmap" else {}
        with _flow_tap(lab, where, timing) as tap, EventRunner(lab, all_events) as runner:
            if trace_dir is None:
                run = run_peers(lab, timing, where.nodes, transport=transport,
                                strategy=strategy, extra=extra,
                                on_start=runner.start)
                usage = relay_usage(lab, run.peers)
            else:
                run, usage, summary = _traced(lab, where, Path(trace_dir).resolve(), timing,
                                              f"{nat_a.label} (alice) x {nat_b.label} (bob), "
                                              f"{transport.upper()}", transport, strategy,
                                              extra, runner.start)
        cond = impair.summary(lab._state.get("impairments"))
    flows, done = _call_results(tap, runner.done, where)
    return combine(run.peers, usage, a=nat_a.label, b=nat_b.label, lab=lab.name, kept=keep,
                   wan=where.wan(topo), timings_ms=PairTimings(total=run.total_ms),
                   elapsed_ms=round((time.monotonic() - t0) * 1000, 1), trace=summary,
                   point={} if transport == "udp" else {"transport": transport},
                   conditions=cond, events=done, flows=flows)


@contextlib.contextmanager
def _flow_tap(lab: Lab, where: Placement, timing: Timing) -> Iterator[FlowTap | None]:
    """The call's data on both hosts' interfaces (only when there is a call)."""
    if not timing.call:
        yield None
        return
    hosts = [(where.nodes[r], lab.topo.node(where.nodes[r]).interfaces[0].name) for r in ROLES]
    with FlowTap(lab, hosts) as tap:
        yield tap


def _call_results(tap: FlowTap | None, done: Sequence[EventDone], where: Placement
                  ) -> tuple[tuple[Any, ...], tuple[EventResult, ...]]:
    if tap is None:
        return (), ()
    a, b = where.nodes["alice"], where.nodes["bob"]
    seen = tap.sightings
    flows = (call_flow(seen, a, b), call_flow(seen, b, a))
    events = tuple(EventResult(str(d.event), round(d.at * 1000, 1), d.detail, d.error,
                               (recovery(seen, d.started, a, b), recovery(seen, d.started, b, a)))
                   for d in done)
    return flows, events


def _traced(lab: Lab, where: Placement, out: Path, timing: Timing, title: str,
            transport: str = "udp", strategy: Strategy = DEFAULT_STRATEGY,
            extra: Mapping[str, tuple[str, ...]] | None = None,
            on_start: Callable[[], None] | None = None
            ) -> tuple[PeersRun, dict[str, coturn.RelayUsage | None], TraceSummary]:
    """run_peers with both sides of both routers captured, and the trace folder written."""
    routers = [where.routers[r] for r in ROLES]
    with Capture(lab, out, routers=routers) as cap:
        run = run_peers(lab, timing, where.nodes, transport=transport, strategy=strategy,
                        extra=extra, on_start=on_start)
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


MAPPED_PORT = 40000  # the peer's internal port when its router maps one for it


def request_mappings(lab: Lab, where: Placement) -> dict[str, tuple[str, ...]]:
    """For each role whose router runs a port-mapping daemon: ask it (NAT-PMP, our own
    client, from the role's node) to map MAPPED_PORT, suggesting the first external port
    of the host's quota; the peer's flags for that mapping (--port, --mapped)."""
    out: dict[str, tuple[str, ...]] = {}
    daemons = lab.services.get("port_mapping", {})
    for role in ROLES:
        info = daemons.get(where.routers[role])
        if info is None:
            continue
        node = where.nodes[role]
        me = lab.addr(node)
        suggest = info["quota"].get(me, [MAPPED_PORT])[0]
        proto = "nat-pmp" if "nat-pmp" in info["protocols"] else "pcp"
        got = lab.run(node, [sys.executable, "-I", "-m", "peers.portmap", "map", "--gateway",
                             info["gateway"], "--port", str(MAPPED_PORT), "--suggest",
                             str(suggest), "--protocol", proto], timeout=30)
        try:
            m = json.loads(got.stdout)
            out[role] = ("--port", str(m["internal_port"]), "--mapped",
                         f"{m['external_ip']}:{m['external_port']}")
        except (ValueError, KeyError):
            continue  # refused: the peer goes on without a mapped candidate
    return out


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
    if r.punch_timeout_ms is not None:
        lines.append(f"  path round trip {_ms(r.path_rtt_ms)} ms (estimated): punch timeout "
                     f"{_ms(r.punch_timeout_ms)} ms")
    p = r.packets
    if p is None:
        lines.append("  packets: unknown (the peer program wrote no result)")
    else:
        lines.append(f"  packets sent {p.sent} received {p.received}; probes {p.probes_sent} "
                     f"sent {p.probes_received} received; relayed {p.relay_sent} sent "
                     f"{p.relay_received} received")
    if r.reason and r.reason != pair_reason:
        lines.append(f"  reason: {r.reason}")
    for x in r.restarts:
        got = (f"{x.outcome} after {x.restored_ms - x.lost_ms:.0f} ms"
               if x.restored_ms is not None else f"{x.outcome or 'cut short'}"
               + (f" ({x.reason})" if x.reason else ""))
        # its session's clock: it starts after the events' time 0 by the program's start-up
        lines.append(f"  restart {x.lost_ms / 1000:.2f} s into its session ({x.cause}): {got}")
    return lines


def _call_lines(result: PairResult) -> list[str]:
    lines = []
    if result.conditions:
        c = result.conditions
        by: dict[str, list[str]] = {}
        for d in c["directions"]:
            by.setdefault(d["conditions"], []).append(d["from"])
        for cond, where in by.items():
            lines.append(f"conditions ({c['mechanism']}): {cond} on {', '.join(where)}")
    if result.flows:
        lines.append("call data (from the wire): " + "; ".join(
            f"{f.direction} {f.arrived} of {f.sent} arrived" for f in result.flows))
    for e in result.events:
        head = f"event {e.event}: at {e.at_ms / 1000:.3f} s, " + (
            f"failed: {e.error}" if e.error else e.detail)
        lines.append(head)
        for x in e.recovery:
            back = "not back before the call ended" if x.restored_ms is None else \
                f"flowing again {x.restored_ms:.0f} ms after"
            gap = "" if x.gap_ms is None else f", silence {x.gap_ms:.0f} ms"
            lines.append(f"  {x.direction}: {back}{gap}, {x.lost} lost")
    return lines


CANDIDATE_LEGEND = ("host = own address, srflx = its NAT's mapping (from STUN), prflx = one "
                    "seen on a probe, relay = on the TURN server; docs/glossary.md")
STRATEGY_LEGEND = {"predicted": "predicted = a port guessed from the NAT's allocation step",
                   "mapped": "mapped = one the router granted (PCP, NAT-PMP, UPnP)",
                   "birthday": "birthday = one of many sockets' mappings, found by probing"}


def candidate_legend(result: PairResult) -> str:
    """The ICE words, and a strategy's own candidate kinds when the peers offered any."""
    kinds = {c.type for p in result.peers.values()
             for c in (*p.local_candidates, *p.remote_candidates)}
    extra = [words for kind, words in STRATEGY_LEGEND.items() if kind in kinds]
    if not extra:
        return CANDIDATE_LEGEND
    head, _, tail = CANDIDATE_LEGEND.rpartition("; ")
    return f"{head}, {', '.join(extra)}; {tail}"


def format_pair(result: PairResult) -> str:
    transport = result.point.get("transport", "udp")
    over = "" if transport == "udp" else f", over {transport.upper()}"
    lines = [f"pair: {result.a} (alice) x {result.b} (bob){over}",
             f"outcome: {result.outcome} (decided in stage {result.stage})"]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    for name, r in result.peers.items():
        lines += _peer_lines(name, r, result.reason)
    if result.relay_bytes is None:
        lines.append("relay: coturn did not report its counters in time")
    else:
        per = ", ".join(f"{n} {u.peer.sp} packets/{u.peer.sb} bytes"
                        + _turn_way(result.peers.get(n)) for n, u in result.relay.items() if u)
        what = " through TCP allocations (RFC 6062)" if transport == "tcp" else ""
        lines.append(f"relay: coturn relayed {result.relay_bytes} bytes to peers{what} ({per})")
    lines += _call_lines(result)
    if result.kept:
        lines.append(f"lab {result.lab} kept: nat-testbed down {result.lab}")
    lines.append(candidate_legend(result))
    return "\n".join(lines)


def _turn_way(peer: PeerResult | None) -> str:
    way = peer.turn_transport if peer is not None else None
    return f", reached over {way.upper()}" if way else ""


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

