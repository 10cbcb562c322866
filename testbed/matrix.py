"""`nat-testbed matrix`: the traversal matrix, every cell from real packets.

    nat-testbed matrix                                  # none + the 4 classic types: 25 pairings
    nat-testbed matrix --nats all                       # none, firewall, 9 combinations: 121
    nat-testbed matrix --nats full-cone,symmetric --repeat 5 --out results/

Every ordered pairing, and every repeat of it, is a *slot*: Alice behind her own
router, Bob behind his, four namespaces of its own, so no slot ever sees
another's NAT state (a repeat is a new slot: fresh routers, fresh conntrack).
Slots are grouped into *matrix labs*: one emulated internet (a bridge) with one
STUN server, one coturn and one signaling server shared by up to MAX_SLOTS
slots, each slot's two routers on it with their own WAN addresses:

    stun 203.0.113.3+.4, turn .5, signal .6
    slot k: s<k>-alice 10.k.1.10 -- s<k>-nat-a 10.k.1.1 | 203.0.113.(10+2k) --+ internet
            s<k>-bob   10.k.2.10 -- s<k>-nat-b 10.k.2.1 | 203.0.113.(11+2k) --+ bridge

Routers only route to their own partner's LAN (when the partner does not
translate), never to another slot's. Layer 2 is static (fixed MACs, permanent
ARP entries, static bridge forwarding; see static_l2): the kernel's ARP table is
shared by all namespaces and refuses entries beyond 1024, which a few hundred
routers (with other labs beside them) would overrun.

Each lab is built and run by one worker process (forked; `--jobs` of them build
at once). A worker builds the lab with testbed.lab.Lab, loads the routers'
nftables rulesets through libnftables from a thread pool while the servers
start, then drives the sans-IO peer sessions (peers.session.Session) of all
its slots from one selector loop: each peer's UDP socket and signaling
connection are opened while the thread is inside that peer's namespace, so
they stay there and every datagram crosses the real nftables NAT of its slot.
Per repeat the evidence is what the two sessions report (outcome, deciding
stage, timings, packet counts, candidate pair) plus coturn's own counters of
relayed bytes. The parent process gathers the results, compares every cell
with testbed.model.predict and writes testbed.report's outputs.

Ctrl-C / SIGTERM: workers unwind through Lab.down (then ignore further
signals until it is done); the parent waits for them and, for a worker that
died anyway, removes its lab with testbed.state.clean.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any

from peers.peer import transmit
from peers.session import PeerConfig, Session, Signal, Timing, Transmit
from peers.signaling import ProtocolError, SignalingClient, peer_token
from testbed import __version__, netns, nlbatch, state
from testbed import report as rep
from testbed import turn as tb
from testbed.classify import UsageError
from testbed.errors import LabError, TestbedError
from testbed.lab import HUB_PORT_BASE, Lab, new_lab_name, require_root
from testbed.model import PortReuse, Strategy, all_nats, default_nats, predict
from testbed.nat import Kind, NatSpec, render_ruleset, sysctls
from testbed.pair import combine, wait_budget
from testbed.pair_cli import nat_from_label
from testbed.topology import Interface, Node, Route, Segment, Topology

MAX_SLOTS = 120  # WAN addresses 203.0.113.10-249 on one internet bridge
INTERNET = IPv4Network("203.0.113.0/24")
SERVERS = (  # node, service, addresses on the internet
    ("stun", "stun", ("203.0.113.3", "203.0.113.4")),
    ("turn", "turn", ("203.0.113.5",)),
    ("signal", "signaling", ("203.0.113.6",)),
)
FIRST_WAN = 10
PEERS = ("alice", "bob")
NFT_THREADS = 4
USAGE_WAIT_S = 3.0  # coturn frees released allocations on a 1 s timer
CONNECT_TIMEOUT_S = 5.0
CONNECT_WINDOW = 32  # signaling connections being set up at once
CLEANUP_WAIT_S = 30.0  # parent: how long workers get to take their labs down


# ------------------------------------------------------------------ NAT sets


def parse_nats(text: str) -> list[NatSpec]:
    """`default`, `all`, or a comma-separated list of labels (classic, none, firewall,
    or a combination like adm-eif)."""
    if text == "default":
        return default_nats()
    if text == "all":
        return all_nats()
    labels = [s.strip() for s in text.split(",")]
    if not all(labels):
        raise UsageError(f"--nats: empty name in {text!r} (a comma-separated list like "
                         "full-cone,symmetric, or default, or all)")
    specs: list[NatSpec] = []
    for label in labels:
        spec = nat_from_label(label, "--nats")
        if spec in specs:
            raise UsageError(f"--nats: {label!r} is listed twice (as {spec.label})")
        specs.append(spec)
    return specs


# ------------------------------------------------------------------ plan


@dataclass(frozen=True)
class SlotJob:
    a: int  # index into the NAT list: Alice's NAT
    b: int  # Bob's NAT
    repeat: int  # 1-based


@dataclass(frozen=True)
class LabJob:
    index: int
    name: str
    slots: tuple[SlotJob, ...]


def plan(n_nats: int, repeats: int, jobs: int, max_slots: int = MAX_SLOTS) -> list[list[SlotJob]]:
    """Every ordered pairing x repeat, dealt round-robin over enough labs that none holds
    more than max_slots and at least `jobs` labs share the work."""
    slots = [SlotJob(a, b, r) for r in range(1, repeats + 1)
             for a in range(n_nats) for b in range(n_nats)]
    n_labs = max(math.ceil(len(slots) / max_slots), min(jobs, len(slots)))
    return [slots[i::n_labs] for i in range(n_labs)]


# ------------------------------------------------------------------ the matrix lab


def host_name(slot: int, who: str) -> str:
    return f"s{slot:03d}-{who}"


def router_name(slot: int, who: str) -> str:
    return f"s{slot:03d}-nat-{who[0]}"


def wan_address(slot: int, who: str) -> IPv4Address:
    return INTERNET.network_address + FIRST_WAN + 2 * slot + PEERS.index(who)


def lan_network(slot: int, who: str) -> IPv4Network:
    return IPv4Network(f"10.{slot}.{PEERS.index(who) + 1}.0/24")


def _iface(name: str, segment: str, *addrs: str) -> Interface:
    return Interface(name, segment, tuple(IPv4Interface(a) for a in addrs))


def lab_topology(pairs: Sequence[tuple[NatSpec, NatSpec]], name: str = "matrix") -> Topology:
    """The matrix lab for these (Alice's NAT, Bob's NAT) slots, built directly.

    Equal to what parse_topology makes of the same YAML, except for routes: a router
    only routes to its own partner's LAN, and servers to every LAN that is not
    translated (parse_topology would give every router a route to every such LAN,
    quadratic in the slots and a path between slots that nothing needs)."""
    if not 1 <= len(pairs) <= MAX_SLOTS:
        raise ValueError(f"a matrix lab holds 1 to {MAX_SLOTS} slots, not {len(pairs)}")
    prefix = INTERNET.prefixlen
    nodes: list[Node] = []
    segments: list[Segment] = []
    members: list[tuple[str, str]] = [(n, "eth0") for n, _, _ in SERVERS]
    public: list[Route] = []  # LANs that keep their addresses, and their router's WAN
    for k, nat_pair in enumerate(pairs):
        spec = dict(zip(PEERS, nat_pair, strict=True))
        for who in PEERS:
            if spec[who].kind is not Kind.NAT:
                public.append(Route(lan_network(k, who), wan_address(k, who)))
    for node, service, addrs in SERVERS:
        nodes.append(Node(node, "server", 0, (_iface("eth0", "internet",
                                                     *(f"{a}/{prefix}" for a in addrs)),),
                          tuple(public), service=service))
    for k, nat_pair in enumerate(pairs):
        spec = dict(zip(PEERS, nat_pair, strict=True))
        for who in PEERS:
            other = PEERS[1 - PEERS.index(who)]
            lan, link = lan_network(k, who), f"links[{len(segments)}]"
            gateway = lan.network_address + 1
            host, router = host_name(k, who), router_name(k, who)
            nodes.append(Node(host, "host", 0,
                              (_iface("eth0", link, f"{lan.network_address + 10}/24"),),
                              (Route(None, gateway),)))
            routes: tuple[Route, ...] = ()
            if spec[other].kind is not Kind.NAT:
                routes = (Route(lan_network(k, other), wan_address(k, other)),)
            nodes.append(Node(router, "router", 0,
                              (_iface("lan", link, f"{gateway}/24"),
                               _iface("wan", "internet", f"{wan_address(k, who)}/{prefix}")),
                              routes, nat=spec[who], upstream="wan"))
            segments.append(Segment(link, False, "lan", lan, ((host, "eth0"), (router, "lan")),
                                    0))
            members.append((router, "wan"))
    segments.append(Segment("internet", True, "internet", INTERNET, tuple(members), 0))
    return Topology(name, f"<matrix: {len(pairs)} slots>", tuple(nodes), tuple(segments),
                    "traversal matrix: one STUN, TURN and signaling server, a pair of "
                    "routers per slot")


# ------------------------------------------------------------------ static layer 2
#
# The kernel's ARP table is ONE table for all namespaces, and its garbage collector
# refuses new entries beyond net.ipv4.neigh.default.gc_thresh3 (1024) across all of
# them together ("neighbor table overflow"): a matrix lab's hundreds of routers, with
# other labs running besides, run into it and lose packets. Permanent entries are not
# counted, so the matrix lab gives every interface a MAC derived from its IPv4 address
# and every node a permanent entry for each neighbour it talks to; the internet bridge
# gets a static forwarding entry per port, so it never floods unknown unicast either.

RTM_NEWNEIGH, NDA_DST, NDA_LLADDR, IFLA_ADDRESS = 28, 1, 2, 1
NUD_NOARP, NUD_PERMANENT, NTF_MASTER, AF_BRIDGE = 0x40, 0x80, 0x04, 7
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type


def mac_of(ip: IPv4Address) -> bytes:
    """A locally administered unicast MAC: 02:00 and the four bytes of the address."""
    return b"\x02\x00" + ip.packed


class _L2Batch(nlbatch.Batch):
    def set_mac(self, index: int, mac: bytes) -> None:
        self._add(nlbatch.RTM_NEWLINK, 0, nlbatch.ifinfo(index, up=True)
                  + nlbatch.attr(IFLA_ADDRESS, mac), f"link {index} address {mac.hex(':')}")

    def neighbour(self, index: int, ip: IPv4Address, mac: bytes) -> None:
        self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
                  _NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0)
                  + nlbatch.attr(NDA_DST, ip.packed) + nlbatch.attr(NDA_LLADDR, mac),
                  f"neighbour {ip} lladdr {mac.hex(':')}")

    def fdb(self, port: int, mac: bytes) -> None:
        self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
                  _NDMSG.pack(AF_BRIDGE, port, NUD_NOARP, NTF_MASTER, 0)
                  + nlbatch.attr(NDA_LLADDR, mac), f"fdb {mac.hex(':')} port {port}")


def static_l2(topo: Topology) -> dict[str, list[tuple[str, Any]]]:
    """Per node (or bridge): ("mac", (ifname, mac)), ("neigh", (ifname, ip, mac)) and
    ("fdb", (port position, mac)) requests that make the lab ARP-free."""
    out: dict[str, list[tuple[str, Any]]] = {n.name: [] for n in topo.nodes}
    by_segment: dict[str, list[tuple[str, str, IPv4Address]]] = {}
    for n in topo.nodes:
        for i in n.interfaces:
            out[n.name].append(("mac", (i.name, mac_of(i.address.ip))))
            by_segment.setdefault(i.segment, []).append((n.name, i.name, i.address.ip))
    talks = _talks_to(topo)
    for seg in topo.segments:
        members = by_segment.get(seg.name, [])
        addrs = {n.name: [a.ip for i in n.interfaces if i.segment == seg.name
                          for a in i.addresses] for n in topo.nodes}
        for node, ifname, _ in members:
            for other, _, other_ip in members:
                if other != node and other in talks[node]:
                    for ip in addrs[other]:
                        out[node].append(("neigh", (ifname, ip, mac_of(other_ip))))
        if seg.bridged:
            first = {(node, ifname): ip for node, ifname, ip in members}
            out[seg.name] = [("fdb", (pos, mac_of(first[m]))) for pos, m in enumerate(seg.members)]
    return out


def _talks_to(topo: Topology) -> dict[str, set[str]]:
    """Who sends to whom on a shared segment: hosts and their routers, each router and
    its slot partner, every router and every server."""
    servers = {n for n, _, _ in SERVERS}
    talks: dict[str, set[str]] = {n.name: set() for n in topo.nodes}
    for seg in topo.segments:
        if not seg.bridged:
            (a, _), (b, _) = seg.members
            talks[a].add(b)
            talks[b].add(a)
    for n in topo.nodes:
        if n.kind == "router":
            slot = n.name.split("-", 1)[0]
            partner = {m.name for m in topo.nodes if m.kind == "router" and m.name != n.name
                       and m.name.split("-", 1)[0] == slot}
            talks[n.name] |= servers | partner
            for s in servers:
                talks[s].add(n.name)
    return talks


class _LibNft:
    """libnftables in-process: one ruleset per call, loaded from inside a namespace.

    `nft -f` as a process costs about twice the CPU (fork, exec, start-up); most of a
    fresh namespace's load time is the kernel waiting (hook registration), which
    threads overlap. Contexts are per call; the first one is made in __init__ so the
    library's one-time global set-up does not race between threads."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        lib.nft_ctx_free(lib.nft_ctx_new(0))

    def load(self, fd: int, ruleset: str) -> None:
        lib = self.lib
        with netns.entered(fd):  # the context's netlink socket is opened in here
            ctx = lib.nft_ctx_new(0)
            try:
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                rc = lib.nft_run_cmd_from_buffer(ctx, ruleset.encode())
                err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            finally:
                lib.nft_ctx_free(ctx)
        if rc != 0:
            raise LabError(f"nft: {err.strip()}")


