"""Topology engine benchmark: bring up and down generated labs of 100 to 5,000 namespaces.

    .venv/bin/python bench/bench_topology.py [--sizes 100 1000 5000] [--baseline-max 1000]

Prints milliseconds per namespace, up and down, for nat-testbed's in-process netlink
engine and, in the same run, for the same topology built with one `ip` subprocess per
step (the usual shell-script way; only up to --baseline-max namespaces, as it takes
minutes beyond), and their ratio; also the routes installed and the netlink writes
(more writes than namespaces: batches were split to fit the sockets' buffers). The
topology is the testbed's own
shape without NAT rules or servers (those are measured by bench_pair/bench_matrix):
homes of a router and a host on a /24, home routers on ISP access networks
(100.64.x.0/24 bridges), ISP routers on the internet (a bridge), one server there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import nlbatch  # noqa: E402
from testbed.lab import Lab, new_lab_name  # noqa: E402
from testbed.topology import Topology, parse_topology  # noqa: E402

HOMES_PER_ISP = 50


def generate(namespaces: int) -> Topology:
    """About `namespaces` namespaces: 2 per home, 2 per ISP (router + access bridge)."""
    isps = max(1, round(namespaces / (2 * HOMES_PER_ISP + 2)))
    homes = max(1, (namespaces - 2 - 2 * isps) // 2)
    nodes: dict[str, Any] = {"server": {"kind": "server"}}
    links, networks = [], {}
    internet = ["server:eth0"]
    for i in range(isps):
        nodes[f"isp{i}"] = {"kind": "router"}
        internet.append(f"isp{i}:uplink")
        networks[f"access{i}"] = {"scope": "cgn", "members": [f"isp{i}:access"]}
    for h in range(homes):
        nodes[f"r{h}"] = {"kind": "router"}
        nodes[f"h{h}"] = {"kind": "host"}
        networks[f"access{h % isps}"]["members"].append(f"r{h}:wan")
        links.append({"endpoints": [f"h{h}:eth0", f"r{h}:lan"]})
    networks["internet"] = {"scope": "internet", "members": internet}
    doc = {"name": "bench", "nodes": nodes, "links": links, "networks": networks}
    return parse_topology(yaml.safe_dump(doc, sort_keys=False), "<bench>")


def count_namespaces(topo: Topology) -> int:
    return len(topo.nodes) + len(topo.bridges)


def bench_engine(topo: Topology) -> tuple[float, float, int]:
    """Up and down seconds, and the netlink writes it took."""
    writes = 0
    send = nlbatch.Batch.send

    def counting_send(batch: nlbatch.Batch) -> None:
        nonlocal writes
        before = batch.writes
        try:
            send(batch)
        finally:
            writes += batch.writes - before

    nlbatch.Batch.send = counting_send  # type: ignore[method-assign]
    lab = Lab(topo, name=new_lab_name(), start_services=False)
    try:
        t0 = time.perf_counter()
        lab.up()
        t1 = time.perf_counter()
    finally:
        nlbatch.Batch.send = send  # type: ignore[method-assign]
        t_down = time.perf_counter()
        lab.down()
    return t1 - t0, time.perf_counter() - t_down, writes


def ip_script(topo: Topology, lab: str) -> tuple[list[list[str]], list[list[str]]]:
    """The same lab as `ip` commands: one subprocess per step, as shell scripts do."""
    ns = {k: f"{lab}-{k}" for k in [n.name for n in topo.nodes] + [s.name for s in topo.bridges]}
    up: list[list[str]] = [["ip", "netns", "add", v] for v in ns.values()]
    for s in topo.bridges:
        up.append(["ip", "-n", ns[s.name], "link", "add", "br0", "up", "type", "bridge"])
    for s in topo.segments:
        for port, (node, ifname) in enumerate(s.members):
            if not s.bridged and port == 1:
                continue
            if s.bridged:
                peer, peer_ns = f"p{port}", ns[s.name]
            else:
                peer, peer_ns = s.members[1][1], ns[s.members[1][0]]
            up.append(["ip", "-n", ns[node], "link", "add", ifname, "type", "veth", "peer",
                       "name", peer, "netns", peer_ns])
            if s.bridged:
                up.append(["ip", "-n", peer_ns, "link", "set", peer, "master", "br0", "up"])
    for n in topo.nodes:
        if n.forwards:
            up.append(["ip", "netns", "exec", ns[n.name], "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for i in n.interfaces:
            for a in i.addresses:
                up.append(["ip", "-n", ns[n.name], "addr", "add", str(a), "dev", i.name])
            up.append(["ip", "-n", ns[n.name], "link", "set", i.name, "up"])
        for r in n.routes:
            up.append(["ip", "-n", ns[n.name], "route", "add", str(r.dest or "default"), "via",
                       str(r.via)])
    down = [["ip", "netns", "del", v] for v in ns.values()]
    return up, down


def bench_ip(topo: Topology) -> tuple[float, float]:
    up, down = ip_script(topo, new_lab_name())
    t0 = time.perf_counter()
    try:
        for argv in up:
            subprocess.run(argv, check=True)
    finally:
        t1 = time.perf_counter()
        for argv in down:
            subprocess.run(argv, check=False, stderr=subprocess.DEVNULL)
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--baseline-max", type=int, default=1000, metavar="N",
                    help="run the ip subprocess baseline only up to N namespaces (0: never)")
    ap.add_argument("--no-baseline", action="store_true", help="same as --baseline-max 0")
    args = ap.parse_args()
    baseline_max = 0 if args.no_baseline else args.baseline_max
    print(f"{'namespaces':>10} {'routes':>7} {'parse':>7} {'up':>8} {'down':>8} "
          f"{'ms/ns up':>9} {'ms/ns down':>10} {'writes':>7} | {'ip up':>8} {'ms/ns':>7} "
          f"{'ratio':>6}")
    for size in args.sizes:
        t0 = time.perf_counter()
        topo = generate(size)
        parse_s = time.perf_counter() - t0
        n = count_namespaces(topo)
        routes = sum(len(node.routes) for node in topo.nodes)
        up, down, writes = bench_engine(topo)
        line = (f"{n:>10} {routes:>7} {parse_s:>6.2f}s {up:>7.2f}s {down:>7.2f}s "
                f"{up / n * 1000:>9.2f} {down / n * 1000:>10.2f} {writes:>7}")
        if n <= baseline_max:
            ip_up, _ = bench_ip(topo)
            line += f" | {ip_up:>7.2f}s {ip_up / n * 1000:>7.2f} {ip_up / up:>5.1f}x"
        print(line, flush=True)
    print("goal: up <= 3 ms per namespace amortized, faster than ip, 1,000 up+down <= 10 s, "
          "5,000 up and down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
