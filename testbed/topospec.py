"""The topology file's vocabulary, defined once: keys, enumerations, name rules, limits.

The validator (testbed.topology) takes its key lists, allowed values, name and address
syntax and limits from the tables here, and json_schema() turns the same tables into
a JSON Schema (draft-07, the draft YAML language servers read) so that editors
complete and check topology files. The NAT section's values come from testbed.nat.

The schema checks names, types, allowed values and ranges. What needs the whole file
(an endpoint names a node that exists, an address lies in its segment's subnet, a
router has a way to the internet) only the validator checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from testbed import conditions, events, nat

KINDS = ("host", "router", "server")
SCOPES = ("lan", "cgn", "internet")
SERVICES = ("stun", "turn", "signaling")

MAX_NODE_NAME = 20  # namespace names are "<lab>-<node>"; keep them readable
MAX_IFNAME = 15  # the kernel's IFNAMSIZ - 1
RESERVED_IFNAMES = ("lo", "all", "default")  # the kernel refuses a veth by these names
MAX_BRIDGE_PORTS = 1023  # a network is a bridge: the 1,024th port fails with EXFULL
HUB_PORT_PREFIX = "p"  # a network's bridge namespace has port pK towards its K-th member


def hub_port(position: int) -> str:
    """The bridge namespace's interface towards a network's member at `position`."""
    return f"{HUB_PORT_PREFIX}{position}"


# Regular expressions written once, in the subset Python and ECMA-262 (JSON Schema's
# dialect) read alike: anchored here with \Z, in the schema with $.
NAME_FIRST, NAME_REST = "[a-z]", "[a-z0-9-]"
IFNAME_FIRST, IFNAME_REST = "[a-zA-Z]", "[a-zA-Z0-9_.-]"
NAME_PATTERN = f"{NAME_FIRST}{NAME_REST}*"
IFNAME_PATTERN = f"{IFNAME_FIRST}{IFNAME_REST}*"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PREFIXED_PATTERN = rf"{_OCTET}(\.{_OCTET}){{3}}/(3[0-2]|[12]?[0-9])"  # 192.168.1.10/24
PORT_RANGE_PATTERN = "^[0-9]{1,5}-[0-9]{1,5}$"

NAME_RE = re.compile(rf"^{NAME_PATTERN}\Z")  # \Z: "$" would allow a final newline
IFNAME_RE = re.compile(rf"^{IFNAME_PATTERN}\Z")
PREFIXED_RE = re.compile(rf"^{PREFIXED_PATTERN}\Z")


@dataclass(frozen=True)
class Field:
    """One key of a section: its name, the JSON Schema of its value, and what it means."""

    key: str
    schema: dict[str, Any]
    doc: str


def _enum(values: Iterable[Any], doc: str) -> dict[str, Any]:
    return {"enum": [v.value if isinstance(v, Enum) else v for v in values], "description": doc}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`key:` with no value means the same as leaving the key out."""
    return {"anyOf": [schema, {"type": "null"}]}


