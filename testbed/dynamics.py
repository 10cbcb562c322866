"""Events on a live lab, on schedule, and the call's data flow as the wire saw it.

    with EventRunner(lab, events) as runner:
        runner.start()                            # time 0: the events' clock starts
        ...                                       # the peers run meanwhile
    runner.done                                   # what each event did, and when

An event (testbed.events) is carried out as a real router or link would suffer it:
- reboot: its conntrack table flushed and its NAT ruleset loaded anew (empty mapping
  maps); with `for D`, its interfaces down for D first, and its routes restored when
  they come up (the kernel drops a route with its interface);
- renumber IFACE: a new address on the WAN interface (the highest free one of its
  subnet), the old one removed and forgotten by the segment's neighbours (it reaches
  nothing any more), the ruleset loaded for the new address and conntrack flushed
  (Linux's own masquerade forgets flows of a vanished address the same way);
- expire: the UDP mappings and UDP conntrack entries gone at once, TCP kept;
- down IFACE [for D] / up IFACE: the interface's administrative state, routes restored.

FlowTap records, on each peer's host interface, every probe, ack and data datagram of
the peers (peers.probe, direct or inside TURN messages) going out and coming in, with
the kernel's timestamps; testbed.callflow turns that into restoration times per event
and keepalive losses.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from types import TracebackType

from testbed import ruleset
from testbed.callflow import Sighting, parse_frames
from testbed.errors import LabError
from testbed.events import Event
from testbed.lab import Lab
from testbed.netns import entered
from testbed.topology import Node

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
FRAME_MAX = 65536  # a TCP segment can reach a packet socket whole (GSO on veth): 64 KiB
MAX_SIGHTINGS = 200_000  # 50 datagrams/s each way for 30 minutes


@dataclass
class EventDone:
    event: Event
    started: float  # CLOCK_REALTIME when it was carried out
    at: float  # seconds after time 0
    detail: str = ""
    error: str | None = None


# ---------------------------------------------------------------- actions


def _node(lab: Lab, name: str) -> Node:
    return lab.topo.node(name)


def _run(lab: Lab, node: str, *argv: str) -> None:
    lab.run(node, list(argv), check=True)


FREEZE_TABLE = "nattestbed_freeze"


def _freeze(lab: Lab, node: str, what: str, on: bool) -> None:
    """Drop `what` (an nft match) before conntrack sees it, or stop doing so. While the
    state is flushed, a packet passing would write the old mapping back into the maps
    from a conntrack entry not deleted yet."""
    fd, where = lab.namespace(node).fd, lab.netns(node)
    if not on:
        ruleset.load_ruleset(fd, f"delete table ip {FREEZE_TABLE}\n", where)
        return
    chains = "".join(f"  chain {hook} {{ type filter hook {hook} priority -400; {what} drop; }}\n"
                     for hook in ("prerouting", "output"))
    ruleset.load_ruleset(fd, f"table ip {FREEZE_TABLE} {{\n{chains}}}\n", where)


def flush_state(lab: Lab, node: str, *, udp_only: bool = False,
                wan_addr: str | None = None, first: Callable[[], None] | None = None) -> None:
    """The router's NAT ruleset loaded anew (empty maps) and its conntrack entries gone,
    as one step: the router drops the traffic concerned for the few ms it takes. `first`
    runs inside that step (a renumbering: else the old conntrack entries would go on
    translating to the old address for as long as the address change takes)."""
    n = _node(lab, node)
    _freeze(lab, node, "meta l4proto udp" if udp_only else "", True)
    try:
        if first is not None:
            first()
        # conntrack exits 1 when there was nothing to delete: not an error here
        argv = ["conntrack", "-D", "-p", "udp"] if udp_only else ["conntrack", "-F"]
        lab.run(node, argv, check=False)
        if n.nat is not None:
            ctx = lab.router_context(n)
            if wan_addr is not None:
                ctx = ctx.renumbered(wan_addr)
            ruleset.apply_nat(lab.namespace(node).fd, n.nat, ctx, lab.netns(node))
    finally:
        _freeze(lab, node, "", False)


def restore_routes(lab: Lab, node: str) -> None:
    """The node's routes (the kernel removed the ones through a downed interface)."""
    for r in _node(lab, node).routes:
        _run(lab, node, "ip", "route", "replace", str(r.dest or "default"), "via", str(r.via))