def _libnft() -> _LibNft | None:
    try:
        return _LibNft()
    except (OSError, AttributeError):
        return None


class MatrixLab(Lab):
    """A Lab whose routers' rulesets are loaded after `up`, in parallel with the servers
    starting (finish_build), instead of one `nft -f` process after another."""

    def __init__(self, topo: Topology, name: str | None = None) -> None:
        super().__init__(topo, name, start_services=False)
        self.pending_nat: list[Node] = []
        self.nft_loader = "nft"
        self._popen_lock = threading.Lock()

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        with self._popen_lock:  # it rewrites the state file: one thread at a time
            return super().popen(node, argv, **kw)

    def start_servers(self) -> None:
        """STUN, TURN and signaling at once (testbed.services starts them one by one)."""
        from testbed.services import STARTERS

        nodes = [n for n in self.topo.nodes if n.service]
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            infos = list(pool.map(lambda n: STARTERS[n.service](self, n), nodes))
        for n, info in zip(nodes, infos, strict=True):
            assert n.service is not None
            self.services[n.service] = {"node": n.name, **info}
        self._state["services"] = self.services
        state.write_state(self.name, self._state)

    def apply_nat(self, node: Node) -> None:
        self.pending_nat.append(node)

    def pin_layer2(self) -> None:
        """Fixed MACs, permanent ARP entries, static bridge forwarding (see static_l2)."""
        bridge_ports = {s.name: s for s in self.topo.bridges}
        for key, requests in static_l2(self.topo).items():
            batch = _L2Batch(self.ns[key].sock)
            for verb, args in requests:
                if verb == "mac":
                    batch.set_mac(self.ifindex[(key, args[0])], args[1])
                elif verb == "neigh":
                    batch.neighbour(self.ifindex[(key, args[0])], args[1], args[2])
                else:
                    assert key in bridge_ports
                    batch.fdb(HUB_PORT_BASE + args[0], args[1])
            try:
                batch.send()
            except nlbatch.NetlinkError as exc:
                raise LabError(f"{self.netns(key)}: {exc.strerror}") from None

    def finish_build(self) -> dict[str, float]:
        """Load every router's NAT and start the servers; seconds spent on each."""
        t0 = time.monotonic()
        self.pin_layer2()
        times: dict[str, float] = {"layer2": time.monotonic() - t0}
        lib = _libnft()
        if lib is None:  # no libnftables: the Lab's own way, one `nft -f` at a time
            t0 = time.monotonic()
            for node in self.pending_nat:
                Lab.apply_nat(self, node)
            times["nat"] = time.monotonic() - t0
            t0 = time.monotonic()
            self.start_servers()
            times["services"] = time.monotonic() - t0
            return times
        self.nft_loader = "libnftables"
        t0 = time.monotonic()
        with ThreadPoolExecutor(NFT_THREADS) as pool:
            loads = [pool.submit(self._load_nat, lib, node) for node in self.pending_nat]
            self.start_servers()  # meanwhile
            times["services"] = time.monotonic() - t0
            for f in loads:
                f.result()
        times["nat"] = time.monotonic() - t0
        return times

    def _load_nat(self, lib: _LibNft, node: Node) -> None:
        assert node.nat is not None
        fd = self.ns[node.name].fd
        try:
            lib.load(fd, render_ruleset(node.nat, self.router_context(node)))
        except LabError as exc:
            raise LabError(f"{self.netns(node.name)}: {exc}") from None
        for key, value in sysctls(node.nat).items():  # they exist once conntrack is in use
            netns.write_sysctl(fd, key, value)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb_: TracebackType | None) -> None:
        _ignore_interrupts()  # a second Ctrl-C must not cut the teardown short
        super().__exit__(et, ev, tb_)


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_interrupts() -> dict[int, Any]:
    """Ignore Ctrl-C and termination requests; the handlers they had, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in _INTERRUPTS}


# ------------------------------------------------------------------ many sessions, one loop


@dataclass
class PeerRun:
    """One peer of one slot: its session and its two sockets (both in its namespace)."""

    slot: int
    who: str
    session: Session
    udp: socket.socket
    tcp: socket.socket
    sig: SignalingClient | None = None
    result: dict[str, Any] | None = None
    finished_at: float | None = None
    send_errors: int = 0


@dataclass
class RunTimes:
    start: float = 0.0
    punch_end: float = 0.0  # every slot decided direct, or gave punching up
    finished: float = 0.0  # every session finished


@dataclass
class Runner:
    """Drives the sans-IO sessions of many peers from one selector loop."""

    runs: list[PeerRun]
    signaling: tuple[str, int]
    timing: Timing
    on_slot: Callable[[int, dict[str, dict[str, Any]]], None] = lambda slot, results: None
    clock: Callable[[], float] = time.monotonic
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    times: RunTimes = field(default_factory=RunTimes)

    def run(self) -> RunTimes:
        try:
            self._connect_all()
            now = self.clock()
            self.times.start = now
            due: dict[int, float] = {}
            for i, r in enumerate(self.runs):
                r.session.start(now)
                if r.sig is None:
                    r.session.handle_signal_closed(now, f"cannot connect to "
                                                        f"{self.signaling[0]}:{self.signaling[1]}")
                self._flush(r)
                due[i] = self._deadline(r)
            self._loop(due)
        finally:
            for r in self.runs:
                self._close(r)
            self.sel.close()
        self.times.punch_end = max([self._punch_end(r) for r in self.runs] or [self.times.start])
        return self.times

    # -- set-up

    def _connect_all(self) -> None:
        """Every signaling connection, CONNECT_WINDOW at a time (the server's listen
        backlog is about 100: a SYN beyond it is dropped and retried a second later);
        a peer that cannot connect fails its signaling stage like the peer program."""
        queue = list(self.runs)
        waiting: dict[int, PeerRun] = {}
        deadline = self.clock() + CONNECT_TIMEOUT_S
        while (queue or waiting) and self.clock() < deadline:
            while queue and len(waiting) < CONNECT_WINDOW:
                r = queue.pop(0)
                r.tcp.setblocking(False)
                if r.tcp.connect_ex(self.signaling) in (0, errno.EINPROGRESS):
                    waiting[r.tcp.fileno()] = r
                    self.sel.register(r.tcp, selectors.EVENT_WRITE, r)
            for key, _ in self.sel.select(max(0.0, deadline - self.clock())):
                r = key.data
                self.sel.unregister(r.tcp)
                del waiting[r.tcp.fileno()]
                if r.tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    r.tcp.settimeout(CONNECT_TIMEOUT_S)  # as SignalingClient.connect leaves it
                    r.tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    r.sig = SignalingClient(r.tcp)
        for r in waiting.values():
            self.sel.unregister(r.tcp)
        for r in self.runs:
            r.udp.setblocking(False)
            self.sel.register(r.udp, selectors.EVENT_READ, (r, "udp"))
            if r.sig is not None:
                self.sel.register(r.tcp, selectors.EVENT_READ, (r, "sig"))

    # -- the loop

    def _loop(self, due: dict[int, float]) -> None:
        index = {id(r): i for i, r in enumerate(self.runs)}
        hard_stop = self.times.start + wait_budget(self.timing)
        while due:
            now = self.clock()
            if now > hard_stop:  # never on a sane machine: every stage has its timeout
                for i in list(due):
                    self.runs[i].session.errors.append(
                        f"matrix runner: no decision within {wait_budget(self.timing):.1f} s")
                    self._finish(i, due, now)
                break
            wait = min(1.0, max(0.0, min(due.values()) - now))
            touched: set[int] = set()
            for key, _ in self.sel.select(wait):
                r, kind = key.data
                if kind == "udp":
                    self._read_udp(r)
                else:
                    self._read_signaling(r)
                self._flush(r)
                touched.add(index[id(r)])
            now = self.clock()
            for i, t in due.items():
                if t <= now:
                    self.runs[i].session.handle_timeout(now)
                    self._flush(self.runs[i])
                    touched.add(i)
            for i in touched:
                if i not in due:
                    continue
                if self.runs[i].session.finished:
                    self._finish(i, due, now)
                else:
                    due[i] = self._deadline(self.runs[i])
        self.times.finished = self.clock()

    def _deadline(self, r: PeerRun) -> float:
        d = r.session.next_deadline()
        return self.clock() + 1.0 if d is None else d

    def _finish(self, i: int, due: dict[int, float], now: float) -> None:
        r = self.runs[i]
        r.result = r.session.result()
        r.finished_at = now
        self._close(r)
        del due[i]
        partners = [p for p in self.runs if p.slot == r.slot]
        if all(p.result is not None for p in partners):
            self.on_slot(r.slot, {p.who: p.result for p in partners if p.result is not None})

    @staticmethod
    def _punch_end(r: PeerRun) -> float:
        """When punching ended: decided direct or gave up (or the session failed before)."""
        s = r.session
        return next(t for t in (s.t_punch_end, s.t_decided, s.t0) if t is not None)

    # -- I/O, as peers.peer.Driver does it for one session

    def _read_udp(self, r: PeerRun) -> None:
        for _ in range(256):  # bounded: timers must get their turn
            try:
                data, src = r.udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNREFUSED from an ICMP error
                continue
            r.session.handle_datagram(data, (src[0], src[1]), self.clock())

    def _read_signaling(self, r: PeerRun) -> None:
        if r.sig is None:
            return
        try:
            msgs = r.sig.read_available()
        except (OSError, ProtocolError) as e:
            self._drop_signaling(r, str(e))
            return
        for m in msgs:
            r.session.handle_signal(m, self.clock())

    def _drop_signaling(self, r: PeerRun, why: str) -> None:
        if r.sig is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(r.tcp)
            r.sig = None
            r.tcp.close()
        r.session.handle_signal_closed(self.clock(), why)

    def _flush(self, r: PeerRun) -> None:
        for out in r.session.take_outputs():
            if isinstance(out, Transmit):
                if not transmit(r.udp, out):
                    r.send_errors += 1
            elif isinstance(out, Signal) and r.sig is not None:
                try:
                    r.sig.send(out.msg)
                except OSError as e:
                    self._drop_signaling(r, str(e))

    def _close(self, r: PeerRun) -> None:
        for s in (r.udp, r.tcp):
            if s.fileno() >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
                s.close()
        r.sig = None


def open_peer(lab: Lab, slot: int, who: str, timing: Timing) -> PeerRun:
    """A peer's session with its UDP and TCP sockets, opened inside its namespace."""
    node = host_name(slot, who)
    ip = lab.addr(node)
    with netns.entered(lab.ns[node].fd):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp.bind((ip, 0))
    svc = lab.services
    me, remote = host_name(slot, who), host_name(slot, PEERS[1 - PEERS.index(who)])
    cfg = PeerConfig(id=me, remote=remote, host=(ip, udp.getsockname()[1]),
                     stun=(svc["stun"]["address"], svc["stun"]["port"]),
                     turn=(svc["turn"]["address"], svc["turn"]["port"]),
                     turn_user=svc["turn"]["username"], turn_pass=svc["turn"]["password"],
                     token=peer_token(bytes.fromhex(svc["signaling"]["secret"]), me),
                     timing=timing)
    return PeerRun(slot, who, Session(cfg), udp, tcp)


