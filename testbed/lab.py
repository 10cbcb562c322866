"""A live lab: one owner of everything a deployed topology created.

    with Lab(load_topology("topologies/home-pair.yaml")) as lab:
        lab.run("alice", ["ping", "-c1", "203.0.113.3"]).returncode

Every namespace is named "<lab>-<node>" (or "<lab>-<network>" for the bridge
of a LAN segment) and marked as the lab's; the list of what will be created is
written to the state file before it is created, so a crash at any point
leaves nothing that `nat-testbed clean` cannot find.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed import hostlimits, impair, netns, nlbatch, portmap, rootless, services, state
from testbed.errors import CommandError, LabError, LabNameError
from testbed.netns import Netns
from testbed.ruleset import NFT_TABLE, RouterContext, apply_nat, load_ruleset
from testbed.topology import Node, Segment, Topology
from testbed.topospec import hub_port

LAB_NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
READY_TIMEOUT_S = 5.0  # links up: this, plus READY_PER_VETH_S for each veth of the lab
READY_PER_VETH_S = 0.005
BRIDGE, BRIDGE_INDEX = "br0", 2
HUB_PORT_BASE = 3  # a bridge namespace's ports: p0 is index 3, p1 is 4, ...
CREATED_BASE, FAR_END_BASE = 1000, 2000  # a node's k-th interface: 1000+k, or 2000+k
PORTMAP_THREADS = 8  # port-mapping daemons started at once (each mostly waits for STUN)
BASE_SYSCTLS = {
    # No IPv6: no router solicitations or DAD noise in a student's packet trace.
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
}


def new_lab_name() -> str:
    """A short unique prefix: 'nt' + 4 random characters (namespace and state names)."""
    while True:
        name = "nt" + "".join(secrets.choice(LAB_NAME_ALPHABET) for _ in range(4))
        if not name_taken(name):
            return name


def name_taken(lab: str) -> list[str]:
    """What stands in the way of a new lab LAB: its state file, or namespaces named
    "LAB-..." (a lab whose state is gone, or anyone else's)."""
    taken = [str(state.state_path(lab))] if state.state_path(lab).exists() else []
    return taken + [n for n in netns.listed() if n.startswith(f"{lab}-")]


def check_names(lab: str, keys: Sequence[str]) -> None:
    """The lab's name, and each namespace name "LAB-KEY" as a file name under /run/netns."""
    state.check_name(lab)
    for key in keys:
        if len(f"{lab}-{key}") > netns.NAME_MAX:
            raise LabNameError(f"lab {lab}: namespace name {lab}-{key[:20]}... is longer than "
                               f"{netns.NAME_MAX} characters (a file name under {netns.NETNS_DIR})")


def privilege_problem() -> str | None:
    """Why this process could not build labs, or None: root, or an ordinary user where
    unprivileged user namespaces work (testbed.rootless). Changes nothing."""
    return rootless.problem()


def require_root() -> None:
    """Be root over the labs: root already, or an ordinary user entering their rootless
    session (testbed.rootless.enter); PrivilegeError (exit 3) says why not."""
    rootless.enter()


class Lab:
    """Builds a topology on the kernel and undoes exactly what it built."""

    def __init__(self, topo: Topology, name: str | None = None, *,
                 start_services: bool = True,
                 labels: Mapping[str, str] | None = None) -> None:
        self.topo = topo
        # Who the lab belongs to beyond its owner process (a pool run, say): recorded in
        # the state, so a clean-up can pick exactly its labs, never by name pattern.
        self.labels = dict(labels or {})
        self.name = name or new_lab_name()
        check_names(self.name, self._keys())
        self.start_services = start_services
        self.ns: dict[str, Netns] = {}  # node or bridged segment -> live namespace
        self.procs: list[subprocess.Popen[Any]] = []
        self.ifindex: dict[tuple[str, str], int] = {}
        self.services: dict[str, Any] = {}
        self._lock = state.LabLock(self.name)
        self._state: dict[str, Any] = {}
        self._state_lock = threading.Lock()  # popen from several threads rewrites the state
        self._claimed = False  # the state file is ours: down() removes the lab

    def _keys(self) -> list[str]:
        """Every namespace's key: a node's name, or a bridged segment's."""
        return [n.name for n in self.topo.nodes] + [s.name for s in self.topo.bridges]

    # ------------------------------------------------------------ naming

    def netns(self, key: str) -> str:
        """Namespace name of a node (or of a LAN segment's bridge)."""
        return f"{self.name}-{key}"

    def addr(self, node: str, iface: str | None = None) -> str:
        n = self.topo.node(node)
        return str((n.iface(iface) if iface else n.interfaces[0]).address.ip)

    def node(self, name: str) -> Node:
        return self.topo.node(name)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> Lab:
        require_root()
        netns.raise_fd_limit()
        netns.ensure_netns_dir()
        if not self._lock.acquire():
            raise LabError(f"lab {self.name} is in use by another process "
                           "(nat-testbed status shows it)")
        try:
            self._claim_names()
        except BaseException:
            if self._claimed:  # interrupted while writing its first state: remove it
                self.down()
            else:  # refused: the existing lab stays exactly as it was
                self._lock.release()
            raise
        try:
            self._build()
            self._state["status"] = "running"
            state.write_state(self.name, self._state)
        except BaseException:
            self.down()
            raise
        return self

    def _claim_names(self) -> None:
        taken = name_taken(self.name)
        if taken:
            raise LabError(f"lab {self.name} already exists ({', '.join(taken[:3])}"
                           f"{', ...' if len(taken) > 3 else ''}; see nat-testbed status)")
        # The name is ours from here: a Ctrl-C in the first write below (its LAB.tmp made,
        # not yet renamed) leaves files that down() removes, the lock file last.
        self._claimed = True
        self._state = {
            "lab": self.name, "topology": self.topo.source, "name": self.topo.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(), "owner": state.me(), "status": "building",
            "namespaces": [self.netns(k) for k in self._keys()],
            "nodes": {n.name: self.netns(n.name) for n in self.topo.nodes},
            "nat": {n.name: n.nat.label for n in self.topo.nodes if n.nat},  # for `status`
            "bridges": {s.name: self.netns(s.name) for s in self.topo.bridges},
            "processes": [],
        }
        if self.labels:
            self._state["labels"] = self.labels
        state.write_state(self.name, self._state)  # before anything exists: kill -9 safe

    def detach(self) -> None:
        """Leave the lab running for other processes (`nat-testbed up`, --keep): recorded
        as "detached" in one atomic write, so bare `clean` keeps it; a kill before that
        write leaves it "running" with its owner gone, which `clean` removes."""
        self._close_sockets()
        if self._claimed and self._lock.held:
            self._state.update(status="detached", owner=None)
            state.write_state(self.name, self._state)
        self._lock.release()

    def down(self) -> state.Teardown:
        if not self._claimed:  # nothing of ours exists (a refused up): touch nothing
            self._lock.release()
            return state.Teardown(self.name)
        if not self._lock.held and not self._lock.acquire():  # detached, then taken over
            raise LabError(f"lab {self.name} is in use by another process")
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        self._close_sockets()
        result = state.teardown(self.name, self._state.get("namespaces", []),
                                self._state.get("processes", []))
        for p in self.procs:
            try:
                p.wait(timeout=state.KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        self._claimed = False
        self._lock.release()
        return result

    def _close_sockets(self) -> None:
        for ns in self.ns.values():
            ns.close()
        self.ns.clear()

    # ------------------------------------------------------------ building

    def _build(self) -> None:
        keys = [n.name for n in self.topo.nodes] + [s.name for s in self.topo.bridges]
        hostlimits.check_lab(self.name, len(keys))
        for key in keys:
            try:
                self.ns[key] = netns.create(self.netns(key), self.name)
            except OSError as exc:  # a limit of the machine: name it in one line
                raise hostlimits.explain(self.name, exc, self.netns(key)) from None
        self._assign_ifindexes()
        for node in self.topo.nodes:
            self._sysctls(node)
        for seg in self.topo.bridges:  # keeps IPv6 and MLD noise out of students' pcaps
            for key, value in BASE_SYSCTLS.items():
                netns.write_sysctl(self.ns[seg.name].fd, key, value)
        # Two batches per namespace: links first (a veth's far end must exist before
        # another namespace addresses it), then bridge ports, addresses and routes.
        links = {k: ns.batch() for k, ns in self.ns.items()}
        for seg in self.topo.bridges:
            links[seg.name].bridge(BRIDGE, BRIDGE_INDEX)
        for seg in self.topo.segments:
            self._wire(seg, links)
        self._send(links)
        rest = {k: ns.batch() for k, ns in self.ns.items()}
        for seg in self.topo.bridges:
            for port in range(len(seg.members)):
                rest[seg.name].set_link(HUB_PORT_BASE + port, master=BRIDGE_INDEX)
        for node in self.topo.nodes:
            self._addresses_and_routes(node, rest[node.name])
        self._send(rest)
        self._wait_ready()
        for node in self.topo.nodes:
            if node.nat is not None:
                self.apply_nat(node)
        if self.topo.conditions:
            self.apply_conditions()
        if self.start_services:
            self.start_servers()
            self.start_port_mapping()

    def _send(self, batches: dict[str, nlbatch.Batch]) -> None:
        for key, batch in batches.items():
            try:
                batch.send()
            except nlbatch.NetlinkError as exc:
                raise LabError(f"{self.netns(key)}: {exc.strerror}") from None

    def _assign_ifindexes(self) -> None:
        """Every interface's index is chosen, so no request has to look one up. The two
        ends of a veth never share an index: the kernel then treats its carrier change as
        urgent and activates the queue at once, not within linkwatch's 1 s batching."""
        for seg in self.topo.segments:
            for pos, (node, ifname) in enumerate(seg.members):
                names = [i.name for i in self.topo.node(node).interfaces]
                base = FAR_END_BASE if (not seg.bridged and pos == 1) else CREATED_BASE
                self.ifindex[(node, ifname)] = base + names.index(ifname)

    def _sysctls(self, node: Node) -> None:
        fd = self.ns[node.name].fd
        values = dict(BASE_SYSCTLS)
        if node.forwards:
            values["net.ipv4.ip_forward"] = "1"  # only ever inside a router's namespace
        for key, value in values.items():
            netns.write_sysctl(fd, key, value)

    def _wire(self, seg: Segment, batches: dict[str, nlbatch.Batch]) -> None:
        if not seg.bridged:
            (a, ifa), (b, ifb) = seg.members
            batches[a].veth(ifa, self.ifindex[(a, ifa)], ifb, self.ifindex[(b, ifb)],
                            self.ns[b].fd)
            return
        hub = self.ns[seg.name]
        for port, (node, ifname) in enumerate(seg.members):
            batches[node].veth(ifname, self.ifindex[(node, ifname)], hub_port(port),
                               HUB_PORT_BASE + port, hub.fd)

    def _addresses_and_routes(self, node: Node, batch: nlbatch.Batch) -> None:
        for iface in node.interfaces:
            index = self.ifindex[(node.name, iface.name)]
            if index >= FAR_END_BASE:
                batch.set_link(index, up=True)
            for a in iface.addresses:
                batch.address(self.ifindex[(node.name, iface.name)], a.ip, a.network.prefixlen)
        for r in node.routes:
            batch.route(r.dest, r.via)

    def _wait_ready(self) -> None:
        """Wait until every veth is operationally up (the kernel activates its queue then).
        The kernel brings carriers up one by one, so the deadline grows with the veths."""
        veths = sum(len(s.members) if s.bridged else 1 for s in self.topo.segments)
        timeout = READY_TIMEOUT_S + READY_PER_VETH_S * veths
        deadline = time.monotonic() + timeout
        pending = list(self.ns)
        while pending:
            pending = [k for k in pending if not nlbatch.veths_up(self.ns[k].sock)]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(self.netns(k) for k in pending[:3])
                more = f" and {len(pending) - 3} more" if len(pending) > 3 else ""
                raise LabError(f"lab {self.name}: links not up after {timeout:.1f}s "
                               f"({veths} veths) in {len(pending)} namespaces: {names}{more}")
            time.sleep(0.001)

    # ------------------------------------------------------------ NAT

    def router_context(self, node: Node) -> RouterContext:
        assert node.upstream is not None
        wan = node.iface(node.upstream)
        lans = [i for i in node.interfaces if i.name != node.upstream]
        subnets = {i.name: str(i.address.network) for i in lans}
        assert node.nat is not None
        forwards = tuple((f.proto, f.external, str(self.topo.node(f.host).interfaces[0].address.ip),
                          f.port) for f in node.nat.forwards)
        stun = next((n for n in self.topo.nodes if n.service == "stun"), None)
        stun_addrs = tuple(str(a.ip) for a in stun.interfaces[0].addresses) \
            if stun is not None and node.nat.port_mapping else ()
        return RouterContext(table=NFT_TABLE, wan_if=wan.name, wan_addr=str(wan.address.ip),
                             lan_ifs=tuple(i.name for i in lans),
                             lan_subnets=tuple(subnets.values()), forwards=forwards,
                             stun_addrs=stun_addrs,
                             pool=tuple(str(a.ip) for a in wan.addresses))

    def apply_nat(self, node: Node) -> None:
        assert node.nat is not None
        apply_nat(self.namespace(node.name).fd, node.nat, self.router_context(node),
                  self.netns(node.name))

    # ------------------------------------------------------------ conditions

    def apply_conditions(self, mechanism: str = "auto") -> list[impair.Impairment]:
        """The topology's link conditions (one forwarder for all the directions that need
        one); the mechanism is chosen for this kernel and recorded in the state."""
        items = {(c.node, c.iface): c.conditions for c in self.topo.conditions}
        return impair.apply_many(self, items, mechanism=mechanism)

    # ------------------------------------------------------------ services

    def start_servers(self, *, parallel: bool = False) -> None:
        """The STUN, TURN and signaling servers of nodes with `service:`, recorded in the
        state so `status` and other processes find them."""
        started = services.start_services(self, [n for n in self.topo.nodes if n.service],
                                          parallel=parallel)
        self.services.update(started)
        if self.services:
            with self._state_lock:
                self._state["services"] = {k: services.public(v)
                                           for k, v in self.services.items()}
                state.write_state(self.name, self._state)

    def start_port_mapping(self) -> None:
        """The port-mapping daemon (miniupnpd, testbed.portmap) of every router whose nat
        asks for one, once the STUN server it checks its address with is up."""
        routers = [n for n in self.topo.nodes if n.nat is not None and n.nat.port_mapping]
        if not routers:
            return
        with ThreadPoolExecutor(min(PORTMAP_THREADS, len(routers))) as pool:
            infos = list(pool.map(self._start_daemon, routers))  # each waits for its STUN
        with self._state_lock:
            self.services["port_mapping"] = {i["node"]: i for i in infos}
            self._state["services"] = self.services
            state.write_state(self.name, self._state)

    def _start_daemon(self, node: Node) -> dict[str, Any]:
        cfg = portmap.daemon_config(self.topo, node, self.name)
        d = self.workdir()
        conf, log = d / f"portmap-{node.name}.conf", d / f"portmap-{node.name}.log"
        conf.write_text(portmap.render_config(cfg))
        where = self.netns(node.name)
        load_ruleset(self.namespace(node.name).fd, portmap.render_table(), where)
        with log.open("w") as out:
            proc = self.popen(node.name, portmap.argv(conf, d / f"portmap-{node.name}.pid"),
                              stdout=out, stderr=out, start_new_session=True)
        portmap.wait_ready(log, lambda: proc.poll() is None, where, "upnp" in cfg.protocols)
        return {"node": node.name, "daemon": portmap.DAEMON, "protocols": list(cfg.protocols),
                "gateway": str(node.iface(cfg.lan_ifs[0]).address.ip), "config": str(conf),
                "log": str(log), "quota": portmap.quota_ranges(cfg)}

    def workdir(self) -> Path:
        """The lab's folder under the state directory: server logs, peer results."""
        d = state.lab_dir(self.name)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ------------------------------------------------------------ processes

    def namespace(self, key: str) -> Netns:
        """The live namespace of a node (or bridge); opened if another process built it."""
        if key not in self.ns:
            self.ns[key] = netns.open_existing(self.netns(key))
        return self.ns[key]

    def run(self, node: str, argv: Sequence[str], *, check: bool = False,
            input: str | None = None, timeout: float | None = None,
            capture_output: bool = True, text: bool = True,
            **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run(argv) inside a node's namespace: waits, returns the completed
        process; with check=True a non-zero exit raises CommandError (a
        CalledProcessError). Output is captured as text unless asked otherwise."""
        fd = self.namespace(node).fd
        proc = subprocess.run(list(argv), input=input, timeout=timeout,
                              capture_output=capture_output, text=text,
                              preexec_fn=lambda: netns.preexec(fd), **kw)
        if check and proc.returncode != 0:
            raise CommandError(self.netns(node), argv, proc.returncode, proc.stdout,
                               proc.stderr)
        return proc

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a program in a node's namespace; it is stopped when the lab goes down."""
        fd = self.namespace(node).fd
        proc = subprocess.Popen(list(argv), preexec_fn=lambda: netns.preexec(fd), **kw)
        with self._state_lock:
            self.procs.append(proc)
            self._state.setdefault("processes", []).append(
                {"pid": proc.pid, "start": state.proc_start(proc.pid), "node": node,
                 "argv": list(argv)[:6]})
            state.write_state(self.name, self._state)
        return proc

    def python(self, node: str, module: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start `python -m MODULE ARGS` in a node with this interpreter, isolated (-I) so
        that it imports the installed package (peers.*), whatever the current directory."""
        return self.popen(node, [sys.executable, "-I", "-u", "-m", module, *args], **kw)
