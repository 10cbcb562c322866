"""Packet captures on both sides of the routers of a live lab.

    with Capture(lab, out_dir, routers=["router"]) as cap:
        ...traffic...
        cap.settle()
    cap.packets["router:wan"]  # parsed, in capture order

Each tapped interface gets its own `tcpdump -U -w` (one pcap per interface,
`<node>.<iface>.pcap`), started in the node's namespace; the capture counts as
started once tcpdump has said "listening on". Each tapped router also gets a
one-rule nft table that sets `nftrace` on every packet entering it, and an
`nft monitor trace` writing `<node>.nft-trace.txt`: the rule that accepted,
translated or dropped each packet.

Completeness is checked, not waited for: `settle()` returns once every pcap
holds as many packets as the kernel's counters say crossed its interface, and
every packet that entered a traced router has its trace.

`trace_pair` runs a whole pairing (testbed.pair) under capture and writes the
pcaps, the traces, the routers' crossings and a sequence diagram (text and
HTML) into a directory.
"""

from __future__ import annotations

import contextlib
import json
import select
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from testbed.errors import LabError

if TYPE_CHECKING:
    from testbed.lab import Lab
    from testbed.narrate import Trace
    from testbed.nat import NatSpec

READY_TIMEOUT_S = 5.0
SETTLE_TIMEOUT_S = 3.0
POLL_S = 0.002
TRACE_TABLE = "nattestbed_trace"
TRACE_RULESET = f"""table ip {TRACE_TABLE} {{
	# Marks every packet entering this router for `nft monitor trace` (verdicts only:
	# the router's own table nattestbed decides what happens to it).
	chain trace {{
		type filter hook prerouting priority -400; policy accept;
		meta nftrace set 1
	}}
}}
"""
NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
META_FILE = "capture.json"
PCAP_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD = struct.Struct("<IIII")
PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Packet:
    """One captured frame, as plain data. `direction` is relative to the tapped
    interface: "in" arrived on it, "out" was sent by it (from its own MAC)."""

    tap: str  # "<node>:<iface>"
    index: int  # position in its pcap
    time: float  # capture timestamp, seconds since the epoch
    direction: str  # "in" | "out"
    eth_src: str  # who put it on the link (a MAC of the lab: Captured.owners names it)
    eth_dst: str
    proto: str  # "udp" | "tcp" | "icmp" | "igmp" | "arp" | "ip" (other IPv4) | "other"
    src: str = ""
    dst: str = ""
    sport: int = 0
    dport: int = 0
    ip_id: int = 0
    ttl: int = 0
    length: int = 0  # IP total length
    payload: bytes = b""
    tcp_flags: str = ""
    seq: int = 0
    ack: int = 0
    icmp: tuple[int, int] | None = None  # (type, code)
    quoted: tuple[str, int, str, int] | None = None  # ICMP error: the packet it refers to

    @property
    def is_ip(self) -> bool:
        return self.proto in ("udp", "tcp", "icmp", "igmp", "ip")

    @property
    def routed(self) -> bool:
        """A packet a router forwards (not link-local noise such as IGMP or ARP)."""
        return self.proto in ("udp", "tcp", "icmp")

    @property
    def has_ports(self) -> bool:
        return self.proto in ("udp", "tcp")

    @property
    def src_ep(self) -> str:
        return f"{self.src}:{self.sport}" if self.has_ports else self.src

    @property
    def dst_ep(self) -> str:
        return f"{self.dst}:{self.dport}" if self.has_ports else self.dst

    @property
    def flow(self) -> str:
        return f"{self.src_ep} -> {self.dst_ep}"

    @property
    def node(self) -> str:
        return self.tap.split(":", 1)[0]

    @property
    def iface(self) -> str:
        return self.tap.split(":", 1)[1]


def tap_label(node: str, iface: str) -> str:
    return f"{node}:{iface}"


def pcap_name(tap: str) -> str:
    node, iface = tap.split(":", 1)
    return f"{node}.{iface}.pcap"


def trace_name(node: str) -> str:
    return f"{node}.nft-trace.txt"


# --------------------------------------------------------------------------- pcap


