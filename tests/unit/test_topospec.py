"""The topology JSON Schema: a valid draft-07 schema, made from the validator's own
tables, that every example topology passes and that refuses what the format forbids.

(test_topology_fuzz checks on generated documents that schema and validator agree.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from testbed import nat, topospec
from testbed.topology import json_schema

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "topologies").glob("*.yaml"))
SCHEMA = json_schema()
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def errors(doc: Any) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(doc)]


def test_it_is_a_draft_07_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    json.dumps(SCHEMA)  # plain JSON: no tuples, enums or regex objects left in it


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_topology_validates(path: Path) -> None:
    assert errors(yaml.safe_load(path.read_text())) == []


def test_the_sections_are_the_validators_key_lists() -> None:
    defs = SCHEMA["definitions"]
    assert tuple(SCHEMA["properties"]) == topospec.TOP_KEYS
    assert tuple(defs["defaults"]["properties"]) == topospec.DEFAULT_KEYS
    assert tuple(defs["node"]["properties"]) == topospec.NODE_KEYS
    assert tuple(defs["link"]["properties"]) == topospec.LINK_KEYS
    assert tuple(defs["network"]["properties"]) == topospec.NETWORK_KEYS
    assert tuple(defs["nat"]["properties"]) == nat.KEYS  # the NAT parser's own list
    for section in ("node", "link", "network", "nat", "defaults"):
        assert defs[section]["additionalProperties"] is False


def test_values_come_from_the_definitions() -> None:
    node = SCHEMA["definitions"]["node"]["properties"]
    nat_props = SCHEMA["definitions"]["nat"]["properties"]
    assert node["kind"]["enum"] == list(topospec.KINDS)
    assert nat_props["type"]["enum"] == list(nat.TYPES)
    assert nat_props["mapping"]["enum"] == [b.value for b in nat.Behaviour]
    assert nat_props["port-allocation"]["enum"] == [p.value for p in nat.PortAllocation]
    assert nat_props["mapping-timeout"]["maximum"] == nat.MAX_MAPPING_TIMEOUT
    network = SCHEMA["definitions"]["network"]["properties"]
    assert network["members"]["maxItems"] == topospec.MAX_BRIDGE_PORTS


def test_every_pattern_is_also_an_ecma_regex_without_python_only_syntax() -> None:
    """JSON Schema patterns are ECMA-262: no \\Z, \\A, (?P<...>), inline flags."""
    patterns = re.findall(r'"pattern": "((?:[^"\\]|\\.)*)"', json.dumps(SCHEMA))
    assert patterns
    for p in patterns:
        assert not re.search(r"\\\\[AZ]|\(\?P|\(\?[aiLmsux]", p), p


HOME = {"nodes": {"laptop": None, "router": {"kind": "router", "nat": {"type": "symmetric"}},
                  "server": {"kind": "server"}},
        "networks": {"home": {"members": ["router:lan", "laptop:eth0"]},
                     "internet": {"scope": "internet", "members": ["router:wan", "server:eth0"]}}}


def with_(path: str, value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(HOME))
    *parents, last = path.split("/")
    target = doc
    for p in parents:
        target = target[p]
    target[last] = value
    return doc


def test_the_base_document_is_valid() -> None:
    assert errors(HOME) == []


@pytest.mark.parametrize("path,value", [
    ("extra", 1), ("name", "My Lab"), ("nodes/laptop", {"kind": "switch"}),
    ("nodes/Laptop", None), ("nodes/a-node-name-of-twenty-six", None),
    ("nodes/router/nat", {"type": "cone"}), ("nodes/router/nat", {"mapping-timeout": 0}),
    ("nodes/router/nat", {"mapping-timeout": 86401}), ("nodes/router/nat", {"hairpinning": "no"}),
    ("nodes/router/nat", {"mapping_timeout": 60}), ("nodes/server/service", "dns"),
    ("nodes/server/interfaces", {"eth0": "10.0.0.1/255.0.0.0"}),
    ("nodes/server/interfaces", {"lo": "10.0.0.1/8"}),
    ("nodes/server/interfaces", {"an-interface-name": "10.0.0.1/8"}),
    ("networks/home/members", []), ("networks/home/members", ["laptop"]),
    ("networks/home/members", ["laptop:lo"]), ("networks/home/scope", "public"),
    ("networks/home/subnet", "192.168.1.0"), ("networks/home/subnet", "192.168.1.300/24"),
    ("networks/home/members", [f"h{i}:eth0" for i in range(1024)]),
    ("links", [{"endpoints": ["laptop:eth1"]}]),
    ("links", [{"endpoints": ["laptop:eth1", "router:x"], "mtu": 9000}]),
    ("description", ["not", "text"]),
])
def test_the_schema_refuses(path: str, value: Any) -> None:
    assert errors(with_(path, value)), (path, value)


def test_empty_values_mean_absent_as_in_the_validator() -> None:
    assert errors(with_("nodes/laptop", None)) == []
    assert errors(with_("links", None)) == []
    assert errors(with_("nodes/server/interfaces", None)) == []
    assert errors(with_("nodes/server/interfaces", {"eth0": []})) == []


def test_cli_prints_the_schema() -> None:
    proc = subprocess.run([sys.executable, "-m", "testbed", "schema"], cwd=REPO, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == SCHEMA


def test_conditions_and_events_in_the_schema() -> None:
    doc = yaml.safe_load((REPO / "topologies" / "home-pair.yaml").read_text())
    doc["links"][0]["conditions"] = {"delay": "20ms", "loss": {"p": "1%", "r": "30%"}}
    doc["networks"]["internet"]["conditions"] = "lte,loss=1%"
    doc["nodes"]["home-a"]["conditions"] = {"wan": {"preset": "satellite", "rate": "10mbit",
                                                    "mtu": 1400}}
    doc["events"] = ["home-a: reboot at 2s", {"node": "home-b", "action": "renumber",
                                               "iface": "wan", "at": "5s"}]
    assert errors(doc) == []
    defs = SCHEMA["definitions"]
    assert defs["event"]["anyOf"][1]["properties"]["action"]["enum"] == \
        ["reboot", "renumber", "expire", "down", "up"]
    assert "lte" in defs["conditions"]["anyOf"][1]["properties"]["preset"]["enum"]
    for bad in ({"delay": "50 parsecs"}, {"speed": "1mbit"}, {"mtu": 20},
                {"loss": {"p": "1%"}}, {"oversize": "squash"}):
        doc["links"][0]["conditions"] = bad
        assert errors(doc), bad
    doc["links"][0]["conditions"] = None
    doc["events"] = [{"node": "home-a", "action": "explode", "at": "1s"}]
    assert errors(doc)