NAT_FIELDS = (
    Field("type", _enum(nat.TYPES, "a classic name (RFC 3489), corporate, or a router that "
                        "does not translate"),
          "A classic NAT type, corporate, or none/firewall; not together with "
          "mapping/filtering."),
    Field("mapping", _enum(nat.Behaviour, "RFC 4787 mapping behaviour"),
          "Which outbound flows share one external port (default endpoint-independent)."),
    Field("filtering", _enum(nat.Behaviour, "RFC 4787 filtering behaviour"),
          "Which inbound packets a mapping lets in (default address-and-port-dependent)."),
    Field("port-allocation", _enum(nat.PortAllocation, "how the external port is chosen"),
          "preserve (default), sequential or random."),
    Field("hairpinning", {"type": "boolean"},
          "Whether two hosts behind this NAT reach each other via its public address."),
    Field("mapping-timeout", {"type": "integer", "minimum": 1,
                              "maximum": nat.MAX_MAPPING_TIMEOUT,
                              "default": nat.DEFAULT_MAPPING_TIMEOUT},
          "Seconds an idle UDP mapping lives (RFC 4787 REQ-5: at least 120)."),
    Field("unsolicited-syn", {**_enum(nat.SynReply, "what an unsolicited inbound TCP SYN "
                                                    "gets"), "default": nat.SynReply.DROP.value},
          "drop (default: silence, RFC 5382 REQ-4a) or rst (a TCP reset at once, as some "
          "routers do; it aborts a simultaneous open whose far SYN arrives first)."),
    Field("tcp-established-timeout", {"type": "integer", "minimum": 1,
                                      "maximum": nat.MAX_TCP_TIMEOUT,
                                      "default": nat.DEFAULT_TCP_ESTABLISHED_TIMEOUT},
          "Seconds an idle established TCP connection and its mapping live (RFC 5382 "
          "REQ-5: at least 7440)."),
    Field("tcp-transitory-timeout", {"type": "integer", "minimum": 1,
                                     "maximum": nat.MAX_TCP_TIMEOUT,
                                     "default": nat.DEFAULT_TCP_TRANSITORY_TIMEOUT},
          "Seconds a TCP connection being opened or closed lives (RFC 5382 REQ-5: at least "
          "240); not more than tcp-established-timeout."),
    Field("egress", {**_enum(nat.Egress, "which new flows the LAN may open outside"),
                     "default": nat.Egress.OPEN.value},
          "open (default) or corporate: only TCP 80, 443 and UDP 53 (and ping) may leave, as "
          "in a corporate network; type corporate is symmetric with corporate egress."),
    Field("port-range", {"type": "string", "pattern": PORT_RANGE_PATTERN},
          "LO-HI: the external ports the NAT picks from, e.g. 1024-65535 (within 1-65535)."),
    Field("port-block", {"type": "integer", "minimum": 1, "maximum": 65535},
          "Carrier-grade NAT (RFC 6888 REQ-4, RFC 7422): ports per subscriber, in one block."),
    Field("pooling", _enum(nat.POOLINGS, "address pooling over the WAN addresses"),
          "paired (default: one public address per host, RFC 4787 REQ-2) or arbitrary."),
    Field("max-sessions-per-host", {"type": "integer", "minimum": 1,
                                    "maximum": nat.MAX_SESSIONS},
          "New mappings of a host beyond this many are dropped (RFC 6888 REQ-4)."),
    Field("forwards", {"type": "array", "maxItems": nat.MAX_FORWARDS, "items": {
        "type": "object", "additionalProperties": False, "required": ["external", "to"],
        "properties": {
            "proto": {"enum": list(nat.FORWARD_PROTOS), "default": "udp"},
            "external": {"type": "integer", "minimum": 1, "maximum": 65535},
            "to": {"type": "string", "pattern": f"^{NAME_PATTERN}:[0-9]{{1,5}}$"}}}},
          "Static port forwards: [{proto: udp, external: 25565, to: alice:25565}]."),
    Field("port-mapping", {"type": "array", "uniqueItems": True,
                           "items": {"enum": list(nat.PORT_MAPPING_PROTOCOLS)}},
          "Run a port-mapping daemon (miniupnpd) answering these protocols on the LAN."),
    Field("mapping-quota", {"type": "integer", "minimum": 1, "maximum": 1024,
                            "default": nat.DEFAULT_QUOTA},
          "External ports each LAN host may map through the daemon."),
)
DEFAULT_FIELDS = (
    Field("kind", _enum(KINDS, "node kind"), "The kind of every node that sets none."),
    Field("nat", _ref("nat"), "The nat section of every router that sets none."),
)
NODE_FIELDS = (
    Field("kind", _enum(KINDS, "node kind"), "host (the default), router or server."),
    Field("nat", _ref("nat"), "A router's NAT behaviour; only routers have one."),
    Field("interfaces", _or_null(_ref("interfaces")),
          "Explicit addresses: interface name -> address or list of addresses."),
    Field("service", _or_null(_enum(SERVICES, "a server started in this node")),
          "stun, turn or signaling: a server started in this node."),
    Field("description", _or_null({"type": "string"}), "Free text."),
    Field("conditions", _or_null({"type": "object", "propertyNames": _ref("ifname"),
                                  "additionalProperties": _ref("conditions")}),
          "Link conditions per interface: both directions of that interface's link "
          "(they override the link's or network's own)."),
)
LINK_FIELDS = (
    Field("endpoints", {"type": "array", "items": _ref("endpoint"), "minItems": 2,
                        "maxItems": 2}, "The two ends of the veth pair, node:interface."),
    Field("subnet", _ref("subnet"), "The link's subnet (default: from the address plan)."),
    Field("scope", _enum(SCOPES, "what part of the world the segment is"),
          "lan (default), cgn or internet."),
    Field("conditions", _or_null(_ref("conditions")),
          "Delay, jitter, loss, rate... on both directions of the link (docs/conditions.md)."),
)
NETWORK_FIELDS = (
    Field("members", {"type": "array", "items": _ref("endpoint"), "minItems": 1,
                      "maxItems": MAX_BRIDGE_PORTS},
          "The endpoints on this network (node:interface), joined by a bridge."),
    Field("subnet", _ref("subnet"), "The network's subnet (default: from the address plan)."),
    Field("scope", _enum(SCOPES, "what part of the world the segment is"),
          "lan (default), cgn or internet."),
    Field("conditions", _or_null(_ref("conditions")),
          "Conditions on every member's link to the network, both directions."),
)
TOP_FIELDS = (
    Field("name", _or_null({"type": "string", "pattern": f"^{NAME_PATTERN}$"}),
          "The topology's name (default: from the file name)."),
    Field("description", _or_null({"type": "string"}), "Free text."),
    Field("defaults", _or_null(_ref("defaults")), "What every node inherits: kind and nat."),
    Field("nodes", {"type": "object", "minProperties": 1,
                    "propertyNames": _ref("name"),
                    "additionalProperties": _or_null(_ref("node"))},
          "Node name -> node (a host when left empty)."),
    Field("links", _or_null({"type": "array", "items": _ref("link")}),
          "Point-to-point links (veth pairs)."),
    Field("networks", _or_null({"type": "object", "propertyNames": _ref("name"),
                                "additionalProperties": _ref("network")}),
          "Network name -> LAN segment joined by a bridge."),
    Field("events", _or_null({"type": "array", "items": _ref("event")}),
          "What happens during a call: reboots, renumbering, mapping expiry, links down "
          "and up (docs/conditions.md)."),
)
REQUIRED_TOP = ("nodes",)


