"""What labs exist on this machine, read live: state, namespaces, interfaces, routes.

Used by `nat-testbed status` and `up --json`; reads /run/nat-testbed and the
namespaces themselves, never changes anything.
"""

from __future__ import annotations

from typing import Any

from testbed import impair, netns, services, state
from testbed.errors import LabError
from testbed.nat import NatConfigError, nat_from_label
from testbed.results import spec_to_json


def lab_names() -> list[str]:
    """Every lab with a state file or a marked namespace."""
    return sorted(set(state.known_labs()) | set(state.labs_from_markers()))


def require_labs(labs: list[str]) -> None:
    """Each named lab exists (its state, or a namespace marked as its)."""
    for lab in labs:
        if not state.exists(lab):
            raise LabError(f"no lab named {lab!r} (nat-testbed status lists the labs)")


def lab_summary(lab: str, *, show_secrets: bool = False) -> dict[str, Any]:
    """A lab as it is now; its servers' secrets (read from their 0600 files) only when
    asked: a summary is printed, and a terminal's scrollback is no place for them."""
    st = state.read_state(lab) or {"lab": lab, "nodes": {}}
    svcs = {name: (services.with_secrets(info) if show_secrets else services.public(info))
            for name, info in (st.get("services") or {}).items()}
    nodes = st.get("nodes") or {n.split("-", 1)[1]: n for n in state.marked_namespaces(lab)}
    # read from a thread of its own: a teardown never takes this process for the lab's
    live = netns.in_thread(lambda: {node: live_node(ns) for node, ns in nodes.items()})
    for node, label in (st.get("nat") or {}).items():
        if node in live:
            live[node]["nat"] = nat_json(label)
    return {"lab": lab, **state.standing(lab).as_dict(), "topology": st.get("topology"),
            "created": st.get("created"), "services": svcs,
            "labels": st.get("labels", {}),
            "conditions": impair.summary(st.get("impairments")), "nodes": live}


def nat_json(label: str) -> dict[str, Any]:
    """A router's NAT as its state recorded it (its label): the label, every setting,
    and the words for it; a label this version cannot read is shown as it is."""
    try:
        spec = nat_from_label(label)
    except NatConfigError:
        return {"label": label}
    return {"label": label, **spec_to_json(spec), "behaviour": spec.behaviour}


def live_node(ns_name: str) -> dict[str, Any]:
    try:
        ns = netns.open_existing(ns_name)
    except OSError:
        return {"netns": ns_name, "missing": True}
    try:
        ifaces = []
        for link in ns.ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name == "lo":
                continue
            addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                     for a in ns.ipr.get_addr(index=link["index"])]
            ifaces.append({"name": name, "state": link.get_attr("IFLA_OPERSTATE"),
                           "addresses": addrs})
        routes = [_route_text(r) for r in ns.ipr.get_routes(table=254)]
        return {"netns": ns_name, "interfaces": ifaces, "routes": routes}
    finally:
        ns.close()


def _route_text(r: Any) -> str:
    dst = r.get_attr("RTA_DST")
    dst = f"{dst}/{r['dst_len']}" if dst else "default"
    gw = r.get_attr("RTA_GATEWAY")
    return f"{dst} via {gw}" if gw else f"{dst} (connected)"


def service_line(info: dict[str, Any], *, show_secrets: bool = False) -> str:
    shown = info if show_secrets else services.public(info)
    return " ".join(f"{k}={v}" for k, v in shown.items() if k != "pid")


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"lab {s['lab']}: {state.standing(s['lab']).text()}",
             f"  topology {s.get('topology')}, created {s.get('created')}"]
    if s.get("labels"):  # whose it is beyond its owner process: a pool run, say
        lines.append("  labels " + ", ".join(f"{k}={v}" for k, v in s["labels"].items()))
    for node, info in s["nodes"].items():
        if info.get("missing"):
            lines.append(f"  {node}: namespace {info['netns']} is gone")
            continue
        lines.append(f"  {node}  [netns {info['netns']}]")
        if nat := info.get("nat"):
            lines.append(f"    NAT {nat['label']}: {nat.get('behaviour', '?')}")
        for i in info["interfaces"]:
            lines.append(f"    {i['name']:<8} {i['state']:<5} {', '.join(i['addresses'])}")
        for r in info["routes"]:
            lines.append(f"    route {r}")
    for svc, info in s.get("services", {}).items():
        if svc == "port_mapping":  # one daemon per router that offers mapping
            for router, d in info.items():
                quota = ", ".join(f"{ip} {lo}-{hi}" for ip, (lo, hi) in d["quota"].items())
                lines.append(f"  service port-mapping: node={router} daemon={d['daemon']} "
                             f"protocols={','.join(d['protocols'])} gateway={d['gateway']} "
                             f"quota={quota or '-'} log={d['log']}")
            continue
        lines.append(f"  service {svc}: {service_line(info, show_secrets=True)}")  # as asked
    cond = s.get("conditions")
    if cond:
        lines.append(f"  conditions (mechanism: {cond['mechanism']}):")
        lines += [f"    {d['from']} -> {d['to']}: {d['conditions']} ({', '.join(d['parts'])})"
                  for d in cond["directions"]]
    return "\n".join(lines)
