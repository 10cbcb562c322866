"""Servers on the emulated internet, started in their nodes when a lab comes up.

A node with `service: stun | turn | signaling` runs that server. Each one's
output goes to a log in the lab's folder, and each is waited for until it is
ready (a "ready" line, or coturn's socket) rather than slept for.

Secrets (the signaling server's key, coturn's password) live in files only root can
read (0600), next to the logs; what a server's description carries beyond this
process is `public(info)`: the paths of those files, never their contents (the state
file, `up` and `status` without --show-secrets).

The servers are started through a Host (what a live lab offers: start a process in
a node, run a command there, its folder), so this module needs nothing of the lab
itself: testbed.lab calls it, never the other way round.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peers.candidates import Address
from peers.signaling import peer_token
from testbed.coturn import (
    CERT_FILE,
    KEY_FILE,
    TurnConfig,
    certificate_argv,
    coturn_argv,
    make_credentials,
    wait_ready,
)
from testbed.errors import LabError
from testbed.topology import Node

STUN_PORT, STUN_ALT_PORT = 3478, 3479
TURN_PORT = 3478
# 443: a web application's signaling goes over HTTPS, which a corporate network lets out
# (type corporate) as it lets out TURN over TLS on the TURN server's 443.
SIGNALING_PORT = 443
READY_TIMEOUT_S = 5.0
SECRET_FILES = {"secret": "secret_file", "password": "password_file"}  # key -> its file's key


def public(info: Mapping[str, Any]) -> dict[str, Any]:
    """A server's description without its secrets (their files' paths stay)."""
    return {k: v for k, v in info.items() if k not in SECRET_FILES}


def with_secrets(info: Mapping[str, Any]) -> dict[str, Any]:
    """A public description with its secrets read back from their files (root only)."""
    out = dict(info)
    for key, file_key in SECRET_FILES.items():
        if file_key in info:
            try:
                out[key] = Path(info[file_key]).read_text().strip()
            except OSError as exc:
                out[key] = f"<unreadable: {exc.strerror}>"
    return out


def write_secret(path: Path, value: str) -> None:
    """Created 0600 from the start: never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    os.chmod(path, 0o600)  # an older file of that name keeps its mode through O_CREAT


@dataclass(frozen=True)
class PeerServers:
    """What a peer of a lab needs to know about its servers, and its credentials."""

    signaling: Address
    stun: Address
    turn: Address  # UDP, and TCP on the same port
    turn_user: str
    turn_pass: str
    secret: bytes  # the signaling server's; a peer gets a token derived from it
    turn_tls: Address | None = None  # TURN over TLS
    turn_cert: str | None = None  # the file of the certificate the TLS server presents

    @classmethod
    def of(cls, services: Mapping[str, Any]) -> PeerServers:
        """From a lab's `services` (what start_services returned)."""
        sig, stun, turn = services["signaling"], services["stun"], services["turn"]
        tls = (turn["address"], turn["tls_port"]) if turn.get("tls_port") else None
        return cls((sig["address"], sig["port"]), (stun["address"], stun["port"]),
                   (turn["address"], turn["port"]), turn["username"], turn["password"],
                   bytes.fromhex(sig["secret"]), tls, turn.get("cert"))

    def turn_ca(self) -> str:
        """The PEM a peer must find the TLS server presenting ('' without TLS)."""
        return Path(self.turn_cert).read_text() if self.turn_cert else ""

    def token(self, peer_id: str) -> str:
        """The signaling credential of the peer `peer_id` (peers.signaling)."""
        return peer_token(self.secret, peer_id)


class Host(Protocol):
    """The part of a live lab that starts servers (testbed.lab.Lab is one)."""

    name: str

    def workdir(self) -> Path: ...

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]: ...

    def python(self, node: str, module: str, *args: str,
               **kw: Any) -> subprocess.Popen[Any]: ...

    def run(self, node: str, argv: Sequence[str], *, check: bool = False,
            **kw: Any) -> subprocess.CompletedProcess[Any]: ...


def start_services(host: Host, nodes: Sequence[Node], *,
                   parallel: bool = False) -> dict[str, dict[str, Any]]:
    """Start each node's server; service name -> where it listens (and its log).
    `parallel` starts them all at once (a matrix lab's build overlaps its rulesets)."""
    wanted = [n for n in nodes if n.service]

    def start(node: Node) -> dict[str, Any]:
        assert node.service is not None
        return {"node": node.name, **STARTERS[node.service](host, node)}

    if parallel and len(wanted) > 1:
        with ThreadPoolExecutor(len(wanted)) as pool:
            infos = list(pool.map(start, wanted))
    else:
        infos = [start(n) for n in wanted]
    return {n.service: info for n, info in zip(wanted, infos, strict=True) if n.service}


