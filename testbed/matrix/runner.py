"""One matrix lab, in a worker process: build it, run all its slots at once, report.

The lab is built by MatrixLab from the slots' SlotSetups (what their dimensions set:
the routers' NATs, the peers' timing, their programs, ...). What each router's kernel
really runs is read back first (testbed.deployed), for every slot's evidence.

Slots whose two peers are the project's own run in-process, the fast path: every
peer gets a session (peers.session.Session) whose UDP socket and signaling connection
are opened while the thread is inside that peer's namespace, so they stay there and
every datagram crosses the real nftables NAT of its slot. One peers.driver.Driver runs
them all from one selector loop. Per slot the evidence is what the two sessions
report plus coturn's own counters of relayed bytes: a PairResult (testbed.results),
keyed by the slot's key.

Slots with another program on either side (the peer_a/peer_b dimensions) run it
through the peer contract (testbed.peerprog.run_cell) in the slot's two hosts, in
threads beside the driver, at most `contract_jobs` cells at once across all workers
(program start-up is CPU: more at once would stretch each implementation's own time
to connect); one rendezvous on the signaling node serves every slot of the lab, a
session each. When peer implementations are a dimension, every slot is judged from
the wire (testbed.wire), the in-process ones too: their sessions then send
application data once decided, and the outcome is what crossed the routers.

Each slot's link conditions (SlotSetup.conditions) go on its access links once the lab
is built, whatever its programs. In-process slots start as testbed.admission admits
them, their driver and the lab's servers at real-time priority; contract programs
start at ordinary priority (a user's program is not a timing-critical process of ours).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from peers import portmap as pm
from peers.driver import Driver, DriveTimes, Endpoint, listening_socket, wait_budget
from peers.session import PeerConfig, Session, Timing
from testbed import coturn, deployed, impair, peerprog, wire
from testbed.adapters import LIBP2P_RELAY
from testbed.admission import (
    Admission,
    Headroom,
    Noise,
    Places,
    build_nice,
    read_cpu_seconds,
    realtime,
    renice_thread,
)
from testbed.conditions import Conditions
from testbed.errors import LabError
from testbed.lab import Lab
from testbed.matrix.dimensions import SlotSetup
from testbed.matrix.lab import Layout, MatrixLab
from testbed.matrix.spec import Slot
from testbed.netns import entered
from testbed.pair import Placement
from testbed.results import ROLES, DeployedNat, PairResult, PairTimings, WireEvidence, combine
from testbed.ruleset import loader_name
from testbed.services import PeerServers
from testbed.strategy import DEFAULT as DEFAULT_STRATEGY
from testbed.strategy import Strategy

Send = Callable[[tuple[Any, ...]], None]
SEND_BYTES = peerprog.DEFAULT_SEND_BYTES  # application data each way, in wire-judged slots
DATA_S = 5.0  # a contract program's time for its data, after its connect deadline

# At most this many contract cells run at once in all of a run's workers (set by the
# parent before it forks them: testbed.matrix.workers); a process of its own otherwise.
_gate: Any = None


def set_contract_gate(jobs: int) -> None:
    global _gate
    _gate = multiprocessing.get_context("fork").BoundedSemaphore(jobs)


def _contract_gate() -> Any:
    global _gate
    if _gate is None:
        _gate = threading.BoundedSemaphore(os.cpu_count() or 1)
    return _gate


@dataclass(frozen=True)
class LabJob:
    """One lab's work: its slots and what each runs with (plain data: it may travel to
    another process or machine)."""

    index: int
    name: str
    slots: tuple[Slot, ...]
    setups: tuple[SlotSetup, ...]
    labels: tuple[tuple[str, str], ...] = ()  # recorded in the lab's state (testbed.lab.Lab)


def in_process(setup: SlotSetup) -> bool:
    """The fast path: both peers are the project's own, as sessions of this process."""
    return setup.peer_a.name == setup.peer_b.name == "own"