def keys(fields: tuple[Field, ...]) -> tuple[str, ...]:
    return tuple(f.key for f in fields)


TOP_KEYS = keys(TOP_FIELDS)
DEFAULT_KEYS = keys(DEFAULT_FIELDS)
NODE_KEYS = keys(NODE_FIELDS)
LINK_KEYS = keys(LINK_FIELDS)
NETWORK_KEYS = keys(NETWORK_FIELDS)


def _section(fields: tuple[Field, ...], doc: str, required: tuple[str, ...] = ()
             ) -> dict[str, Any]:
    props = {f.key: {**f.schema, "description": f.doc} for f in fields}
    out: dict[str, Any] = {"type": "object", "description": doc, "properties": props,
                           "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


def _ifname_pattern() -> str:
    """Interface names: the syntax, at most MAX_IFNAME characters, none the kernel refuses."""
    reserved = "|".join(RESERVED_IFNAMES)
    return f"(?!(?:{reserved})$){IFNAME_FIRST}{IFNAME_REST}{{0,{MAX_IFNAME - 1}}}"


def _name_pattern() -> str:
    return f"{NAME_FIRST}{NAME_REST}{{0,{MAX_NODE_NAME - 1}}}"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a topology file (`nat-testbed schema` prints it)."""
    address = {"type": "string", "pattern": f"^{PREFIXED_PATTERN}$",
               "description": "an IPv4 address with its prefix, e.g. 192.168.1.10/24"}
    definitions = {
        "name": {"type": "string", "pattern": f"^{NAME_PATTERN}$", "maxLength": MAX_NODE_NAME,
                 "description": "lowercase letters, digits and '-', starting with a letter"},
        "ifname": {"type": "string", "pattern": f"^{_ifname_pattern()}$",
                   "description": f"an interface name, at most {MAX_IFNAME} characters"},
        "endpoint": {"type": "string", "pattern": f"^{_name_pattern()}:{_ifname_pattern()}$",
                     "description": "node:interface, e.g. alice:eth0"},
        "address": address,
        "subnet": {**address, "description": "an IPv4 network, e.g. 192.168.1.0/24"},
        "interfaces": {"type": "object", "propertyNames": _ref("ifname"),
                       "additionalProperties": {"anyOf": [
                           _ref("address"), {"type": "array", "items": _ref("address")}]}},
        "nat": _section(NAT_FIELDS, "A router's NAT: a classic type, or mapping and "
                        "filtering (RFC 4787); {} is Linux's own (EIM, APDF)."),
        "defaults": _section(DEFAULT_FIELDS, "Values nodes inherit unless they set their own."),
        "node": _section(NODE_FIELDS, "A host, router or server (one network namespace)."),
        "link": _section(LINK_FIELDS, "A point-to-point link.", ("endpoints",)),
        "network": _section(NETWORK_FIELDS, "A LAN segment joined by a bridge.", ("members",)),
        **conditions_definitions(),
        **event_definitions(),
    }
    top = _section(TOP_FIELDS, "A nat-testbed topology: nodes, links and networks "
                   "(docs/topology.md).", REQUIRED_TOP)
    return {"$schema": "http://json-schema.org/draft-07/schema#",
            "$id": "urn:nat-testbed:topology", "title": "nat-testbed topology",
            **top, "definitions": definitions}


# ---------------------------------------------------------------- conditions and events


def _number_or(pattern: str, doc: str) -> dict[str, Any]:
    """A value with a unit ('50ms'), or the number 0, which needs none."""
    return {"anyOf": [{"type": "string", "pattern": pattern}, {"enum": [0]}],
            "description": doc}


_NUM = r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
DURATION_PATTERN = rf"^ *[+-]?{_NUM} *(us|µs|ms|s)? *$"  # looser than the parser: a
#   schema may let through what the validator then refuses, never the other way round
PERCENT_PATTERN = rf"^ *[+-]?{_NUM} *%? *$"
RATE_PATTERN = rf"^ *[+-]?{_NUM} *([bB][iI][tT]|[kKmMgG][bB][iI][tT]) *$"


def conditions_definitions() -> dict[str, Any]:
    """A `conditions:` block: a preset's name (or the one-line form 'lte,loss=1%'), or a
    mapping of the parameters (testbed.conditions)."""
    duration = _number_or(DURATION_PATTERN, "a duration: 50ms, 1.5s, 200us, or 0")
    percent = _number_or(PERCENT_PATTERN, "a percentage: 2%, 0.5%, or 0")
    ge = {"type": "object", "additionalProperties": False,
          "description": "bursty loss: a Gilbert-Elliott chain (p: good->bad, r: bad->good)",
          "required": ["p", "r"],
          "properties": {"model": {"enum": list(conditions.LOSS_MODELS)},
                         "p": _ref("percent"), "r": _ref("percent"),
                         "loss-bad": _ref("percent"), "loss-good": _ref("percent")}}
    props: dict[str, Any] = {
        "preset": {"enum": list(conditions.PRESETS), "description": "start from a preset"},
        "delay": _ref("duration"), "jitter": _ref("duration"),
        "loss": {"anyOf": [_ref("percent"), ge]},
        "reorder": _ref("percent"), "duplicate": _ref("percent"),
        "rate": {"type": "string", "pattern": RATE_PATTERN,
                 "description": "bit/s with tc's units: 10mbit, 512kbit (k = 1000)"},
        "mtu": {"anyOf": [{"type": "integer", "minimum": conditions.MIN_MTU,
                           "maximum": conditions.MAX_MTU},
                          {"type": "string", "pattern": "^ *[0-9]+ *$"}]},
        "oversize": {"enum": list(conditions.OVERSIZE)},
    }
    assert tuple(props) == conditions.FIELDS
    block = {"anyOf": [
        {"type": "string", "description": "a preset (" + ", ".join(conditions.PRESETS)
                                          + "), or 'PRESET,KEY=VALUE,...' / 'KEY=VALUE,...'"},
        {"type": "object", "additionalProperties": False, "properties": props}],
        "description": "link conditions on one direction each way (docs/conditions.md)"}
    return {"duration": duration, "percent": percent, "conditions": block}


def event_definitions() -> dict[str, Any]:
    """An event: the one-line text, or the same as a mapping (testbed.events)."""
    when = _ref("duration")
    mapping: dict[str, Any] = {"type": "object", "additionalProperties": False,
                               "required": ["node", "action", "at"],
                               "properties": {"node": _ref("name"),
                                              "action": {"enum": list(events.ACTIONS)},
                                              "iface": _ref("ifname"), "for": when,
                                              "at": when}}
    assert tuple(mapping["properties"]) == events.FIELDS
    text = {"type": "string", "pattern": r"^ *[a-z][a-z0-9-]* *: *[a-z-]+( +[^ ]+)?"
                                         r"( +for +[^ ]+)? +at +[^ ]+ *$",
            "description": "NODE: ACTION [IFACE] [for DURATION] at TIME, e.g. "
                           "'home-a: reboot at 2s'"}
    return {"event": {"anyOf": [text, mapping]}}
