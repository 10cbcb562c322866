"""Classify a NAT on a real kernel: build it, run RFC 5780 discovery from behind it.

A throwaway lab: one LAN host behind a router with the requested behaviour
(optionally behind a carrier-grade NAT too), and the project's STUN server on
the internet with two addresses and two ports, over UDP and TCP. The discovery
client (peers.natcheck; over TCP, peers.natcheck_tcp) runs in the host's
namespace; its verdict is compared with what was configured. The lab is removed
afterwards unless --keep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml

from peers import natcheck
from testbed.errors import TestbedError
from testbed.lab import Lab
from testbed.nat import Behaviour, Egress, Kind, NatSpec
from testbed.ruleset import alloc_range, port_blocks
from testbed.topology import parse_topology

STUN_PRIMARY, STUN_ALTERNATE = "203.0.113.3", "203.0.113.4"
NATCHECK_TIMEOUT_S = 60.0
TRANSPORTS = ("udp", "tcp")
BLOCKED = "unknown"  # what a classifier reports when it cannot reach the server at all
MAX_ERROR_LINES = 50  # of natcheck's stderr, for the error message
Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    """The default listener: the Python API says nothing."""


CGN_POOL_FIRST = 100  # a CGN's pool: 203.0.113.100, .101, ...
ALLOCATIONS = 16  # new mappings natcheck opens to see pooling and port blocks


def classify_topology(nat: dict[str, Any], cgn: dict[str, Any] | None = None,
                      cgn_pool: int = 1) -> str:
    """YAML for the throwaway lab; with `cgn`, the home router sits behind a CGN (whose
    WAN holds `cgn_pool` addresses)."""
    nodes: dict[str, Any] = {
        "client": {"kind": "host"},
        "router": {"kind": "router", "nat": nat},
        "stun": {"kind": "server", "service": "stun",
                 "interfaces": {"eth0": [f"{STUN_PRIMARY}/24", f"{STUN_ALTERNATE}/24"]}},
    }
    links: list[dict[str, Any]] = [{"endpoints": ["client:eth0", "router:lan"]}]
    internet = ["router:wan", "stun:eth0"]
    if cgn is not None:
        nodes["cgn"] = {"kind": "router", "nat": cgn}
        if cgn_pool > 1:
            nodes["cgn"]["interfaces"] = {"wan": [f"203.0.113.{CGN_POOL_FIRST + i}/24"
                                                  for i in range(cgn_pool)]}
        links.append({"endpoints": ["router:wan", "cgn:inside"], "scope": "cgn"})
        internet = ["cgn:wan", "stun:eth0"]
    doc = {"name": "classify", "nodes": nodes, "links": links,
           "networks": {"internet": {"scope": "internet", "members": internet}}}
    return yaml.safe_dump(doc, sort_keys=False)


def run_natcheck(lab: Lab, lifetime: float | None = None, say: Say = _quiet,
                 transport: str = "udp") -> dict[str, Any]:
    """peers.natcheck in the client's namespace; its progress lines go to `say` as they
    come (a lifetime search idles for minutes), everything else on stderr is its error."""
    argv = ["--server", STUN_PRIMARY, "--json", "--progress", "--transport", transport]
    if transport == "udp":  # pooling and port blocks, seen from new UDP mappings
        argv += ["--allocations", str(ALLOCATIONS)]
    if lifetime:
        argv += ["--lifetime", "--lifetime-max", str(lifetime)]
    proc = lab.python("client", "peers.natcheck", *argv, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    out: list[str] = []
    err: list[str] = []

    def follow() -> None:  # a thread of its own: a hung natcheck still meets the timeout
        for line in stderr:
            if line.startswith(natcheck.PROGRESS):
                say(line[len(natcheck.PROGRESS):].rstrip("\n"))
            elif len(err) < MAX_ERROR_LINES:
                err.append(line)

    readers = [threading.Thread(target=lambda: out.append(stdout.read()), daemon=True),
               threading.Thread(target=follow, daemon=True)]
    for r in readers:
        r.start()
    try:
        proc.wait(timeout=NATCHECK_TIMEOUT_S + (lifetime or 0) * 4)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for r in readers:
        r.join()
    text = "".join(out)
    why = "".join(err).strip() or text.strip()
    if proc.returncode not in (0, 2):  # 2: it ran, but the server never answered
        raise TestbedError(f"natcheck failed ({proc.returncode}): {why}")
    try:
        result: dict[str, Any] = json.loads(text)
    except ValueError:
        raise TestbedError(f"natcheck failed ({proc.returncode}): {why}") from None
    return result


def _stricter(a: Behaviour, b: Behaviour) -> Behaviour:
    order = list(Behaviour)  # declared from least to most dependent on the remote endpoint
    return max(a, b, key=order.index)


def compose(inner: NatSpec, outer: NatSpec) -> tuple[Behaviour, Behaviour]:
    """Two NATs in series, seen from the inside host. A new inner mapping is a new outer
    mapping, so the mapping depends on the remote as much as the more dependent of the two;
    an inbound packet must pass both filters, which both see the same remote endpoint."""
    if outer.kind is not Kind.NAT:
        return inner.mapping, inner.filtering
    if inner.kind is not Kind.NAT:
        return outer.mapping, outer.filtering
    return _stricter(inner.mapping, outer.mapping), _stricter(inner.filtering, outer.filtering)


def expected(spec: NatSpec, cgn: NatSpec | None = None) -> dict[str, str]:
    """What a correct classifier must report for this configuration (the same over UDP
    and TCP). Behind corporate egress the STUN ports are closed: no verdict at all."""
    if any(s is not None and s.egress is Egress.CORPORATE for s in (spec, cgn)):
        return {"mapping": BLOCKED, "filtering": BLOCKED}
    mapping, filtering = compose(spec, cgn) if cgn is not None else (spec.mapping, spec.filtering)
    return {"mapping": mapping.value, "filtering": filtering.value}


def expected_allocation(lab: Lab) -> dict[str, Any]:
    """What the configuration promises about the client's new mappings: the outermost
    NAT's pool, pooling and (for a CGN with port blocks) the block of the home router's
    address, or the port range it picks from."""
    outer = lab.topo.node("cgn") if "cgn" in {n.name for n in lab.topo.nodes} else \
        lab.topo.node("router")
    assert outer.nat is not None
    ctx = lab.router_context(outer)
    out: dict[str, Any] = {"pool": list(ctx.addresses), "pooling": outer.nat.pooling,
                           "port_range": list(alloc_range(outer.nat)), "block": None}
    if outer.nat.port_block is not None:
        inside = str(lab.topo.node("router").iface("wan").address.ip) \
            if outer.name == "cgn" else lab.addr("client")
        out["block"] = next(([a, lo, hi] for h, a, lo, hi in port_blocks(outer.nat, ctx)
                             if h == inside), None)
    return out


def classify(spec_section: dict[str, Any], *, cgn_section: dict[str, Any] | None = None,
             keep: bool = False, lifetime: float | None = None, lab_name: str | None = None,
             say: Say = _quiet, cgn_pool: int = 1, transport: str = "udp") -> dict[str, Any]:
    """Build the NAT, run RFC 5780 discovery from behind it (over UDP or TCP), compare.
    `say` hears what is being done as it starts (a line each; the lifetime search's
    trials included)."""
    topo = parse_topology(classify_topology(spec_section, cgn_section, cgn_pool),
                          "<classify>")
    spec = topo.node("router").nat
    assert spec is not None
    cgn = topo.node("cgn").nat if cgn_section is not None else None
    t0 = time.monotonic()
    lab = Lab(topo, name=lab_name)
    say(f"building lab {lab.name}: a client behind {spec.label}"
        + (f" behind a {cgn.label} CGN" if cgn else "") + ", a STUN server")
    lab.up()
    try:
        say(f"lab up in {time.monotonic() - t0:.1f} s; the client runs RFC 5780 discovery"
            + (" over TCP" if transport == "tcp" else "")
            + (f", then measures the mapping lifetime (up to {lifetime:g} s idle per trial)"
               if lifetime else ""))
        found = run_natcheck(lab, lifetime, say, transport)
        promised = expected_allocation(lab)
    finally:
        if not keep:
            say(f"removing lab {lab.name}")
        lab.detach() if keep else lab.down()
    want = expected(spec, cgn)
    return {
        "configured": {"label": spec.label, "mapping": spec.mapping.value,
                       "filtering": spec.filtering.value,
                       "port_allocation": spec.port_allocation.value,
                       "hairpinning": spec.hairpinning, "mapping_timeout": spec.mapping_timeout,
                       "unsolicited_syn": spec.unsolicited_syn.value,
                       "egress": spec.egress.value, "behind_cgn": cgn.label if cgn else None,
                       "allocation": promised},
        "transport": transport,
        "expected": want,
        "measured": found,
        "agrees": all(found.get(k) == v for k, v in want.items()),
        "lab": lab.name if keep else None,
    }


def format_result(r: dict[str, Any]) -> str:
    c, m = r["configured"], r["measured"]
    behind = f" behind a {c['behind_cgn']} CGN" if c["behind_cgn"] else ""
    mapped = m.get("mapped_address") or ["?", "?"]
    local = m.get("local_address") or ["?", "?"]
    lines = [
        f"configured: {c['label']}{behind} (mapping {c['mapping']}, filtering {c['filtering']},"
        f" port allocation {c['port_allocation']}, hairpinning "
        f"{'on' if c['hairpinning'] else 'off'})",
        f"client {local[0]}:{local[1]} appears as {mapped[0]}:{mapped[1]}",
        f"mapping:           {m.get('mapping')}",
        f"filtering:         {m.get('filtering')}",
        f"hairpinning:       {'yes' if m.get('hairpinning') else 'no'}",
        f"port preservation: {'yes' if m.get('port_preservation') else 'no'}",
    ]
    if m.get("lifetime_s") is not None:
        lines.append(f"mapping lifetime:  {m['lifetime_s']:.2f} s")
    lines += _allocation_lines(m.get("allocation"), c.get("allocation"))
    verdict = "agrees with" if r["agrees"] else "DISAGREES with"
    over = r.get("transport", "udp").upper()
    lines.append(f"RFC 5780 discovery over {over} {verdict} the configuration "
                 f"(expected {r['expected']['mapping']} / {r['expected']['filtering']})")
    lines += [f"note: {n}" for n in m.get("notes", [])]
    if r["lab"]:
        lines.append(f"lab kept: nat-testbed exec {r['lab']} client -- {sys.executable} -m "
                     f"peers.natcheck --server {STUN_PRIMARY} --transport {over.lower()}; "
                     f"nat-testbed down {r['lab']}")
    return "\n".join(lines)


def _allocation_lines(seen: dict[str, Any] | None, promised: dict[str, Any] | None
                      ) -> list[str]:
    """Pooling and port blocks as seen from ALLOCATIONS new mappings of the client."""
    if not seen or not seen.get("mappings"):
        return []
    n, addrs, ports = seen["mappings"], seen["addresses"], seen["ports"]
    lines = [f"pooling:           {seen['pooling']} ({n} new mappings on {len(addrs)} "
             f"address{'es' if len(addrs) > 1 else ''}: {', '.join(addrs)})",
             f"ports seen:        {ports[0]}-{ports[1]}"]
    if promised and promised.get("block"):
        addr, lo, hi = promised["block"]
        inside = lo <= ports[0] and ports[1] <= hi
        lines.append(f"port block:        {lo}-{hi} on {addr} for this subscriber (RFC 7422): "
                     f"the ports seen lie {'inside' if inside else 'OUTSIDE'} it")
    return lines