def set_link(lab: Lab, node: str, iface: str, up: bool) -> None:
    _run(lab, node, "ip", "link", "set", "dev", iface, "up" if up else "down")
    if up:
        restore_routes(lab, node)


def renumber_address(lab: Lab, node: str, iface: str, taken: set[str]) -> IPv4Interface:
    """The highest host address of the interface's subnet that no node uses."""
    current = _node(lab, node).iface(iface).address
    used = {str(a.ip) for n in lab.topo.nodes for i in n.interfaces for a in i.addresses}
    for host in reversed(list(current.network.hosts())):
        if str(host) not in used and str(host) not in taken:
            return IPv4Interface(f"{host}/{current.network.prefixlen}")
    raise LabError(f"lab {lab.name}: no free address left in {current.network} to "
                   f"renumber {node}:{iface}")


def forget_address(lab: Lab, node: str, iface: str, ip: str) -> None:
    """The neighbours on the interface's segment forget `ip`: a renumbered address
    reaches nothing from then on, as when the carrier routes it elsewhere (a cached
    neighbour entry would keep delivering it to the router for seconds)."""
    for seg in lab.topo.segments:
        if (node, iface) in seg.members:
            for other, their in seg.members:
                if other != node:
                    lab.run(other, ["ip", "neigh", "del", ip, "dev", their])  # none: fine


@dataclass
class _Step:
    at: float
    run: Callable[[], str]
    done: EventDone | None  # None: the second half of an event (`for D`)