def open_peer(lab: Lab, index: int, role: str, nodes: Mapping[str, str],
              timing: Timing, transport: str = "udp", turn_ca: str = "",
              strategy: Strategy = DEFAULT_STRATEGY, app_bytes: int = 0) -> Endpoint:
    """A peer's session with its sockets, opened inside its namespace: UDP (and the
    birthday strategy's extra ones), the TCP one for signaling and, with transport tcp,
    the listening socket of its host candidate and a way to open more there
    (peers.driver.Endpoint.new_socket); with portmap, its router's mapping."""
    me = nodes[role]
    remote = nodes[ROLES[1 - ROLES.index(role)]]
    ip = lab.addr(me)
    fd = lab.namespace(me).fd
    n_extra = strategy.birthday.sockets if strategy.name == "birthday" else 0
    with entered(fd):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener = listening_socket(ip, 0) if transport == "tcp" else None
        extra = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n_extra)]
    udp.bind((ip, 0))
    for s in extra:
        s.bind((ip, 0))
    port = (listener or udp).getsockname()[1]
    mapped = request_mapping(lab, me, port) if strategy.name == "portmap" else None
    servers = PeerServers.of(lab.services)
    cfg = PeerConfig(id=me, remote=remote, host=(ip, port),
                     stun=servers.stun, turn=servers.turn, turn_user=servers.turn_user,
                     turn_pass=servers.turn_pass, token=servers.token(me), timing=timing,
                     transport=transport, turn_tcp=servers.turn if transport == "tcp" else None,
                     turn_tls=servers.turn_tls, turn_ca=turn_ca,
                     app_bytes=app_bytes, app_chunk=peerprog.CHUNK,
                     strategies=strategy.to_session(mapped))

    def new_socket() -> socket.socket:
        with entered(fd):
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    return Endpoint(Session(cfg), udp, tcp, tag=(index, role), extra=extra, group=index,
                    listener=listener, new_tcp=new_socket, new_socket=new_socket)


def request_mapping(lab: Lab, node: str, port: int) -> tuple[str, int] | None:
    """Ask the node's router's port-mapping daemon (NAT-PMP, from inside the node's
    namespace) to map `port`, suggesting the first port of the node's quota; None if
    its router runs none or refuses."""
    ip = lab.addr(node)
    for info in lab.services.get("port_mapping", {}).values():
        quota = info["quota"].get(ip)
        if quota is None:
            continue
        proto = "nat-pmp" if "nat-pmp" in info["protocols"] else "pcp"
        try:
            with entered(lab.namespace(node).fd):
                got = pm.request(info["gateway"], port, protocol=proto, suggested=quota[0])
        except (pm.PortmapError, OSError):
            return None
        return (got.external_ip, got.external_port)
    return None


def punch_end(ep: Endpoint) -> float:
    """When punching ended: decided direct or gave up (or the session failed before)."""
    s = ep.session
    return next(t for t in (s.t_punch_end, s.t_decided, s.t0) if t is not None)


def read_deployed(lab: Lab, place: Placement) -> dict[str, DeployedNat]:
    """role -> its router's NAT as the kernel has it (testbed.deployed)."""
    out = {}
    for role in ROLES:
        router = place.routers[role]
        out[role] = deployed.read(lab.namespace(router).fd, lab.netns(router), router,
                                  lab.router_context(lab.node(router)))
    return out


def run_lab(job: LabJob, layout: Layout, send: Send, places: Places | None = None) -> None:
    """Build one matrix lab, run its slots, report, take it down. With `places` (shared by
    the run's workers), in-process slots start as testbed.admission admits them; else all
    at once. The lab is built and taken down at a lower priority than the slots run at.

    Messages: ("built", i, s), ("slot", i, k, outcome, result) as the k-th slot decides
    (its PairResult without coturn's counters, which take up to a second more: what an
    interrupted run still has of a lab cut short), ("results", i, results, phases),
    ("down", i, s)."""
    renice_thread(build_nice())
    noise = Noise(places)
    try:
        noise.begin()
        _build_and_run(job, layout, send, places, noise)
    finally:
        noise.end()