class PcapTail:
    """Reads the records a running tcpdump -U has written so far (and later ones)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.scale = 1e-6
        self._fh: Any = None

    def read(self) -> list[tuple[float, bytes]]:
        if self._fh is None:
            if not self.path.exists():
                return []
            self._fh = self.path.open("rb")
        out: list[tuple[float, bytes]] = []
        if self.offset == 0:
            head = self._fh.read(PCAP_HEADER.size)
            if len(head) < PCAP_HEADER.size:
                self._fh.seek(0)
                return out
            magic = PCAP_HEADER.unpack(head)[0]
            if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                raise ValueError(f"{self.path}: not a little-endian pcap file "
                                 f"(magic 0x{magic:08x})")
            self.scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
            self.offset = PCAP_HEADER.size
        while True:
            self._fh.seek(self.offset)
            rec = self._fh.read(PCAP_RECORD.size)
            if len(rec) < PCAP_RECORD.size:
                return out
            sec, frac, caplen, _ = PCAP_RECORD.unpack(rec)
            data = self._fh.read(caplen)
            if len(data) < caplen:
                return out  # tcpdump is still writing this record
            out.append((sec + frac * self.scale, data))
            self.offset += PCAP_RECORD.size + caplen

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def parse_frame(data: bytes, *, tap: str, index: int, ts: float, own_mac: str) -> Packet:
    """An Ethernet frame (scapy dissects it) as a Packet record."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.l2 import ARP, Ether

    eth = Ether(data)
    src, dst = str(eth.src).lower(), str(eth.dst).lower()
    base: dict[str, Any] = {"tap": tap, "index": index, "time": ts, "eth_src": src,
                            "eth_dst": dst, "direction": "out" if src == own_mac.lower() else "in"}
    if ARP in eth:
        arp = eth[ARP]
        return Packet(proto="arp", src=str(arp.psrc), dst=str(arp.pdst),
                      payload=b"who-has" if arp.op == 1 else b"is-at", **base)
    if IP not in eth:
        return Packet(proto="other", **base)
    ip = eth[IP]
    base |= {"src": str(ip.src), "dst": str(ip.dst), "ip_id": int(ip.id), "ttl": int(ip.ttl),
             "length": int(ip.len)}
    if UDP in ip and not isinstance(ip[UDP], UDPerror):
        udp = ip[UDP]
        return Packet(proto="udp", sport=int(udp.sport), dport=int(udp.dport),
                      payload=bytes(udp.payload), **base)
    if TCP in ip and not isinstance(ip[TCP], TCPerror):
        tcp = ip[TCP]
        return Packet(proto="tcp", sport=int(tcp.sport), dport=int(tcp.dport),
                      payload=bytes(tcp.payload), tcp_flags=str(tcp.flags), seq=int(tcp.seq),
                      ack=int(tcp.ack), **base)
    if ICMP in ip:
        icmp = ip[ICMP]
        quoted = None
        if IPerror in icmp:
            inner = icmp[IPerror]
            l4 = inner.payload
            ports = (int(getattr(l4, "sport", 0)), int(getattr(l4, "dport", 0)))
            quoted = (str(inner.src), ports[0], str(inner.dst), ports[1])
        return Packet(proto="icmp", icmp=(int(icmp.type), int(icmp.code)), quoted=quoted,
                      payload=bytes(icmp.payload), **base)
    return Packet(proto="igmp" if ip.proto == 2 else "ip", payload=bytes(ip.payload), **base)


def _load_dissectors() -> None:
    import scapy.layers.inet  # noqa: F401
    import scapy.layers.l2  # noqa: F401


def read_pcap(path: Path, tap: str, own_mac: str) -> tuple[Packet, ...]:
    """Every frame of a pcap file as Packet records."""
    tail = PcapTail(path)
    try:
        return tuple(parse_frame(d, tap=tap, index=i, ts=t, own_mac=own_mac)
                     for i, (t, d) in enumerate(tail.read()))
    finally:
        tail.close()


# --------------------------------------------------------------------------- capture


@dataclass
class _Tap:
    label: str
    node: str
    iface: str
    ifindex: int
    mac: str
    path: Path
    proc: subprocess.Popen[Any] | None = None
    tail: PcapTail | None = None
    base: int = 0  # rx + tx packets when the capture started
    packets: list[Packet] = field(default_factory=list)


@dataclass
class _Tracer:
    node: str
    path: Path
    proc: subprocess.Popen[Any] | None = None
    text: str = ""  # complete lines written so far
    _parsed: list[Trace] = field(default_factory=list)
    _parsed_len: int = -1

    def traces(self) -> list[Trace]:
        from testbed.narrate import parse_trace

        if self._parsed_len != len(self.text):
            self._parsed, self._parsed_len = parse_trace(self.text), len(self.text)
        return self._parsed