# ------------------------------------------------------------------ coturn's counters


def relay_usage(lab: Lab, runs: Sequence[PeerRun],
                wait_s: float = USAGE_WAIT_S) -> dict[tuple[int, str], dict[str, Any] | None]:
    """coturn's closed-session counters for each peer that allocated a relay, keyed by
    (slot, peer); the client address of a peer's session is its router's WAN address
    (or its own, behind a router that does not translate)."""
    owner: dict[str, tuple[int, str]] = {}
    for r in runs:
        owner[str(wan_address(r.slot, r.who))] = owner[lab.addr(host_name(r.slot, r.who))] = \
            (r.slot, r.who)
    allocated = {(r.slot, r.who) for r in runs if r.session.turn is not None
                 and r.session.turn.relayed is not None}
    found: dict[tuple[int, str], dict[str, Any] | None] = {(r.slot, r.who): None for r in runs}
    log = Path(lab.services["turn"]["log"])
    deadline = time.monotonic() + wait_s
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        for u in tb.parse_usage(text).values():
            key = owner.get(u.remote.rsplit(":", 1)[0]) if u.remote else None
            if key is not None and u.closed:
                found[key] = {"session": u.session, "client_address": u.remote,
                              "client": dataclasses.asdict(u.client),
                              "peer": dataclasses.asdict(u.peer)}
        if all(found[k] for k in allocated) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ------------------------------------------------------------------ one lab, in a worker