def apply_conditions(lab: Lab, job: LabJob, layout: Layout) -> dict[str, list[str]] | None:
    """Each slot's conditions (SlotSetup.conditions) on its access links, all of the
    lab's at once (one forwarder); the mechanism used and its parts, or None."""
    items: dict[tuple[str, str], Conditions] = {}
    for k, setup in enumerate(job.setups):
        if not setup.conditions.is_zero:
            items.update(dict.fromkeys(layout.access_links(lab.topo, k), setup.conditions))
    if not items:
        return None
    imps = impair.apply_many(lab, items)
    return {i.mechanism: sorted({p for j in imps for p in j.parts}) for i in imps}


def _build_and_run(job: LabJob, layout: Layout, send: Send, places: Places | None,
                   noise: Noise) -> None:
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    topo = layout.topology(job.setups, job.name)
    lab = MatrixLab(topo, name=job.name, layer2=layout.layer2(topo), labels=dict(job.labels))
    lock = threading.Lock()

    def say(msg: tuple[Any, ...]) -> None:  # the driver's loop and contract threads
        with lock:
            send(msg)

    with lab:
        phases["namespaces"] = time.monotonic() - t0
        phases.update(lab.finish_build())
        t1 = time.monotonic()
        mechanism = apply_conditions(lab, job, layout)
        if mechanism is not None:
            phases["conditions"] = time.monotonic() - t1
        phases["build"] = time.monotonic() - t0
        noise.end()
        renice_thread(0)
        say(("built", job.index, phases["build"]))
        placements = [layout.placement(lab.topo, k) for k in range(len(job.slots))]
        nats = [read_deployed(lab, p) for p in placements]
        own = [k for k, s in enumerate(job.setups) if in_process(s)]
        for k in own:
            if job.setups[k].wire:
                peerprog.install_wire(lab, placements[k])
        ca = PeerServers.of(lab.services).turn_ca()  # read once for every peer
        eps = [open_peer(lab, k, role, layout.nodes(k), job.setups[k].timing,
                         job.setups[k].transport, ca, job.setups[k].strategy,
                         SEND_BYTES if job.setups[k].wire else 0)
               for k in own for role in ROLES]
        by_slot = {k: [ep for ep in eps if ep.tag[0] == k] for k in own}

        def finished(ep: Endpoint) -> None:
            k = ep.tag[0]
            if all(p.result is not None for p in by_slot[k]):
                decided = slot_result(job, lab, layout, k, by_slot[k], {}, None, nats[k])
                if job.setups[k].wire:
                    decided = judged_by_wire(decided, lab, placements[k])
                decided = checked(job.setups[k], decided, nats[k])
                say(("slot", job.index, k, decided.outcome, decided))

        sig = PeerServers.of(lab.services).signaling
        budget = max([wait_budget(job.setups[k].timing) + job.setups[k].strategy.extra_s
                      for k in own] or [0.0])

        def decide(k: int, cell: dict[str, Any]) -> PairResult:
            r = peerprog.cell_result(cell, placements[k],
                                     **_where(job, lab, layout, k, nats[k]))
            return checked(job.setups[k], r, nats[k])

        # Contract programs (and their rendezvous) start from threads made here, before
        # this thread turns real-time: they run at ordinary priority, as a user's would.
        with ContractSlots(lab, job, placements, decide, say) as contract:
            # the servers and this driver (the forwarder keeps its own, higher priority)
            forwarders = {i.forwarder_pid for i in impair.impairments(lab) if i.forwarder_pid}
            critical = [p.pid for p in lab.procs if p.pid not in forwarders] + [0]
            # past its CPU-time limit the driver goes back to ordinary scheduling, alive
            signal.signal(signal.SIGXCPU, lambda *_: realtime(0, False))
            for pid in critical:
                realtime(pid, True)
            pids = [os.getpid(), *(p.pid for p in lab.procs)]  # driver, servers, forwarder
            gate = None if places is None else Admission(places, Headroom(lambda: pids))
            times = Driver(eps, sig, hard_stop_s=budget, on_finish=finished, gate=gate).run()
            ended = max([punch_end(ep) for ep in eps] or [times.start])
            cells = contract.wait()
        clients = {ep.tag: ep.result.turn_client if ep.result else None for ep in eps}
        usage = coturn.relay_usage(Path(lab.services["turn"]["log"]), clients) if eps else {}
        phases["punch"] = ended - times.start
        phases["relay"] = time.monotonic() - ended  # relay, `done`, coturn's counters
        if contract.slots:
            phases["contract"] = contract.elapsed
        out = [*results(job, lab, layout, eps, usage, times, placements, nats),
               *cells.values()]
        say(("results", job.index, sorted(out, key=lambda r: r.slot or ""),
             dict(phases, slots=len(job.slots), lab=lab.name, nft_loader=loader_name(),
                  admission_waits=gate.waited if gate is not None else None,
                  conditions_mechanism=mechanism,
                  forwarder_cpu_s=round(read_cpu_seconds(sorted(forwarders)), 3)
                  if forwarders else None)))
        for pid in critical:
            realtime(pid, False)
        renice_thread(build_nice())
        noise.begin()
        t_down = time.monotonic()
    noise.end()
    say(("down", job.index, time.monotonic() - t_down))


