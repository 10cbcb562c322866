"""`nat-testbed classify`: build a NAT, classify it from behind with RFC 5780.

A throwaway lab: one LAN host behind a router with the requested behaviour
(optionally behind a carrier-grade NAT too), and the project's STUN server on
the internet with two addresses and two ports. The discovery client
(peers.natcheck) runs in the host's namespace; its verdict is compared with
what was configured. The lab is removed afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from testbed.errors import TestbedError
from testbed.lab import Lab, require_root
from testbed.nat import Behaviour, Kind, NatConfigError, NatSpec, nat_from_dict
from testbed.topology import parse_topology

STUN_PRIMARY, STUN_ALTERNATE = "203.0.113.3", "203.0.113.4"


class UsageError(TestbedError):
    exit_code = 2


def nat_section(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The command-line options as a topology `nat:` section (validated by nat_from_dict)."""
    section: dict[str, Any] = {}
    for key in ("nat", "mapping", "filtering", "port_allocation", "hairpinning",
                "mapping_timeout"):
        value = getattr(args, prefix + key, None)
        if value is not None:
            section["type" if key == "nat" else key.replace("_", "-")] = value
    return section


def spec_from_args(args: argparse.Namespace) -> NatSpec:
    section = nat_section(args)
    try:
        return nat_from_dict(section)
    except NatConfigError as exc:
        flag = "--nat" if exc.field == "type" else f"--{exc.field}"
        raise UsageError(f"{flag}: {exc.message}") from None


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


def run_natcheck(lab: Lab, lifetime: float | None = None) -> dict[str, Any]:
    argv = ["--server", STUN_PRIMARY, "--json"]
    if lifetime:
        argv += ["--lifetime", "--lifetime-max", str(lifetime)]
    proc = lab.python("client", "peers.natcheck", *argv, stdout=-1, stderr=-1, text=True)
    out, err = proc.communicate(timeout=60 + (lifetime or 0) * 4)
    if proc.returncode != 0:
        raise TestbedError(f"natcheck failed ({proc.returncode}): {err.strip() or out.strip()}")
    result: dict[str, Any] = json.loads(out)
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
             keep: bool = False, lifetime: float | None = None) -> dict[str, Any]:
    topo = parse_topology(classify_topology(spec_section, cgn_section), "<classify>")
    spec = topo.node("router").nat
    assert spec is not None
    cgn = topo.node("cgn").nat if cgn_section is not None else None
    lab = Lab(topo)
    lab.up()
    try:
        found = run_natcheck(lab, lifetime)
    finally:
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
        lines.append(f"lab kept: nat-testbed exec {r['lab']} client -- python3 -m peers.natcheck "
                     f"--server {STUN_PRIMARY}; nat-testbed down {r['lab']}")
    return "\n".join(lines)


def add_nat_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    dest = prefix.replace("-", "_")
    p.add_argument(f"--{prefix}nat", dest=f"{dest}nat", metavar="TYPE",
                   help="full-cone, restricted-cone, port-restricted-cone, symmetric, none, "
                        "firewall")
    p.add_argument(f"--{prefix}mapping", dest=f"{dest}mapping",
                   help="endpoint-independent, address-dependent, address-and-port-dependent")
    p.add_argument(f"--{prefix}filtering", dest=f"{dest}filtering", help="same three values")
    p.add_argument(f"--{prefix}port-allocation", dest=f"{dest}port_allocation",
                   help="preserve, sequential, random")
    p.add_argument(f"--{prefix}hairpinning", dest=f"{dest}hairpinning",
                   action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(f"--{prefix}mapping-timeout", dest=f"{dest}mapping_timeout", type=int,
                   metavar="SECONDS")


def cmd_classify(args: argparse.Namespace) -> int:
    spec_from_args(args)  # bad options are reported before anything is built
    cgn = {"type": args.behind_cgn} if args.behind_cgn else None
    if cgn is not None:
        try:
            nat_from_dict(cgn)
        except NatConfigError as exc:
            raise UsageError(f"--behind-cgn: {exc.message}") from None
    require_root()
    result = classify(nat_section(args), cgn_section=cgn, keep=args.keep,
                      lifetime=args.lifetime)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0 if result["agrees"] else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("classify", help="build a NAT and classify it with RFC 5780 from behind")
    add_nat_options(p)
    p.add_argument("--behind-cgn", metavar="TYPE",
                   help="put the router behind a carrier-grade NAT of this type")
    p.add_argument("--lifetime", type=float, metavar="MAX_SECONDS",
                   help="also measure the mapping lifetime, up to this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the lab and print how to use it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_classify)
