"""Packet captures on both sides of the routers of a live lab.

    with Capture(lab, out_dir, routers=["router"]) as cap:
        ...traffic...
        cap.settle()
    cap.result().packets["router:wan"]  # parsed, in capture order

Each tapped interface gets its own `tcpdump -U -w` (one pcap per interface,
`<node>.<iface>.pcap`), started in the node's namespace; the capture counts as
started once tcpdump has said "listening on". Each tapped router also gets a
one-rule nft table that sets `nftrace` on every packet entering it, and an
`nft monitor trace` writing `<node>.nft-trace.txt`: the rule that accepted,
translated or dropped each packet.

Completeness is checked, not waited for: `settle()` returns once every pcap
holds as many packets as the kernel's counters say crossed its interface, and
every packet that entered a traced router has its trace.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed import rootless
from testbed.errors import LabError
from testbed.lab import Lab
from testbed.ruleset import load_ruleset
from testbed.trace.captured import META_FILE, Captured
from testbed.trace.nfttrace import TRACE_DELETE, TRACE_RULESET, Trace, parse_trace
from testbed.trace.packets import (
    Packet,
    PcapTail,
    load_dissectors,
    parse_frame,
    pcap_name,
    tap_label,
    trace_name,
)

READY_TIMEOUT_S = 5.0
SETTLE_TIMEOUT_S = 3.0
POLL_S = 0.002
NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9


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
        if self._parsed_len != len(self.text):
            self._parsed, self._parsed_len = parse_trace(self.text), len(self.text)
        return self._parsed


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
                load_ruleset(self.lab.namespace(r.node).fd, TRACE_RULESET,
                             self.lab.netns(r.node))
                with r.path.open("w") as out:
                    r.proc = self.lab.popen(r.node, ["nft", "monitor", "trace"], stdout=out,
                                            stderr=subprocess.STDOUT)
            load_dissectors()  # while the capturers start: scapy takes a while to import
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
                    load_ruleset(self.lab.namespace(r.node).fd, TRACE_DELETE,
                                 self.lab.netns(r.node))
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
        return self.lab.namespace(node).ipr

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
            why = ""
            if "Couldn't change to" in line and rootless.in_user_namespace():
                why = (" (this tcpdump calls setgroups even with -Z root, which a user "
                       "namespace refuses: the-tcpdump-group/tcpdump#1000; in rootless mode "
                       "--trace needs a tcpdump with that fix, or root: docs/rootless.md)")
            raise LabError(f"lab {self.lab.name}: tcpdump on {t.label} did not start: "
                           f"{line.strip() or f'nothing said in {READY_TIMEOUT_S}s'}{why}")

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

    def lagging(self) -> list[str]:
        """What the pcaps and traces still miss of what the kernel has counted (empty
        once they have caught up), e.g. 'router:wan: 5 of 6 packets in the pcap'."""
        out = []
        for t in self.taps.values():
            counted = self._counter(t) - t.base
            if len(t.packets) < counted:
                out.append(f"{t.label}: {len(t.packets)} of {counted} packets in the pcap")
        for r in self.tracers.values():
            traced = self._traced_ingress(r)
            for t in self.taps.values():
                if t.node != r.node:
                    continue
                arrived = sum(1 for p in t.packets if p.direction == "in" and p.routed)
                if traced.get(t.iface, 0) < arrived:
                    out.append(f"{t.label}: {traced.get(t.iface, 0)} of {arrived} arrivals "
                               "in the nft trace")
        return out

    def _caught_up(self) -> bool:
        return not self.lagging()

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