def _peer_evidence(result: dict[str, Any], send_errors: int) -> dict[str, Any]:
    out = dict(result)
    out["reason"] = result.get("reason") or ""  # the report's schema: always a string
    out["send_errors"] = send_errors
    return out


def run_lab(job: LabJob, nats: Sequence[NatSpec], timing: Timing,
            send: Callable[[tuple[Any, ...]], None]) -> None:
    """Build one matrix lab, run all its slots at once, report, take it down.

    Messages: ("built", i, s), ("slot", i, k, outcome) per slot, ("outcomes", i, results)
    as soon as every slot has decided (without coturn's counters, which take up to a
    second more), ("results", i, results, phases), ("down", i, s)."""
    pairs = [(nats[s.a], nats[s.b]) for s in job.slots]
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    lab = MatrixLab(lab_topology(pairs), name=job.name)
    with lab:
        phases["namespaces"] = time.monotonic() - t0
        phases.update(lab.finish_build())
        phases["build"] = time.monotonic() - t0
        send(("built", job.index, phases["build"]))
        runs = [open_peer(lab, k, who, timing) for k in range(len(pairs)) for who in PEERS]
        sig = (lab.services["signaling"]["address"], lab.services["signaling"]["port"])
        runner = Runner(runs, sig, timing,
                        on_slot=lambda k, res: send(("slot", job.index, k, _slot_outcome(res))))
        times = runner.run()
        nothing: dict[tuple[int, str], dict[str, Any] | None] = {}
        send(("outcomes", job.index, _results(job, lab.name, nats, runs, nothing, times)))
        usage = relay_usage(lab, runs)
        phases["punch"] = times.punch_end - times.start
        phases["relay"] = time.monotonic() - times.punch_end  # relay, `done`, coturn's counters
        send(("results", job.index, _results(job, lab.name, nats, runs, usage, times),
              dict(phases, slots=len(pairs), lab=lab.name, nft_loader=lab.nft_loader)))
        t_down = time.monotonic()
    send(("down", job.index, time.monotonic() - t_down))


