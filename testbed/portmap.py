"""Router port mapping with a real daemon: miniupnpd (UPnP IGD, NAT-PMP, PCP) per router.

A router whose `nat:` has `port-mapping: [pcp, nat-pmp, upnp]` runs Debian's miniupnpd
(package miniupnpd-nftables, installed by scripts/install.sh) in its namespace, with a
configuration rendered here (pure: render_config, render_table) and files in the lab's
folder; the lab owns the process (recorded in its state, stopped by down and clean).

Why STUN mode: miniupnpd refuses to forward ports when its WAN address is private or
reserved, and the lab's public addresses are documentation ranges (203.0.113.0/24), so
`ext_ip=` is refused too (docs/facts-measured.md). With `ext_perform_stun=yes` it asks
the lab's STUN server instead: four bindings, three of them answered from the other
address or port, and forwarding is enabled only if all four answers arrive (nothing
in front of the router filters). The router's own input chain lets exactly those
answers in (nft-templates: from the STUN server's addresses and ports only); the
daemon then reports and maps the router's real WAN address.

Its nftables rules go into a table of its own (render_table: the chains nft_init.sh
would create, with the names set in the configuration); our router's forward chain
admits what its prerouting dnat lets in (`ct status dnat`). Permissions: each LAN host
of the topology may map `mapping-quota` external ports of a range of its own, nobody
else anything; `secure_mode` refuses mappings for another host's address.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import LabError
from testbed.topology import Node, Topology

DAEMON = "miniupnpd"
TABLE = "nattestbed_upnp"  # the daemon's own table (family inet)
HTTP_PORT = 5000  # UPnP IGD's HTTP port (SSDP finds it too)
QUOTA_BASE = 20000  # per-host external port ranges start here
READY = "Listening for NAT-PMP/PCP traffic"
READY_UPNP = "HTTP listening on port"
READY_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class DaemonConfig:
    router: str
    wan_if: str
    lan_ifs: tuple[str, ...]
    stun: tuple[str, int]  # the lab's STUN server: primary address and port
    protocols: tuple[str, ...]
    hosts: tuple[str, ...]  # LAN host addresses that may map, in order
    quota: int
    lab: str

    def host_range(self, index: int) -> tuple[int, int]:
        first = QUOTA_BASE + index * self.quota
        return first, first + self.quota - 1


def daemon_config(topo: Topology, router: Node, lab: str) -> DaemonConfig:
    assert router.nat is not None and router.upstream is not None
    stun = next((n for n in topo.nodes if n.service == "stun"), None)
    if stun is None:
        raise LabError(f"{router.name}: port-mapping needs a stun service in the topology "
                       "(miniupnpd learns its public address with STUN)")
    lans = [i for i in router.interfaces if i.name != router.upstream]
    segs = {i.segment for i in lans}
    hosts = [str(a.ip) for n in topo.nodes if n.name != router.name and n.kind != "router"
             for i in n.interfaces if i.segment in segs for a in i.addresses]
    return DaemonConfig(router.name, router.upstream, tuple(i.name for i in lans),
                        (str(stun.interfaces[0].address.ip), 3478), router.nat.port_mapping,
                        tuple(hosts), router.nat.mapping_quota, lab)


def render_config(c: DaemonConfig, *, lease: str | None = None) -> str:
    natpmp = "pcp" in c.protocols or "nat-pmp" in c.protocols
    stable = uuid.UUID(bytes=hashlib.sha256(f"{c.lab}/{c.router}".encode()).digest()[:16],
                       version=4)
    lines = [f"# miniupnpd for {c.router}, rendered by testbed.portmap (lab {c.lab})",
             f"ext_ifname={c.wan_if}",
             *(f"listening_ip={i}" for i in c.lan_ifs),
             "# The lab's public addresses are documentation ranges, which miniupnpd calls",
             "# reserved: it forwards only after STUN shows nothing filters in front of it.",
             "ext_perform_stun=yes", f"ext_stun_host={c.stun[0]}", f"ext_stun_port={c.stun[1]}",
             "# NAT-PMP and PCP are one switch in miniupnpd 2.3.1 (enable_natpmp).",
             f"enable_natpmp={'yes' if natpmp else 'no'}",
             f"enable_upnp={'yes' if 'upnp' in c.protocols else 'no'}",
             f"http_port={HTTP_PORT}", "secure_mode=yes", "system_uptime=no",
             f"uuid={stable}",
             f"upnp_table_name={TABLE}", f"upnp_nat_table_name={TABLE}",
             "upnp_forward_chain=forward_upnp", "upnp_nat_chain=prerouting_upnp",
             "upnp_nat_postrouting_chain=postrouting_upnp",
             *([f"lease_file={lease}"] if lease else []),
             f"# each LAN host: {c.quota} external ports of its own; nobody else anything"]
    for k, ip in enumerate(c.hosts):
        lo, hi = c.host_range(k)
        lines.append(f"allow {lo}-{hi} {ip}/32 1-65535")
    lines.append("deny 0-65535 0.0.0.0/0 0-65535")
    return "\n".join(lines) + "\n"


def render_table() -> str:
    """The chains miniupnpd fills (what its nft_init.sh creates), policy accept: the
    router's own table decides what passes."""
    return f"""table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tjump forward_upnp
\t}}
\tchain forward_upnp {{
\t}}
\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump prerouting_upnp
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump postrouting_upnp
\t}}
\tchain prerouting_upnp {{
\t}}
\tchain postrouting_upnp {{
\t}}
}}
"""


def argv(conf: Path, pidfile: Path) -> list[str]:
    return [DAEMON, "-d", "-f", str(conf), "-P", str(pidfile)]


def wait_ready(log: Path, alive: Any, where: str, upnp: bool) -> None:
    """Until the daemon listens (and has decided that it may forward), from its log."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    want = [READY, *([READY_UPNP] if upnp else [])]
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Port forwarding is now disabled" in text:
            raise LabError(f"{where}: miniupnpd refused to forward: {_tail(text)}")
        if all(w in text for w in want):
            return
        if not alive():
            raise LabError(f"{where}: miniupnpd exited: {_tail(text)}")
        time.sleep(0.01)
    raise LabError(f"{where}: miniupnpd not ready within {READY_TIMEOUT_S} s: "
                   f"{_tail(log.read_text(errors='replace') if log.exists() else '')}")


def _tail(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-3:])


def rule_lines(nft_list: str) -> list[str]:
    """The daemon's mapping rules in `nft list table inet TABLE` output."""
    return [ln.strip() for ln in nft_list.splitlines() if " dnat " in ln]


def quota_ranges(c: DaemonConfig) -> dict[str, list[int]]:
    """LAN host address -> [first, last] external port it may map."""
    return {ip: list(c.host_range(k)) for k, ip in enumerate(c.hosts)}