def _where(job: LabJob, lab: Lab, layout: Layout, k: int,
           nats: Mapping[str, DeployedNat]) -> dict[str, Any]:
    """The fields of slot k's PairResult that say where and what it ran with."""
    slot = job.slots[k]
    return dict(a=slot["a"].label, b=slot["b"].label, point=slot.extra, key=slot.key,
                repeat=slot.repeat, lab=lab.name, slot=f"s{k:03d}",
                wan=layout.wan(lab.topo, k), deployed=dict(nats))


def deployment_flags(setup: SlotSetup, nats: Mapping[str, DeployedNat]) -> list[str]:
    """Where a router's kernel runs another NAT than its side of the slot asked for."""
    out = []
    for role, want in zip(ROLES, (setup.nat_a, setup.nat_b), strict=True):
        if nats[role].nat != want.label:
            out.append(f"{role}'s router {nats[role].router} runs {nats[role].nat}, not the "
                       f"slot's {want.label}")
    return out


def checked(setup: SlotSetup, r: PairResult, nats: Mapping[str, DeployedNat]) -> PairResult:
    """The slot's result flagged where the kernel ran another NAT than the slot's."""
    wrong = deployment_flags(setup, nats)
    return replace(r, flags=(*wrong, *r.flags)) if wrong else r


def results(job: LabJob, lab: Lab, layout: Layout, eps: Sequence[Endpoint],
            usage: Mapping[Any, coturn.RelayUsage | None], times: DriveTimes,
            places: Sequence[Placement],
            nats: Sequence[Mapping[str, DeployedNat]]) -> list[PairResult]:
    """The PairResult of each in-process slot, with where it ran (and, in wire-judged
    slots, what crossed the routers)."""
    out = []
    for k in sorted({ep.tag[0] for ep in eps}):
        mine = [ep for ep in eps if ep.tag[0] == k]
        ends = [ep.finished_at or times.finished for ep in mine]
        pair = slot_result(job, lab, layout, k, mine, usage,
                           round((max(ends) - times.start) * 1000, 3), nats[k])
        if job.setups[k].wire:
            pair = judged_by_wire(pair, lab, places[k])
        out.append(checked(job.setups[k], pair, nats[k]))
    return out


def slot_result(job: LabJob, lab: Lab, layout: Layout, k: int, mine: Sequence[Endpoint],
                usage: Mapping[Any, coturn.RelayUsage | None], total_ms: float | None,
                nats: Mapping[str, DeployedNat]) -> PairResult:
    """Slot k's PairResult from its two finished sessions, with where it ran."""
    peers = {ep.tag[1]: ep.result for ep in mine}
    assert all(peers.get(role) for role in ROLES), "both sessions of the slot finished"
    return combine(
        {r: p for r, p in peers.items() if p is not None},
        {role: usage.get((k, role)) for role in ROLES},
        timings_ms=PairTimings(total=total_ms), **_where(job, lab, layout, k, nats))


