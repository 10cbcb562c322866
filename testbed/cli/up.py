"""`nat-testbed up`: build a topology as a lab and leave it running."""

from __future__ import annotations

import argparse

from testbed import resources
from testbed.cli.common import check_lab_name, print_json

NAME = "up"
HELP = "build a topology (YAML) as a lab and leave it running"
DESCRIPTION = """Build every namespace, link, address, route, NAT ruleset and server of a
topology, then leave the lab running for `exec`, `status` and your own tools.
`nat-testbed down LAB` removes it. The file is validated before the kernel is touched."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", metavar="TOPOLOGY",
                   help="a topology file, or the name of a bundled one ("
                        f"{', '.join(resources.bundled_topologies())})")
    p.add_argument("--name", help="lab name (default: 'nt' + 4 random characters)")
    p.add_argument("--json", action="store_true", help="print the lab's summary as JSON")


def run(args: argparse.Namespace) -> int:
    from testbed.topology import describe, load_topology

    check_lab_name(args.name)  # a bad name is refused before anything else
    topo = load_topology(resources.topology_argument(args.topology))
    from testbed import impair, services
    from testbed.interrupts import interrupts_as_keyboard  # the input is good: load the engine
    from testbed.lab import Lab, require_root
    from testbed.status import lab_summary, service_line

    require_root()
    lab = Lab(topo, name=args.name)
    with interrupts_as_keyboard():
        lab.up()
    lab.detach()
    if args.json:
        print_json(lab_summary(lab.name))
        return 0
    print(f"lab {lab.name} is up ({topo.name}: {len(topo.nodes)} nodes)")
    print(describe(topo))
    for svc, info in lab.services.items():
        print(f"  service {svc}: {service_line(info)}")
    records = lab._state.get("impairments")
    if records:
        print(f"  conditions (mechanism: {impair.summary(records)['mechanism']}):")  # type: ignore[index]
        for line in impair.describe(records):
            print(f"    {line}")
    if any(services.SECRET_FILES.keys() & info.keys() for info in lab.services.values()):
        print(f"  (secrets: in the files named; nat-testbed status {lab.name} --show-secrets)")
    print(f"\n  nat-testbed exec {lab.name} NODE -- COMMAND   run a command in a node")
    print(f"  nat-testbed down {lab.name}                   remove everything it created")
    return 0