def _results(job: LabJob, lab: str, nats: Sequence[NatSpec], runs: Sequence[PeerRun],
             usage: dict[tuple[int, str], dict[str, Any] | None],
             times: RunTimes) -> list[tuple[SlotJob, dict[str, Any]]]:
    """Each slot's PAIR_RESULT (testbed.report's schema, plus where it ran)."""
    out = []
    for k, s in enumerate(job.slots):
        mine = {r.who: r for r in runs if r.slot == k}
        peers = {who: _peer_evidence(mine[who].result or {}, mine[who].send_errors)
                 for who in PEERS}
        res = combine(nats[s.a].label, nats[s.b].label, peers,
                      {who: usage.get((k, who)) for who in PEERS},
                      repeat=s.repeat, lab=lab, slot=f"s{k:03d}",
                      wan={who: str(wan_address(k, who)) for who in PEERS})
        ends = [mine[who].finished_at or times.finished for who in PEERS]
        connects = [p["timings_ms"]["connect"] for p in peers.values()]
        res["timings_ms"] = {"connect": None if None in connects else max(connects),
                             "total": round((max(ends) - times.start) * 1000, 3)}
        out.append((s, res))
    return out


def _slot_outcome(results: dict[str, dict[str, Any]]) -> str:
    outcomes = {r["outcome"] for r in results.values()}
    return outcomes.pop() if len(outcomes) == 1 else "failed"