def judged_by_wire(pair: PairResult, lab: Lab, place: Placement) -> PairResult:
    """An in-process slot's result with the wire's verdict as its outcome and the
    sessions' own words checked against it (as contract programs' claims are)."""
    counters = {role: wire.read(lab, place.routers[role]) for role in ROLES}
    verdict = wire.judge(counters["alice"], counters["bob"], SEND_BYTES)
    flags: list[str] = []
    for role, sends in zip(ROLES, ("a->b", "b->a"), strict=True):
        flags += wire.disagreements({"outcome": pair.peers[role].outcome}, verdict, role, sends)
    v = verdict.to_json()
    evidence = WireEvidence(v["outcome"], v["reason"], v["threshold"], v["transport"],
                            v["paths"], v["direct"], v["relay"], counters)
    reason = pair.reason if verdict.outcome == pair.outcome else (
        verdict.reason or f"the wire says {verdict.outcome}, the peers said {pair.outcome}")
    return replace(pair, outcome=verdict.outcome, reason=reason, wire=evidence,
                   flags=tuple(flags))


class ContractSlots:
    """The lab's slots that run contract programs: one rendezvous (and libp2p relay) for
    all of them, each cell in a thread of its own, gated across workers."""

    def __init__(self, lab: Lab, job: LabJob, places: Sequence[Placement],
                 decide: Callable[[int, dict[str, Any]], PairResult], say: Send) -> None:
        self.lab, self.job, self.places, self.say = lab, job, places, say
        self.decide = decide  # slot k's cell -> its PairResult
        self.slots = [k for k, s in enumerate(job.setups) if not in_process(s)]
        self.helpers: list[subprocess.Popen[Any]] = []
        self.futures: dict[int, Any] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.elapsed = 0.0
        self._t0 = time.monotonic()

    def __enter__(self) -> ContractSlots:
        if not self.slots:
            return self
        sessions = {k: secrets.token_hex(16) for k in self.slots}
        first = self.places[self.slots[0]]
        try:
            proc, rv = peerprog.start_rendezvous(self.lab, first.signaling, {
                sessions[k]: (self.places[k].nodes["alice"], self.places[k].nodes["bob"])
                for k in self.slots})
            self.helpers.append(proc)
            relay = ""
            if any(LIBP2P_RELAY in (s.peer_a.needs + s.peer_b.needs) for s in self.job.setups):
                proc, relay = peerprog.start_libp2p_relay(self.lab, first.relay)
                self.helpers.append(proc)
        except LabError:
            self._stop_helpers()
            raise
        self.pool = ThreadPoolExecutor(min(len(self.slots), 32), "contract")
        for k in self.slots:
            services = peerprog.CellServices(rv, sessions[k], relay)
            self.futures[k] = self.pool.submit(self._cell, k, services)
        return self

    def _cell(self, k: int, services: peerprog.CellServices) -> PairResult:
        setup = self.job.setups[k]
        with _contract_gate():
            try:
                cell = peerprog.run_cell(self.lab, setup.peer_a, setup.peer_b,
                                         place=self.places[k], deadline_s=setup.deadline,
                                         data_s=DATA_S, send_bytes=SEND_BYTES,
                                         services=services)
            except Exception as e:  # noqa: BLE001 - one bad cell never stops the lab
                cell = peerprog.broken_cell(setup.peer_a, setup.peer_b,
                                            f"cell not run: {type(e).__name__}: {e}")
        result = self.decide(k, cell)
        self.say(("slot", self.job.index, k, result.outcome, result))
        return result

    def wait(self) -> dict[int, PairResult]:
        cells = {k: f.result() for k, f in self.futures.items()}
        self.elapsed = time.monotonic() - self._t0
        return cells

    def _stop_helpers(self) -> None:
        for h in self.helpers:
            with contextlib.suppress(OSError):
                peerprog.end_helper(h)

    def __exit__(self, et: type[BaseException] | None, *exc: object) -> None:
        if self.pool is not None:  # interrupted: the lab's teardown ends the programs
            self.pool.shutdown(wait=et is None, cancel_futures=True)
        self._stop_helpers()
