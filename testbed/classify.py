"""Classify a NAT on a real kernel: build it, run RFC 5780 discovery from behind it.

A throwaway lab: one LAN host behind a router with the requested behaviour
(optionally behind a carrier-grade NAT too), and the project's STUN server on
the internet with two addresses and two ports. The discovery client
(peers.natcheck) runs in the host's namespace; its verdict is compared with
what was configured. The lab is removed afterwards unless --keep.
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
from testbed.nat import Behaviour, Kind, NatSpec
from testbed.topology import parse_topology

STUN_PRIMARY, STUN_ALTERNATE = "203.0.113.3", "203.0.113.4"
NATCHECK_TIMEOUT_S = 60.0
MAX_ERROR_LINES = 50  # of natcheck's stderr, for the error message
Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    """The default listener: the Python API says nothing."""


def classify_topology(nat: dict[str, Any], cgn: dict[str, Any] | None = None) -> str:
    """YAML for the throwaway lab; with `cgn`, the home router sits behind a CGN."""
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
        links.append({"endpoints": ["router:wan", "cgn:inside"], "scope": "cgn"})
        internet = ["cgn:wan", "stun:eth0"]
    doc = {"name": "classify", "nodes": nodes, "links": links,
           "networks": {"internet": {"scope": "internet", "members": internet}}}
    return yaml.safe_dump(doc, sort_keys=False)


def run_natcheck(lab: Lab, lifetime: float | None = None, say: Say = _quiet) -> dict[str, Any]:
    """peers.natcheck in the client's namespace; its progress lines go to `say` as they
    come (a lifetime search idles for minutes), everything else on stderr is its error."""
    argv = ["--server", STUN_PRIMARY, "--json", "--progress"]
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
    if proc.returncode != 0:
        why = "".join(err).strip() or text.strip()
        raise TestbedError(f"natcheck failed ({proc.returncode}): {why}")
    result: dict[str, Any] = json.loads(text)
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
    """What a correct classifier must report for this configuration."""
    mapping, filtering = compose(spec, cgn) if cgn is not None else (spec.mapping, spec.filtering)
    return {"mapping": mapping.value, "filtering": filtering.value}


def classify(spec_section: dict[str, Any], *, cgn_section: dict[str, Any] | None = None,
             keep: bool = False, lifetime: float | None = None, lab_name: str | None = None,
             say: Say = _quiet) -> dict[str, Any]:
    """Build the NAT, run RFC 5780 discovery from behind it, compare. `say` hears what is
    being done as it starts (a line each; the lifetime search's trials included)."""
    topo = parse_topology(classify_topology(spec_section, cgn_section), "<classify>")
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
            + (f", then measures the mapping lifetime (up to {lifetime:g} s idle per trial)"
               if lifetime else ""))
        found = run_natcheck(lab, lifetime, say)
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
                       "behind_cgn": cgn.label if cgn else None},
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
    verdict = "agrees with" if r["agrees"] else "DISAGREES with"
    lines.append(f"RFC 5780 discovery {verdict} the configuration "
                 f"(expected {r['expected']['mapping']} / {r['expected']['filtering']})")
    if r["lab"]:
        lines.append(f"lab kept: nat-testbed exec {r['lab']} client -- {sys.executable} -m "
                     f"peers.natcheck --server {STUN_PRIMARY}; nat-testbed down {r['lab']}")
    return "\n".join(lines)