@dataclass
class EventRunner:
    """Carries out `events` on `lab` from a thread, each at its time after `start()`."""

    lab: Lab
    events: Sequence[Event]
    done: list[EventDone] = field(default_factory=list)
    t0_wall: float = 0.0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _addresses: dict[tuple[str, str], str] = field(default_factory=dict)  # renumbered

    def __enter__(self) -> EventRunner:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.t0_wall = time.time()
        self._t0 = time.monotonic()
        if self.events:
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _steps(self) -> list[_Step]:
        steps = []
        for ev in self.events:
            rec = EventDone(ev, 0.0, 0.0)
            steps.append(_Step(ev.at, self._first_half(ev), rec))
            if ev.duration:
                steps.append(_Step(ev.ends, self._second_half(ev), None))
        return sorted(steps, key=lambda s: s.at)

    def _run(self) -> None:
        for step in self._steps():
            wait = self._t0 + step.at - time.monotonic()
            if self._stop.wait(max(0.0, wait)):
                return
            wall, mono = time.time(), time.monotonic()
            try:
                detail = step.run()
                error = None
            except Exception as exc:  # noqa: BLE001 - reported with the event
                detail, error = "", str(exc)
            if step.done is not None:
                step.done.started, step.done.at = wall, mono - self._t0
                step.done.detail, step.done.error = detail, error
                self.done.append(step.done)
            elif error is not None:
                self.done[-1].error = error

    # -------------------------------------------------------------- the actions

    def _first_half(self, ev: Event) -> Callable[[], str]:
        lab, node = self.lab, ev.node
        if ev.action == "reboot":
            def reboot() -> str:
                ifaces = [i.name for i in _node(lab, node).interfaces]
                if ev.duration:
                    for i in ifaces:
                        _run(lab, node, "ip", "link", "set", "dev", i, "down")
                flush_state(lab, node, wan_addr=self._wan_now(node))
                return (f"interfaces {', '.join(ifaces)} down; " if ev.duration else "") + \
                    "conntrack flushed, NAT mappings cleared"
            return reboot
        if ev.action == "renumber":
            assert ev.iface is not None
            iface = ev.iface

            def renumber() -> str:
                old = self._addresses.get((node, iface),
                                          str(_node(lab, node).iface(iface).address))
                new = renumber_address(lab, node, iface,
                                       {a.split("/")[0] for a in self._addresses.values()})

                def swap() -> None:
                    # the old one first: deleting a subnet's primary address deletes its
                    # secondaries too (unless promote_secondaries), the new one among them
                    _run(lab, node, "ip", "addr", "del", old, "dev", iface)
                    _run(lab, node, "ip", "addr", "add", str(new), "dev", iface)
                    forget_address(lab, node, iface, old.split("/")[0])
                    restore_routes(lab, node)

                flush_state(lab, node, wan_addr=str(new.ip), first=swap)
                self._addresses[(node, iface)] = str(new)
                return f"{iface} {old.split('/')[0]} -> {new.ip}"
            return renumber
        if ev.action == "expire":
            def expire() -> str:
                flush_state(lab, node, udp_only=True, wan_addr=self._wan_now(node))
                return "UDP mappings and UDP conntrack entries expired"
            return expire
        assert ev.iface is not None
        up = ev.action == "up"
        iface = ev.iface

        def link() -> str:
            set_link(lab, node, iface, up)
            return f"{iface} {'up' if up else 'down'}"
        return link

    def _second_half(self, ev: Event) -> Callable[[], str]:
        lab, node = self.lab, ev.node
        ifaces = ([ev.iface] if ev.iface else [i.name for i in _node(lab, node).interfaces])

        def back_up() -> str:
            for i in ifaces:
                _run(lab, node, "ip", "link", "set", "dev", i, "up")
            restore_routes(lab, node)
            return f"{', '.join(ifaces)} up"
        return back_up

    def _wan_now(self, node: str) -> str | None:
        """The router's WAN address if an event renumbered it, else None (the topology's)."""
        n = _node(self.lab, node)
        addr = self._addresses.get((node, n.upstream)) if n.upstream else None
        return addr.split("/")[0] if addr else None


# ---------------------------------------------------------------- the wire


class FlowTap:
    """Packet sockets on the peers' host interfaces, read from a thread: every data
    datagram of the call seen leaving or reaching a host, with its kernel timestamp."""

    def __init__(self, lab: Lab, hosts: Sequence[tuple[str, str]]) -> None:
        self.lab = lab
        self.hosts = list(hosts)  # (node, interface)
        self.sightings: list[Sighting] = []
        self._socks: dict[int, tuple[socket.socket, str]] = {}
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FlowTap:
        for node, iface in self.hosts:
            with entered(self.lab.namespace(node).fd):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((iface, ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setblocking(False)
            self._socks[s.fileno()] = (s, node)
        self._thread = threading.Thread(target=self._read, name="flowtap", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join()
        for s, _ in self._socks.values():
            s.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _read(self) -> None:
        fds = [*self._socks, self._stop_r]
        while True:
            ready, _, _ = select.select(fds, [], [])
            for fd in ready:
                if fd == self._stop_r:
                    for fd2 in self._socks:  # what arrived before the stop
                        self._drain(fd2)
                    return
                self._drain(fd)

    def _drain(self, fd: int) -> None:
        sock, node = self._socks[fd]
        while len(self.sightings) < MAX_SIGHTINGS:
            try:
                frame, anc, _, addr = sock.recvmsg(FRAME_MAX, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            found = parse_frames(frame)
            if not found:
                continue
            t = time.time()
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    t = sec + nsec / 1e9
            for kind, sender, receiver, seq in found:
                self.sightings.append(Sighting(t, node, addr[2] == PACKET_OUTGOING, sender,
                                               receiver, seq, kind))
        with contextlib.suppress(BlockingIOError):  # over the cap: keep the socket drained
            while sock.recv(2048):
                pass