def _set_parent_death_signal() -> None:
    """If the parent dies (even by SIGKILL), the worker gets SIGTERM and cleans up."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _worker(conn: multiprocessing.connection.Connection, job: LabJob, nats: list[NatSpec],
            timing: Timing) -> None:
    _set_parent_death_signal()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored: nohup, `cmd &`
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    def send(msg: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the parent may be gone; the lab still goes
            conn.send(msg)

    try:
        run_lab(job, nats, timing, send)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops
        msg = str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"
        send(("error", job.index, msg))
    finally:
        conn.close()


# ------------------------------------------------------------------ the parent


@dataclass
class _Worker:
    job: LabJob
    proc: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    built: bool = False
    down: bool = False
    ended: bool = False


class Progress:
    """A progress bar on a terminal, plain lines otherwise (both on stderr)."""

    def __init__(self, total: int, n_labs: int, stream: Any = None,
                 tty: bool | None = None) -> None:
        self.total, self.n_labs = total, n_labs
        self.done = 0
        self.built = self.finished = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self._last = 0.0
        self._reported = -1

    def event(self, text: str) -> None:
        if not self.tty:
            self._line(f"[{time.monotonic() - self.t0:5.1f} s] {text}")
        self.draw(force=True)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty:
            step = max(1, self.total // 10)
            if self.done // step != self._reported // step or self.done == self.total:
                if self.done != self._reported:
                    self._reported = self.done
                    self._line(f"[{now - self.t0:5.1f} s] {self.done}/{self.total} "
                               "pairings decided")
            return
        if not force and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = width * self.done // max(1, self.total)
        bar = "#" * filled + "-" * (width - filled)
        labs = f"labs {self.built}/{self.n_labs} built, {self.finished} done"
        if self.done == self.total and self.finished < self.n_labs:
            labs += " (reading coturn's counters, removing labs)"
        self.stream.write(f"\r\033[K[{bar}] {self.done}/{self.total} pairings  {labs}  "
                          f"{now - self.t0:.1f} s")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


@dataclass
class MatrixRun:
    nats: list[NatSpec]
    repeats: int
    jobs: int
    timing: Timing = field(default_factory=Timing)
    progress: Progress | None = None
    labs: list[dict[str, Any]] = field(default_factory=list)
    on_idle: Callable[[], None] | None = None
    on_outcomes: Callable[[], None] | None = None  # every slot decided, counters pending
    final: dict[int, list[tuple[SlotJob, dict[str, Any]]]] = field(default_factory=dict)
    early: dict[int, list[tuple[SlotJob, dict[str, Any]]]] = field(default_factory=dict)
    n_jobs: int = 0

    @property
    def results(self) -> dict[tuple[int, int], list[dict[str, Any]]]:
        """Every repeat of every pairing, by (Alice's NAT, Bob's NAT) indexes."""
        return self.collect(self.final)

    def collect(self, by_lab: dict[int, list[tuple[SlotJob, dict[str, Any]]]]
                ) -> dict[tuple[int, int], list[dict[str, Any]]]:
        out: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for lab in sorted(by_lab):
            for slot, res in by_lab[lab]:
                out.setdefault((slot.a, slot.b), []).append(res)
        return out

    def run(self) -> None:
        groups = plan(len(self.nats), self.repeats, self.jobs)
        names: list[str] = []
        for _ in groups:
            name = new_lab_name()
            while name in names:
                name = new_lab_name()
            names.append(name)
        jobs = [LabJob(i, n, tuple(g)) for i, (n, g) in enumerate(zip(names, groups, strict=True))]
        self.n_jobs = len(jobs)
        ctx = multiprocessing.get_context("fork")
        pending = list(jobs)
        alive: list[_Worker] = []
        failed: str | None = None
        try:
            while pending or alive:
                building = sum(1 for w in alive if not w.built)
                while (pending and failed is None and building < self.jobs
                       and len(alive) < 2 * self.jobs):
                    alive.append(self._start(ctx, pending.pop(0)))
                    building += 1
                ready = multiprocessing.connection.wait([w.conn for w in alive], timeout=0.1)
                for w in alive:
                    if w.conn in ready:
                        failed = self._receive(w) or failed
                for w in [w for w in alive if w.ended]:
                    w.proc.join()
                    self._fallback_clean(w)
                    alive.remove(w)
                if failed is not None and pending:
                    pending.clear()
                    for w in alive:
                        _signal_worker(w, signal.SIGTERM)
                if alive and all(w.built for w in alive) and self.on_idle is not None:
                    self.on_idle()  # the CPUs are free while the sessions run
                    self.on_idle = None
                if self.progress:
                    self.progress.draw()
        except BaseException:
            old = _ignore_interrupts()
            try:
                self._stop(alive)
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
            raise
        if failed is not None:
            raise LabError(f"matrix run stopped: {failed}")
        reported = {info.get("lab") for info in self.labs}
        lost = [j.name for j in jobs if j.name not in reported]
        if lost:  # a worker was killed from outside: no results, its lab removed
            raise LabError(f"lab {', '.join(lost)} ended without results (its worker was "
                           "stopped or killed); nothing of it is left")

    def _start(self, ctx: Any, job: LabJob) -> _Worker:
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(child_end, job, self.nats, self.timing),
                           name=f"matrix-{job.name}", daemon=False)
        proc.start()
        child_end.close()
        if self.progress:
            self.progress.event(f"lab {job.name}: building {len(job.slots)} pairings")
        return _Worker(job, proc, parent_end)

    def _receive(self, w: _Worker) -> str | None:
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                error = self._handle(w, msg)
                if error:
                    return error
        except (EOFError, OSError):
            w.ended = True
        return None

    def _handle(self, w: _Worker, msg: tuple[Any, ...]) -> str | None:
        kind, p = msg[0], self.progress
        if kind == "built":
            w.built = True
            if p:
                p.built += 1
                p.event(f"lab {w.job.name}: built in {msg[2]:.2f} s, running")
        elif kind == "slot":
            if p:
                p.done += 1
                p.draw()
        elif kind == "outcomes":
            self.early[msg[1]] = msg[2]
            if len(self.early) == self.n_jobs and self.on_outcomes is not None:
                self.on_outcomes()  # while the workers wait for coturn's counters
        elif kind == "results":
            self.final[msg[1]] = msg[2]
            self.labs.append(msg[3])
        elif kind == "down":
            w.down = True
            for info in self.labs:
                if info.get("lab") == w.job.name:
                    info["teardown"] = msg[2]
            if p:
                p.finished += 1
                p.event(f"lab {w.job.name}: removed")
        elif kind == "error":
            w.built = True
            return f"lab {w.job.name}: {msg[2]}"
        return None

    def _stop(self, alive: list[_Worker]) -> None:
        """Interrupted: every worker takes its lab down; what a dead one left is cleaned."""
        for w in alive:
            _signal_worker(w, signal.SIGTERM)
        deadline = time.monotonic() + CLEANUP_WAIT_S
        for w in alive:
            w.proc.join(max(0.1, deadline - time.monotonic()))
            if w.proc.is_alive():
                _signal_worker(w, signal.SIGKILL)
                w.proc.join()
            self._fallback_clean(w)

    @staticmethod
    def _fallback_clean(w: _Worker) -> None:
        """A worker that ended without taking its lab down (killed, crashed): remove the
        lab, if the state file says this worker made it (never someone else's)."""
        st = state.read_state(w.job.name)
        if st is not None and st.get("pid") == w.proc.pid:
            state.clean([w.job.name])


def _signal_worker(w: _Worker, sig: int) -> None:
    if w.proc.pid is not None and w.proc.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.proc.pid, sig)


