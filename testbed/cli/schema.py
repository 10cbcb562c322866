"""`nat-testbed schema`: the JSON Schema of topology files, for editors."""

from __future__ import annotations

import argparse

from testbed.cli.common import print_json

NAME = "schema"
HELP = "print the JSON Schema of topology files (for editors)"
DESCRIPTION = """The JSON Schema of topology files, made from the same definitions as the
validator, so YAML language servers complete and check them (docs/topology.md). It
catches what a schema can; `nat-testbed validate` checks the rest (addresses, routes)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p  # no options


def run(args: argparse.Namespace) -> int:
    from testbed.topology import json_schema

    print_json(json_schema())
    return 0
