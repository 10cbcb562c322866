"""The `nat-testbed` command (also `python -m testbed`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from testbed import __version__, netns, state
from testbed.errors import LabError, TestbedError
from testbed.lab import Lab, require_root
from testbed.topology import describe, json_schema, load_topology

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn
    return register


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


# ------------------------------------------------------------------ lab commands


@command("validate")
def cmd_validate(args: argparse.Namespace) -> int:
    topo = load_topology(args.topology)
    print(f"{args.topology}: valid topology '{topo.name}' "
          f"({len(topo.nodes)} nodes, {len(topo.segments)} links and networks)")
    print(describe(topo))
    return 0


@command("schema")
def cmd_schema(args: argparse.Namespace) -> int:
    _print_json(json_schema())
    return 0


@command("up")
def cmd_up(args: argparse.Namespace) -> int:
    if args.name is not None:
        state.check_name(args.name)
    topo = load_topology(args.topology)  # every error is found before the kernel is touched
    require_root()
    lab = Lab(topo, name=args.name)
    with _interrupts_as_exceptions():
        lab.up()
    lab.detach()
    if args.json:
        _print_json(_lab_summary(lab.name))
        return 0
    print(f"lab {lab.name} is up ({topo.name}: {len(topo.nodes)} nodes)")
    print(describe(topo))
    for svc, info in lab.services.items():
        print(f"  service {svc}: {_service_line(info)}")
    print(f"\n  nat-testbed exec {lab.name} NODE -- COMMAND   run a command in a node")
    print(f"  nat-testbed down {lab.name}                   remove everything it created")
    return 0


def _service_line(info: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in info.items() if k != "pid")


@command("down")
def cmd_down(args: argparse.Namespace) -> int:
    require_root()
    for lab in args.labs:
        t = state.down(lab)
        print(f"lab {t.lab} removed: {t.namespaces} namespaces, {t.processes} processes")
    return 0


@command("clean")
def cmd_clean(args: argparse.Namespace) -> int:
    require_root()
    print("\n".join(state.clean(args.labs or None, everything=args.all).lines()))
    return 0


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    for lab in args.labs:
        if not state.exists(lab):
            raise LabError(f"no lab named {lab!r} (nat-testbed status lists the labs)")
    labs = args.labs or sorted(set(state.known_labs()) | set(state.labs_from_markers()))
    summaries = [_lab_summary(lab) for lab in labs]
    if args.json:
        _print_json(summaries)
        return 0
    if not summaries:
        print("no labs running")
    for s in summaries:
        print(_format_summary(s))
    return 0


def _lab_summary(lab: str) -> dict[str, Any]:
    st = state.read_state(lab) or {"lab": lab, "nodes": {}}
    nodes = st.get("nodes") or {n.split("-", 1)[1]: n for n in state.marked_namespaces(lab)}
    live = netns.in_thread(lambda: {node: _live_node(ns) for node, ns in nodes.items()})
    return {"lab": lab, **state.standing(lab).as_dict(), "topology": st.get("topology"),
            "created": st.get("created"), "services": st.get("services", {}), "nodes": live}


def _live_node(ns_name: str) -> dict[str, Any]:
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


def _format_summary(s: dict[str, Any]) -> str:
    lines = [f"lab {s['lab']}: {state.standing(s['lab']).text()}",
             f"  topology {s.get('topology')}, created {s.get('created')}"]
    for node, info in s["nodes"].items():
        if info.get("missing"):
            lines.append(f"  {node}: namespace {info['netns']} is gone")
            continue
        lines.append(f"  {node}  [netns {info['netns']}]")
        for i in info["interfaces"]:
            lines.append(f"    {i['name']:<8} {i['state']:<5} {', '.join(i['addresses'])}")
        for r in info["routes"]:
            lines.append(f"    route {r}")
    for svc, info in s.get("services", {}).items():
        lines.append(f"  service {svc}: {_service_line(info)}")
    return "\n".join(lines)


@command("exec")
def cmd_exec(args: argparse.Namespace) -> int:
    require_root()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise LabError("exec needs a command after --, e.g. nat-testbed exec LAB NODE -- ip addr")
    st = state.read_state(args.lab)
    if st is None:
        raise LabError(f"no lab named {args.lab!r} (nat-testbed status lists the labs)")
    ns_name = st.get("nodes", {}).get(args.node)
    if ns_name is None:
        raise LabError(f"lab {args.lab} has no node {args.node!r} "
                       f"(nodes: {', '.join(st.get('nodes', {}))})")
    fd = os.open(netns.NETNS_DIR / ns_name, os.O_RDONLY)
    netns.preexec(fd)
    os.environ.update(NAT_TESTBED_LAB=args.lab, NAT_TESTBED_NODE=args.node)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise LabError(f"command not found: {argv[0]}") from None


# ------------------------------------------------------------------ plumbing


class _Interrupted(BaseException):
    pass


class _interrupts_as_exceptions:
    """SIGTERM/SIGHUP unwind like Ctrl-C so the lab's cleanup runs."""

    def __enter__(self) -> None:
        self.old = {s: signal.signal(s, self._raise) for s in (signal.SIGTERM, signal.SIGHUP)}

    @staticmethod
    def _raise(signum: int, _frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nat-testbed",
        description="NAT traversal on real Linux kernels: namespaces, nftables NAT, "
                    "STUN, hole punching and TURN.")
    p.add_argument("--version", action="version", version=f"nat-testbed {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("up", help="build a topology (YAML) as a lab and leave it running")
    s.add_argument("topology")
    s.add_argument("--name", help="lab name (default: 'nt' + 4 random characters)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("validate", help="check a topology file without touching the kernel")
    s.add_argument("topology")
    sub.add_parser("schema", help="print the JSON Schema of topology files (for editors)")
    s = sub.add_parser("status", help="running labs: nodes, interfaces, addresses, routes")
    s.add_argument("labs", nargs="*")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("exec", help="run a command inside a node of a lab")
    s.add_argument("lab")
    s.add_argument("node")
    s.add_argument("argv", nargs=argparse.REMAINDER)
    s = sub.add_parser("down", help="remove everything a lab created")
    s.add_argument("labs", nargs="+", metavar="LAB")
    s = sub.add_parser("clean", help="remove what nat-testbed runs left behind (killed, "
                       "crashed); labs brought up with `up` stay unless named or --all")
    s.add_argument("labs", nargs="*", metavar="LAB",
                   help="only these labs, detached (`up`) ones included")
    s.add_argument("--all", action="store_true",
                   help="also every detached lab: everything not in use by a running command")
    for extra in _extra_commands():
        extra(sub)
    return p


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands from other modules: each module's add_parser(subparsers) sets a handler."""
    import importlib

    from testbed import commands

    return [importlib.import_module(m).add_parser for m in commands.MODULES]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return int(handler(args))
    except TestbedError as exc:
        print(f"nat-testbed: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, _Interrupted):
        print("nat-testbed: interrupted; everything this run created was removed",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