# ------------------------------------------------------------------ the results document


def _version(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def _git_commit() -> str | None:
    """The checkout's commit, for results from an unreleased tree (None outside git)."""
    repo = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions of everything that decides the outcome: kernel, nftables, coturn, us."""
    nft = _version(["nft", "--version"]) or ""
    return {
        "tool_version": __version__,
        "tool_commit": _git_commit(),
        "kernel": platform.release(),
        "nftables": nft.split()[1].lstrip("v") if len(nft.split()) > 1 else nft or None,
        "coturn": _version(["turnserver", "--version"]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def build_document(nats: Sequence[NatSpec], results: dict[tuple[int, int], list[dict[str, Any]]],
                   meta: dict[str, Any]) -> dict[str, Any]:
    """testbed.report's results document: a cell per ordered pairing, every repeat in
    order, each with the model's prediction."""
    cells = []
    for i, a in enumerate(nats):
        for j, b in enumerate(nats):
            p = predict(a, b)
            repeats = sorted(results.get((i, j), []), key=lambda r: int(r["repeat"]))
            cells.append(rep.make_cell(a, b, p.outcome, p.reason, repeats))
    return {"metadata": meta, "nats": [n.label for n in nats], "cells": cells}


def configuration(run: MatrixRun, n_labs: int) -> dict[str, Any]:
    return {
        "command": f"nat-testbed matrix --nats {','.join(n.label for n in run.nats)} "
                   f"--repeat {run.repeats} --jobs {run.jobs}",
        "nats": [rep.spec_to_dict(n) for n in run.nats],
        "repeat": run.repeats,
        "jobs": run.jobs,
        "labs": n_labs,
        "max_pairings_per_lab": MAX_SLOTS,
        "timing": dataclasses.asdict(run.timing),
        "model": {"strategy": dataclasses.asdict(Strategy()),
                  "port_reuse": PortReuse.EXCLUSIVE.value},
        "topology": {
            "layout": "per pairing and repeat: Alice and Bob each behind their own router "
                      "(fresh namespaces); up to max_pairings_per_lab pairings share one "
                      "emulated internet with one STUN, TURN (coturn) and signaling server",
            "internet": str(INTERNET),
            "servers": {n: list(a) for n, _, a in SERVERS},
            "alice": "10.K.1.10/24 behind 10.K.1.1, WAN 203.0.113.(10+2K)",
            "bob": "10.K.2.10/24 behind 10.K.2.1, WAN 203.0.113.(11+2K)",
        },
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00",
                                                                                      "Z")


def _preload_plotting() -> None:
    """Import matplotlib (over half a second) while the labs run, not after."""
    with contextlib.suppress(ImportError):
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401


def _phase_summary(labs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("build", "punch", "relay", "teardown")
    return {k: round(max((info.get(k, 0.0) for info in labs), default=0.0), 3) for k in keys}


# ------------------------------------------------------------------ command line


def add_parser(sub: Any) -> None:
    p = sub.add_parser("matrix", help="the traversal matrix: every pairing of NAT behaviours, "
                                      "on real kernels, against the reference model")
    p.add_argument("--nats", default="default", metavar="LIST|all|default",
                   help="NATs to pair: default (none + the 4 classic types: 25 pairings), all "
                        "(none, firewall, the 9 mapping x filtering combinations: 121), or a "
                        "list like full-cone,symmetric,adm-eif")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run every pairing N times, each in fresh namespaces (default 1)")
    p.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                   help="write results.json/.csv/.html/.png here (default results/)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any cell disagrees with the reference model")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="labs built at once, one worker process each (default: CPUs)")
    p.add_argument("--no-color", action="store_true", help="plain terminal table")
    p.set_defaults(handler=cmd_matrix)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the labs come down."""
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _check_args(args: argparse.Namespace) -> list[NatSpec]:
    nats = parse_nats(args.nats)
    if not 1 <= args.repeat <= 100:
        raise UsageError(f"--repeat: must be 1 to 100, got {args.repeat}")
    if not 1 <= args.jobs <= 64:
        raise UsageError(f"--jobs: must be 1 to 64, got {args.jobs}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a directory")
    return nats


def cmd_matrix(args: argparse.Namespace) -> int:
    nats = _check_args(args)
    require_root()
    if shutil.which("turnserver") is None:
        raise LabError("coturn's turnserver is not installed (apt install coturn)")
    t_start = time.time()
    t0 = time.monotonic()
    n_pairs = len(nats) ** 2
    n_labs = len(plan(len(nats), args.repeat, args.jobs))
    progress = Progress(n_pairs * args.repeat, n_labs)
    out: Path = args.out
    early_png = out / ".results.png.partial"

    def draw_heatmap() -> None:  # outcomes only: no need to wait for coturn's counters
        out.mkdir(parents=True, exist_ok=True)
        rep.write_heatmap(build_document(nats, run.collect(run.early), {}), early_png)

    run = MatrixRun(nats, args.repeat, args.jobs, progress=progress, on_idle=_preload_plotting,
                    on_outcomes=draw_heatmap)
    try:
        with _terminate_as_interrupt():
            try:
                run.run()
            finally:
                progress.close()
        t_run = time.monotonic() - t0
        meta = environment()
        meta.update(started=_iso(t_start), finished=_iso(time.time()),
                    configuration=configuration(run, n_labs),
                    timings_s={"run": round(t_run, 3),
                               "phases_max_over_labs": _phase_summary(run.labs),
                               "labs": run.labs})
        doc = build_document(nats, run.results, meta)
        paths = _write_outputs(doc, out, early_png)
    finally:
        early_png.unlink(missing_ok=True)
    color = (not args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    summary = _summary(doc, n_pairs, args.repeat, time.monotonic() - t0, run.labs, paths)
    if args.json:
        print(json.dumps(doc, indent=2))
        print(summary, file=sys.stderr)
    else:
        print(rep.format_table(doc, color=color))
        print(summary)
    return rep.exit_code(doc, args.strict)


def _write_outputs(doc: dict[str, Any], out: Path, early_png: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"results.{k}" for k in ("json", "csv", "html", "png")}
    rep.write_json(doc, paths["json"])
    rep.write_csv(doc, paths["csv"])
    rep.write_html(doc, paths["html"])
    if early_png.exists():
        os.replace(early_png, paths["png"])
    else:
        rep.write_heatmap(doc, paths["png"])
    return paths


def _summary(doc: dict[str, Any], n_pairs: int, repeats: int, wall: float,
             labs: list[dict[str, Any]], paths: dict[str, Path]) -> str:
    dis = rep.disagreements(doc)
    varies = [c for c in (rep.summarize_cell(c) for c in doc["cells"]) if c.varies]
    ph = _phase_summary(labs)
    lines = [
        f"{n_pairs} pairings x {repeats} repeat{'s' if repeats > 1 else ''} in {wall:.1f} s "
        f"({len(labs)} lab{'s' if len(labs) > 1 else ''}; slowest lab: build {ph['build']:.2f} s,"
        f" punch {ph['punch']:.2f} s, relay {ph['relay']:.2f} s, teardown "
        f"{ph['teardown']:.2f} s)",
        f"model: {len(dis)} disagreement{'s' if len(dis) != 1 else ''}"
        + (f"; {len(varies)} cell{'s' if len(varies) != 1 else ''} varied across repeats"
           if varies else ""),
        "results: " + ", ".join(str(p) for p in paths.values()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m testbed.matrix ...` = `nat-testbed matrix ...`."""
    from testbed.cli import main as cli_main

    return cli_main(["matrix", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