@dataclass(frozen=True)
class Captured:
    """What a finished capture holds: packets per tap, traces per router."""

    out_dir: Path
    packets: Mapping[str, tuple[Packet, ...]]
    traces: Mapping[str, tuple[Trace, ...]]
    owners: Mapping[str, str]  # MAC -> node, for every interface of the lab
    complete: bool  # every pcap caught up with its interface counters, every trace in

    def of(self, node: str) -> dict[str, tuple[Packet, ...]]:
        """The taps of one node, by interface name."""
        return {t.split(":", 1)[1]: p for t, p in self.packets.items()
                if t.split(":", 1)[0] == node}


class Capture:
    """tcpdump on every interface of `routers` (and any extra `taps`), plus nft traces."""

    def __init__(self, lab: Lab, out_dir: str | Path, *, routers: Iterable[str] = (),
                 taps: Iterable[tuple[str, str]] = (), trace: bool = True) -> None:
        self.lab = lab
        self.out_dir = Path(out_dir).resolve()
        self.routers = list(dict.fromkeys(routers))
        wanted = [(r, i.name) for r in self.routers for i in lab.node(r).interfaces]
        wanted += [t for t in taps if t not in wanted]
        self.taps: dict[str, _Tap] = {}
        for node, iface in wanted:
            label = tap_label(node, iface)
            self.taps[label] = _Tap(label, node, iface, 0, "", self.out_dir / pcap_name(label))
        self.tracers = {r: _Tracer(r, self.out_dir / trace_name(r)) for r in self.routers} \
            if trace else {}
        self.owners: dict[str, str] = {}
        self.complete = False
        self._running = False

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.stop()
        else:
            self._kill()

    def start(self) -> Capture:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.owners = self._owners()
            for t in self.taps.values():
                self._locate(t)
                t.path.unlink(missing_ok=True)
                t.proc = self.lab.popen(t.node, [
                    "tcpdump", "-i", t.iface, "-U", "-w", str(t.path), "-n", "-s", "0",
                    "--immediate-mode", "-Z", "root"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for r in self.tracers.values():
                self.lab.run(r.node, ["nft", "-f", "-"], input=TRACE_RULESET)
                with r.path.open("w") as out:
                    r.proc = self.lab.popen(r.node, ["nft", "monitor", "trace"], stdout=out,
                                            stderr=subprocess.STDOUT)
            _load_dissectors()  # while the capturers start: scapy takes a while to import
            for t in self.taps.values():
                self._wait_listening(t)
            for r in self.tracers.values():
                self._wait_subscribed(r)
            for t in self.taps.values():
                t.base = self._counter(t)
                t.tail = PcapTail(t.path)
            self._running = True
            self._write_meta()
        except BaseException:
            self._kill()
            raise
        return self

    def stop(self) -> Captured:
        """Wait until everything the kernel saw is written, then stop the capturers."""
        if self._running:
            self.complete = self.settle()
            for t in self.taps.values():
                self._terminate(t.proc)
            for r in self.tracers.values():
                self._terminate(r.proc)
                with contextlib.suppress(LabError):
                    self.lab.run(r.node, ["nft", "delete", "table", "ip", TRACE_TABLE])
            self._poll()  # the last records tcpdump flushed on its way out
            for t in self.taps.values():
                if t.tail is not None:
                    t.tail.close()
            self._running = False
            self._write_meta()
        return self.result()

    def _kill(self) -> None:
        for p in [t.proc for t in self.taps.values()] + [r.proc for r in self.tracers.values()]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        self._running = False

    @staticmethod
    def _terminate(proc: subprocess.Popen[Any] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    # ------------------------------------------------------------ readiness

    def _ipr(self, node: str) -> Any:
        """The node's netlink socket; opens the namespace if this process did not build it."""
        self.lab._fd(node)
        return self.lab.ns[node].ipr

    def _locate(self, t: _Tap) -> None:
        ipr = self._ipr(t.node)
        found = ipr.link_lookup(ifname=t.iface)
        if not found:
            raise LabError(f"lab {self.lab.name}: {t.node} has no interface {t.iface}")
        t.ifindex = found[0]
        t.mac = str(ipr.get_links(t.ifindex)[0].get_attr("IFLA_ADDRESS"))

    def _owners(self) -> dict[str, str]:
        out = {}
        for node in self.lab.topo.nodes:
            for link in self._ipr(node.name).get_links():
                mac = link.get_attr("IFLA_ADDRESS")
                if link.get_attr("IFLA_IFNAME") != "lo" and mac:
                    out[str(mac).lower()] = node.name
        return out

    def _wait_listening(self, t: _Tap) -> None:
        """tcpdump says "listening on IFACE" once its capture handle is active."""
        assert t.proc is not None and t.proc.stderr is not None
        ready, _, _ = select.select([t.proc.stderr], [], [], READY_TIMEOUT_S)
        line = t.proc.stderr.readline().decode(errors="replace") if ready else ""
        if "listening on" not in line:
            self._terminate(t.proc)
            raise LabError(f"lab {self.lab.name}: tcpdump on {t.label} did not start: "
                           f"{line.strip() or f'nothing said in {READY_TIMEOUT_S}s'}")

    def _wait_subscribed(self, r: _Tracer) -> None:
        """nft monitor has joined the netfilter trace multicast group (from /proc)."""
        assert r.proc is not None
        bit = 1 << (NFNLGRP_NFTRACE - 1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if r.proc.poll() is not None:
                raise LabError(f"lab {self.lab.name}: nft monitor trace in {r.node} exited: "
                               f"{r.path.read_text().strip()}")
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{r.proc.pid}/net/netlink").read_text().splitlines()[1:]:
                    cols = line.split()
                    if (int(cols[1]) == NETLINK_NETFILTER and int(cols[2]) == r.proc.pid
                            and int(cols[3], 16) & bit):
                        return
            time.sleep(POLL_S)
        raise LabError(f"lab {self.lab.name}: nft monitor trace in {r.node} not subscribed "
                       f"after {READY_TIMEOUT_S}s")

    def _counter(self, t: _Tap) -> int:
        link = self._ipr(t.node).get_links(t.ifindex)[0]
        stats = link.get_attr("IFLA_STATS64")
        return int(stats["rx_packets"]) + int(stats["tx_packets"])

    # ------------------------------------------------------------ reading

    def _poll(self) -> None:
        for t in self.taps.values():
            if t.tail is None:
                continue
            for ts, data in t.tail.read():
                t.packets.append(parse_frame(data, tap=t.label, index=len(t.packets), ts=ts,
                                             own_mac=t.mac))
        for r in self.tracers.values():
            with contextlib.suppress(OSError):
                text = r.path.read_text(errors="replace")
                r.text = text[:text.rfind("\n") + 1]  # a line nft is still writing waits

    def _traced_ingress(self, r: _Tracer) -> dict[str, int]:
        counts: dict[str, int] = {}
        for tr in r.traces():
            if tr.proto in ("udp", "tcp", "icmp"):
                counts[tr.iif] = counts.get(tr.iif, 0) + 1
        return counts

    def _caught_up(self) -> bool:
        for t in self.taps.values():
            if len(t.packets) < self._counter(t) - t.base:
                return False
        for r in self.tracers.values():
            traced = self._traced_ingress(r)
            for t in self.taps.values():
                if t.node != r.node:
                    continue
                arrived = sum(1 for p in t.packets if p.direction == "in" and p.routed)
                if traced.get(t.iface, 0) < arrived:
                    return False
        return True

    def settle(self, timeout: float = SETTLE_TIMEOUT_S) -> bool:
        """Wait until the pcaps and traces hold everything the kernel has counted so far."""
        deadline = time.monotonic() + timeout
        while True:
            self._poll()
            if self._caught_up():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)

    def wait_verdict(self, router: str, match: Any, timeout: float = 2.0) -> Trace | None:
        """The first finished trace in `router` for which match(trace) is true."""
        deadline = time.monotonic() + timeout
        while True:
            self._poll()
            for tr in self.tracers[router].traces():
                if tr.verdict is not None and match(tr):
                    return tr
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)

    def counts(self) -> dict[str, int]:
        self._poll()
        return {label: len(t.packets) for label, t in self.taps.items()}

    def result(self) -> Captured:
        self._poll()
        return Captured(out_dir=self.out_dir,
                        packets={k: tuple(t.packets) for k, t in self.taps.items()},
                        traces={n: tuple(r.traces()) for n, r in self.tracers.items()},
                        owners=dict(self.owners),
                        complete=self.complete)

    def _write_meta(self) -> None:
        meta = {"lab": self.lab.name, "topology": self.lab.topo.source,
                "taps": {k: {"pcap": t.path.name, "mac": t.mac, "ifindex": t.ifindex}
                         for k, t in self.taps.items()},
                "traces": {n: r.path.name for n, r in self.tracers.items()},
                "owners": self.owners, "complete": self.complete}
        (self.out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def load_capture(out_dir: str | Path) -> Captured:
    """Re-read a finished capture directory (pcaps, traces, capture.json)."""
    from testbed.narrate import parse_trace

    d = Path(out_dir)
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"{d / META_FILE}: cannot read capture metadata: {exc}") from None
    packets = {tap: read_pcap(d / info["pcap"], tap, info["mac"])
               for tap, info in meta["taps"].items()}
    traces = {node: tuple(parse_trace((d / name).read_text(errors="replace")))
              for node, name in meta.get("traces", {}).items()}
    return Captured(d, packets, traces, dict(meta.get("owners", {})), bool(meta.get("complete")))


# --------------------------------------------------------------------------- pairing


def pair_lanes(lab: Lab) -> list[str]:
    """Columns of a pairing's sequence diagram: Alice's side, the servers, Bob's side."""
    servers = [n.name for n in lab.topo.nodes if n.kind == "server"]
    return ["alice", "home-a", *servers, "home-b", "bob"]


def trace_pair(nat_a: NatSpec, nat_b: NatSpec, out_dir: str | Path, *, keep: bool = False,
               timing: Any = None, topology: Any = None,
               lab_name: str | None = None) -> dict[str, Any]:
    """`run_pair` with both sides of both routers captured; writes into out_dir:
    <router>.<iface>.pcap, <router>.nft-trace.txt, crossings.txt, sequence.txt,
    sequence.html and capture.json. Returns run_pair's result plus a "trace" entry."""
    from peers.session import Timing
    from testbed import narrate, seqdiag
    from testbed.pair import combine, pair_lab, relay_usage, run_peers

    out = Path(out_dir).resolve()
    timing = timing or Timing()
    t0 = time.monotonic()
    with pair_lab(nat_a, nat_b, keep=keep, topology=topology, lab_name=lab_name) as lab:
        with Capture(lab, out, routers=["home-a", "home-b"]) as cap:
            peers = run_peers(lab, timing)
            usage = relay_usage(lab)
        captured = cap.result()
        names = narrate.address_book(lab.topo)
        lanes = pair_lanes(lab)
    routers = {r: lab.node(r).upstream or "" for r in ("home-a", "home-b")}
    crossings = narrate.all_crossings(captured, routers)
    arrows = seqdiag.arrows(captured, crossings, names)
    title = f"{nat_a.label} (alice) x {nat_b.label} (bob)"
    (out / "crossings.txt").write_text(narrate.format_crossings(crossings, names) + "\n")
    (out / "sequence.txt").write_text(seqdiag.render_text(lanes, arrows, title=title) + "\n")
    (out / "sequence.html").write_text(seqdiag.render_html(lanes, arrows, title=title))
    result = combine(nat_a.label, nat_b.label, peers, usage, lab=lab.name, kept=keep,
                     elapsed_ms=round((time.monotonic() - t0) * 1000, 1))
    result["trace"] = {
        "dir": str(out), "complete": captured.complete,
        "pcaps": {tap: pcap_name(tap) for tap in captured.packets},
        "packets": {tap: len(p) for tap, p in captured.packets.items()},
        "dropped": [narrate.crossing_json(c) for c in crossings if c.verdict == "dropped"],
        "files": ["crossings.txt", "sequence.txt", "sequence.html", META_FILE],
    }
    return result


def format_trace(result: dict[str, Any], *, diagram: bool = True) -> str:
    """What `pair --trace` adds to format_pair: the terminal sequence diagram, the drops
    and where the files are."""
    tr = result.get("trace")
    if not tr:
        return ""
    d = Path(tr["dir"])
    lines = []
    if diagram and (d / "sequence.txt").exists():
        lines.append((d / "sequence.txt").read_text().rstrip())
    counts: dict[tuple[str, str, str, str], int] = {}
    for c in tr["dropped"]:  # retransmitted probes: one line each, with a count
        key = (c["router"], c["what"], c["arrived"], c["rule"] or "")
        counts[key] = counts.get(key, 0) + 1
    for (router, what, flow, rule), n in counts.items():
        lines.append(f"dropped at {router}: {what} {flow}" + (f" x{n}" if n > 1 else "")
                     + (f" ({rule})" if rule else ""))
    pcaps = " ".join(tr["pcaps"].values())
    lines.append(f"trace: {d}/ {pcaps} sequence.html crossings.txt"
                 + ("" if tr["complete"] else " (warning: a capture was incomplete)"))
    return "\n".join(lines)
