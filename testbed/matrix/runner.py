"""One matrix lab, in a worker process: build it, run all its slots at once, report.

The lab is built by MatrixLab from the slots' SlotSetups (what their dimensions set:
the routers' NATs, the peers' timing, ...); then every peer of every slot gets a session
(peers.session.Session) whose UDP socket and signaling connection are opened while
the thread is inside that peer's namespace, so they stay there and every datagram
crosses the real nftables NAT of its slot. One peers.driver.Driver runs them all from
one selector loop. Per slot the evidence is what the two sessions report plus
coturn's own counters of relayed bytes: a PairResult (testbed.results), keyed by the
slot's key.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers.driver import Driver, DriveTimes, Endpoint, wait_budget
from peers.session import PeerConfig, Session, Timing
from testbed import coturn, impair
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
from testbed.lab import Lab
from testbed.matrix.dimensions import SlotSetup
from testbed.matrix.lab import Layout, MatrixLab
from testbed.matrix.spec import Slot
from testbed.netns import entered
from testbed.results import ROLES, PairResult, PairTimings, combine
from testbed.ruleset import loader_name
from testbed.services import PeerServers

Send = Callable[[tuple[Any, ...]], None]


@dataclass(frozen=True)
class LabJob:
    """One lab's work: its slots and what each runs with (plain data: it may travel to
    another process or machine)."""

    index: int
    name: str
    slots: tuple[Slot, ...]
    setups: tuple[SlotSetup, ...]
    labels: tuple[tuple[str, str], ...] = ()  # recorded in the lab's state (testbed.lab.Lab)


def open_peer(lab: Lab, index: int, role: str, nodes: Mapping[str, str],
              timing: Timing) -> Endpoint:
    """A peer's session with its UDP and TCP sockets, opened inside its namespace."""
    me = nodes[role]
    remote = nodes[ROLES[1 - ROLES.index(role)]]
    ip = lab.addr(me)
    with entered(lab.namespace(me).fd):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp.bind((ip, 0))
    servers = PeerServers.of(lab.services)
    cfg = PeerConfig(id=me, remote=remote, host=(ip, udp.getsockname()[1]),
                     stun=servers.stun, turn=servers.turn, turn_user=servers.turn_user,
                     turn_pass=servers.turn_pass, token=servers.token(me), timing=timing)
    return Endpoint(Session(cfg), udp, tcp, tag=(index, role), group=index)


def punch_end(ep: Endpoint) -> float:
    """When punching ended: decided direct or gave up (or the session failed before)."""
    s = ep.session
    return next(t for t in (s.t_punch_end, s.t_decided, s.t0) if t is not None)


def run_lab(job: LabJob, layout: Layout, send: Send, places: Places | None = None) -> None:
    """Build one matrix lab, run its slots, report, take it down. With `places` (shared by
    the run's workers), slots start as testbed.admission admits them; else all at once.
    The lab is built and taken down at a lower priority than the slots run at.

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
        # the servers and this driver (the forwarder keeps its own, higher priority)
        forwarders = {i.forwarder_pid for i in impair.impairments(lab) if i.forwarder_pid}
        critical = [p.pid for p in lab.procs if p.pid not in forwarders] + [0]
        # past its CPU-time limit the driver goes back to ordinary scheduling, alive
        signal.signal(signal.SIGXCPU, lambda *_: realtime(0, False))
        for pid in critical:
            realtime(pid, True)
        send(("built", job.index, phases["build"]))
        eps = [open_peer(lab, k, role, layout.nodes(k), setup.timing)
               for k, setup in enumerate(job.setups) for role in ROLES]
        by_slot = {k: [ep for ep in eps if ep.tag[0] == k] for k in range(len(job.slots))}

        def finished(ep: Endpoint) -> None:
            k = ep.tag[0]
            if all(p.result is not None for p in by_slot[k]):
                decided = slot_result(job, lab, layout, k, by_slot[k], {}, None)
                send(("slot", job.index, k, decided.outcome, decided))

        sig = PeerServers.of(lab.services).signaling
        budget = max(wait_budget(s.timing) for s in job.setups)
        pids = [os.getpid(), *(p.pid for p in lab.procs)]  # driver, servers, forwarder
        gate = None if places is None else Admission(places, Headroom(lambda: pids))
        times = Driver(eps, sig, hard_stop_s=budget, on_finish=finished, gate=gate).run()
        clients = {ep.tag: ep.result.turn_client if ep.result else None for ep in eps}
        usage = coturn.relay_usage(Path(lab.services["turn"]["log"]), clients)
        ended = max([punch_end(ep) for ep in eps] or [times.start])
        phases["punch"] = ended - times.start
        phases["relay"] = time.monotonic() - ended  # relay, `done`, coturn's counters
        send(("results", job.index, results(job, lab, layout, eps, usage, times),
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
    send(("down", job.index, time.monotonic() - t_down))


def results(job: LabJob, lab: Lab, layout: Layout, eps: Sequence[Endpoint],
            usage: Mapping[Any, coturn.RelayUsage | None],
            times: DriveTimes) -> list[PairResult]:
    """Each slot's PairResult, with where it ran."""
    out = []
    for k in range(len(job.slots)):
        mine = [ep for ep in eps if ep.tag[0] == k]
        ends = [ep.finished_at or times.finished for ep in mine]
        out.append(slot_result(job, lab, layout, k, mine, usage,
                               round((max(ends) - times.start) * 1000, 3)))
    return out


def slot_result(job: LabJob, lab: Lab, layout: Layout, k: int, mine: Sequence[Endpoint],
                usage: Mapping[Any, coturn.RelayUsage | None],
                total_ms: float | None) -> PairResult:
    """Slot k's PairResult from its two finished sessions, with where it ran."""
    slot = job.slots[k]
    peers = {ep.tag[1]: ep.result for ep in mine}
    assert all(peers.get(role) for role in ROLES), "both sessions of the slot finished"
    return combine(
        {r: p for r, p in peers.items() if p is not None},
        {role: usage.get((k, role)) for role in ROLES},
        a=slot["a"].label, b=slot["b"].label, point=slot.extra, key=slot.key,
        repeat=slot.repeat, lab=lab.name, slot=f"s{k:03d}", wan=layout.wan(lab.topo, k),
        timings_ms=PairTimings(total=total_ms))
