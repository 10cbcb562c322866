"""The peer programs the testbed can run through the contract (docs/peers.md).

An `Adapter` says how to start a program (argv with {python}, {node} and {repo}
placeholders), what it supports (STUN, TURN, which kind of relay, which transport)
and how to read its version. `available()` tells what is installed here: the
`nat-testbed peers` listing. `command_adapter(path)` wraps a user's own program.

Python adapters need their PyPI package in the testbed's venv
(`scripts/install.sh --adapters`); Node adapters need node and the pinned packages in
peers/adapters/node/node_modules (`npm ci` there, which the same step runs).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.version import VERSION

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "peers" / "adapters" / "node"
LIBP2P_RELAY = "libp2p-relay"  # a lab service: a circuit relay v2 node on the internet
MIN_NODE = 20  # @roamhq/wrtc 0.10 and js-libp2p 3 (with labshim.mjs's polyfill)
DEFAULT_DEADLINE_S = 20.0  # seconds each contract program has to connect (docs/peers.md)
DEFAULT_DATA_S = 5.0  # after the connect deadline: to send and receive the data


@functools.cache
def node_major() -> int | None:
    """The major version of the node on PATH, or None if there is none."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "-p", "process.versions.node"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        return int(out.split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class AdapterError(ValueError):
    """An unknown adapter name or an unusable program path (a usage error: exit 2)."""


@dataclass(frozen=True)
class Adapter:
    name: str
    language: str
    argv: tuple[str, ...]
    description: str
    stun: bool = True
    turn: bool = True
    relay: str | None = "turn"  # the relay kind it falls back to, if any
    transport: str = "udp"
    python_dist: str | None = None  # PyPI distribution whose version is the adapter's
    node_package: str | None = None  # npm package likewise
    needs: tuple[str, ...] = ()  # lab services beyond STUN, TURN and the rendezvous
    # The protocol it speaks on the wire and through the rendezvous: only two programs
    # of one family can connect to each other (own probes, ICE, WebRTC, libp2p).
    family: str | None = "own"  # None: unknown (a user's program)

    @property
    def label(self) -> str:
        """Its name: a value of the matrix's peer_a and peer_b dimensions."""
        return self.name

    def command(self) -> list[str]:
        node = shutil.which("node") or "node"
        return [a.format(python=sys.executable, node=node, repo=REPO) for a in self.argv]

    def version(self) -> str | None:
        if self.python_dist:
            from importlib import metadata  # 20 ms: only `peers` and contract runs need it

            try:
                return metadata.version(self.python_dist)
            except metadata.PackageNotFoundError:
                return None
        if self.node_package:
            pkg = NODE_DIR / "node_modules" / self.node_package / "package.json"
            try:
                return str(json.loads(pkg.read_text())["version"])
            except (OSError, ValueError, KeyError):
                return None
        if self.language == "command":
            return None
        return VERSION

    def missing(self) -> str | None:
        """Why it cannot run here, or None."""
        if self.language == "node":
            major = node_major()
            if major is None:
                return "node is not installed (scripts/install.sh --adapters)"
            if major < MIN_NODE:
                return f"node {major} is older than {MIN_NODE}"
        if (self.python_dist or self.node_package) and self.version() is None:
            what = self.python_dist or self.node_package
            return f"{what} is not installed (scripts/install.sh --adapters)"
        if self.language == "command" and not os.access(self.argv[0], os.X_OK):
            return f"{self.argv[0]} is not an executable file"
        return None


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    Adapter("own", "python", ("{python}", "-m", "peers.adapters.own"),
            "the project's own peer (peers/session.py): STUN, simultaneous punching, TURN"),
    Adapter("aioice", "python", ("{python}", "-m", "peers.adapters.aioice_peer"),
            "aioice, the ICE agent under aiortc (RFC 8445), one UDP component",
            python_dist="aioice", family="ice"),
    Adapter("aioice-stun", "python", ("{python}", "-m", "peers.adapters.aioice_peer",
                                      "--stun-only"),
            "aioice with STUN only, no TURN: its direct / not-direct split (the test suite's "
            "independent reference over --nats all)", turn=False, relay=None,
            python_dist="aioice", family="ice"),
    Adapter("webrtc", "node", ("{node}", "{repo}/peers/adapters/node/webrtc.mjs"),
            "Chrome's libwebrtc through @roamhq/wrtc: ICE, DTLS, SCTP data channel",
            node_package="@roamhq/wrtc", family="webrtc"),
    Adapter("libp2p", "node", ("{node}", "--import", "{repo}/peers/adapters/node/labshim.mjs",
                               "{repo}/peers/adapters/node/libp2p.mjs"),
            "js-libp2p DCUtR over TCP, through a circuit relay v2 node on the lab's internet",
            stun=False, turn=False, relay="libp2p-circuit-relay-v2", transport="tcp",
            node_package="libp2p", needs=(LIBP2P_RELAY,), family="libp2p"),
    Adapter("sample", "python", ("{python}", "{repo}/examples/sample_peer.py"),
            "examples/sample_peer.py: the contract in a page of Python (STUN + punching only)",
            turn=False, relay=None, family="sample"),
)}