def _wait_for_line(host: Host, proc: Any, log: Path, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if log.exists() and "ready" in log.read_text().split():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    tail = log.read_text()[-400:] if log.exists() else ""
    raise LabError(f"lab {host.name}: {what} did not become ready: {tail.strip()}")


def _start_stun(host: Host, node: Node) -> dict[str, Any]:
    addrs = [str(a.ip) for a in node.interfaces[0].addresses]
    d = host.workdir()
    log = d / f"stun-{node.name}.log"
    stats = d / f"stun-{node.name}.stats.json"
    with log.open("w") as out:
        proc = host.python(node.name, "peers.stun_server", "--primary", addrs[0],
                           "--alternate", addrs[1], "--port", str(STUN_PORT),
                           "--alt-port", str(STUN_ALT_PORT), "--stats-file", str(stats),
                           stdout=out, stderr=out, start_new_session=True)
    _wait_for_line(host, proc, log, f"STUN server on {node.name}")
    return {"address": addrs[0], "alternate": addrs[1], "port": STUN_PORT,
            "alt_port": STUN_ALT_PORT, "stats": str(stats), "log": str(log)}


def _start_signaling(host: Host, node: Node) -> dict[str, Any]:
    addr = str(node.interfaces[0].address.ip)
    log = host.workdir() / f"signaling-{node.name}.log"
    secret = secrets.token_hex(32)  # peers get tokens derived from it (peers.signaling)
    secret_file = host.workdir() / f"signaling-{node.name}.secret"
    write_secret(secret_file, secret)
    with log.open("w") as out:
        proc = host.python(node.name, "peers.signaling", "--listen", addr,
                           "--port", str(SIGNALING_PORT), "--secret-file", str(secret_file),
                           stdout=out, stderr=out, start_new_session=True)
    _wait_for_line(host, proc, log, f"signaling server on {node.name}")
    return {"address": addr, "port": SIGNALING_PORT, "log": str(log), "secret": secret,
            "secret_file": str(secret_file)}


def make_certificate(host: Host, d: Path, ip: str) -> tuple[Path, Path]:
    """The lab's self-signed certificate for TURN over TLS, and its key, in d."""
    try:
        proc = subprocess.run(certificate_argv(d, ip), capture_output=True, text=True,
                              timeout=READY_TIMEOUT_S)
    except FileNotFoundError:
        raise LabError("openssl is not installed (apt install openssl): each lab makes its "
                       "TURN server's certificate with it") from None
    if proc.returncode != 0:
        raise LabError(f"lab {host.name}: openssl could not make the TURN certificate: "
                       f"{proc.stderr.strip()[-300:]}")
    return d / CERT_FILE, d / KEY_FILE


def _start_turn(host: Host, node: Node) -> dict[str, Any]:
    addr = str(node.interfaces[0].address.ip)
    user, password = make_credentials(random.Random())  # fresh per lab
    d = host.workdir() / f"turn-{node.name}"
    d.mkdir(exist_ok=True)
    cert, key = make_certificate(host, d, addr)
    cfg = TurnConfig(listen_ip=addr, relay_ip=addr, username=user, password=password,
                     port=TURN_PORT, cert=cert, key=key)
    password_file = d / "password"
    write_secret(password_file, password)
    proc = host.popen(node.name, coturn_argv(cfg, d), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(cfg, lambda argv: host.run(node.name, argv, check=True, timeout=5).stdout,
                   lambda: proc.poll() is None, timeout=READY_TIMEOUT_S)
    except RuntimeError as exc:
        raise LabError(f"lab {host.name}: {exc}") from None
    return {"address": addr, "port": TURN_PORT, "tls_port": cfg.tls_port, "cert": str(cert),
            "realm": cfg.realm, "username": user, "password": password,
            "password_file": str(password_file),
            "log": str(d / "turnserver.log")}


STARTERS: dict[str, Callable[[Host, Node], dict[str, Any]]] = {
    "stun": _start_stun, "signaling": _start_signaling, "turn": _start_turn}
