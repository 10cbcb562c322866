"""Modules that add subcommands: each has add_parser(subparsers), which registers a
parser and sets `handler` (args -> exit code) with set_defaults."""

MODULES: list[str] = ["testbed.classify", "testbed.pair_cli", "testbed.lesson_cmd",
                      "testbed.matrix", "testbed.peers_cli"]