COMMAND = "command:"  # a user's program's name: command:<file name>
COMMANDS: dict[str, Adapter] = {}  # by name: the programs command_adapter() was given


def command_adapter(path: str) -> Adapter:
    """A user's own contract program, started as it is (it must be executable)."""
    p = Path(path).resolve()
    if not p.is_file() or not os.access(p, os.X_OK):
        raise AdapterError(f"--peer-command {path}: not an executable file")
    if any(ch in p.name for ch in ",= "):
        raise AdapterError(f"--peer-command {path}: a file name without ',', '=' or spaces")
    adapter = Adapter(f"{COMMAND}{p.name}", "command", (str(p),),
                      f"a program of the user's ({p})", relay="turn", family=None)
    COMMANDS[adapter.name] = adapter
    return adapter


def from_label(label: str) -> Adapter:
    """An adapter by its name (a matrix label): a known one, a program given to
    command_adapter() in this process, or a stand-in for one given elsewhere (a merge
    of another machine's records reads labels only)."""
    if label in ADAPTERS:
        return ADAPTERS[label]
    if label.startswith(COMMAND) and len(label) > len(COMMAND):
        if any(ch in label for ch in ",= "):
            raise ValueError(f"{label!r}: a file name without ',', '=' or spaces")
        return COMMANDS.get(label) or Adapter(
            label, "command", (label[len(COMMAND):],), "a program of the user's (not given "
            "here: --peer-command PATH)", relay="turn", family=None)
    raise ValueError(f"unknown peer {label!r} (one of: {', '.join(ADAPTERS)}, or "
                     f"{COMMAND}NAME for --peer-command)")


def common_protocol(a: Adapter, b: Adapter) -> str | None:
    """Why two programs cannot speak to each other, or None (an unknown family, a
    user's program, is given the benefit of the doubt)."""
    if None in (a.family, b.family) or a.family == b.family:
        return None
    return (f"no common protocol: {a.name} speaks {a.family}, {b.name} speaks {b.family}")


def modelled(a: Adapter) -> str | None:
    """Why the reference model (STUN, simultaneous UDP punching, a TURN fallback) does
    not describe this adapter's outcomes, or None."""
    if a.family is None:
        return f"{a.name} is a program of the user's: what it implements is unknown"
    if a.transport != "udp":
        return f"{a.name} connects over {a.transport}, the model is of UDP"
    if a.relay != "turn":
        return f"{a.name} has {'no relay' if a.relay is None else a.relay}, the model " \
               "falls back to TURN"
    return None


def get(name: str, flag: str = "--peer") -> Adapter:
    if name in ADAPTERS:
        return ADAPTERS[name]
    raise AdapterError(f"{flag}: unknown peer {name!r} (one of: {', '.join(ADAPTERS)})")


def available() -> list[dict[str, Any]]:
    """Every adapter with its version here and what it supports: `nat-testbed peers`."""
    out = []
    for a in ADAPTERS.values():
        why = a.missing()
        out.append({"name": a.name, "language": a.language, "available": why is None,
                    "version": a.version(), "missing": why, "stun": a.stun, "turn": a.turn,
                    "relay": a.relay, "transport": a.transport, "family": a.family,
                    "description": a.description})
    return out


def format_available(rows: list[dict[str, Any]]) -> str:
    w = max([4, *(len(r["name"]) for r in rows)])  # aioice-stun, a user's command:...
    head = f"{'peer':<{w}} {'language':<8} {'version':<9} {'STUN':<5} {'TURN':<5} " \
           f"{'relay':<25} {'transport':<9} status"
    lines = [head]
    for r in rows:
        yes = {True: "yes", False: "no"}
        status = "ok" if r["available"] else f"missing: {r['missing']}"
        lines.append(f"{r['name']:<{w}} {r['language']:<8} {r['version'] or '-':<9} "
                     f"{yes[r['stun']]:<5} {yes[r['turn']]:<5} {r['relay'] or '-':<25} "
                     f"{r['transport']:<9} {status}")
    return "\n".join(lines)
