"""Servers on the emulated internet, started in their nodes when a lab comes up.

A node with `service: stun | turn | signaling` runs that server. Each one's
output goes to a log under the lab's state directory, and the lab waits for
each to be ready (a "ready" line, or coturn's socket) rather than sleeping.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed import state
from testbed.errors import LabError
from testbed.topology import Node
from testbed.turn import TurnConfig, coturn_argv, make_credentials, wait_ready

if TYPE_CHECKING:
    from testbed.lab import Lab

STUN_PORT, STUN_ALT_PORT = 3478, 3479
TURN_PORT = 3478
SIGNALING_PORT = 7000
READY_TIMEOUT_S = 5.0


def lab_dir(lab: Lab) -> Path:
    d = state.STATE_DIR / lab.name
    d.mkdir(parents=True, exist_ok=True)
    return d


def start_services(lab: Lab) -> None:
    for node in lab.topo.nodes:
        if node.service:
            info = STARTERS[node.service](lab, node)
            lab.services[node.service] = {"node": node.name, **info}
    if lab.services:
        lab._state["services"] = lab.services
        state.write_state(lab.name, lab._state)


def _wait_for_line(lab: Lab, proc: Any, log: Path, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if log.exists() and "ready" in log.read_text().split():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    tail = log.read_text()[-400:] if log.exists() else ""
    raise LabError(f"lab {lab.name}: {what} did not become ready: {tail.strip()}")


def _start_stun(lab: Lab, node: Node) -> dict[str, Any]:
    addrs = [str(a.ip) for a in node.interfaces[0].addresses]
    d = lab_dir(lab)
    log = d / f"stun-{node.name}.log"
    stats = d / f"stun-{node.name}.stats.json"
    with log.open("w") as out:
        proc = lab.python(node.name, "peers.stun_server", "--primary", addrs[0],
                          "--alternate", addrs[1], "--port", str(STUN_PORT),
                          "--alt-port", str(STUN_ALT_PORT), "--stats-file", str(stats),
                          stdout=out, stderr=out, start_new_session=True)
    _wait_for_line(lab, proc, log, f"STUN server on {node.name}")
    return {"address": addrs[0], "alternate": addrs[1], "port": STUN_PORT,
            "alt_port": STUN_ALT_PORT, "stats": str(stats), "log": str(log)}


def _start_signaling(lab: Lab, node: Node) -> dict[str, Any]:
    addr = str(node.interfaces[0].address.ip)
    log = lab_dir(lab) / f"signaling-{node.name}.log"
    secret, secret_file = secrets.token_hex(32), lab_dir(lab) / f"signaling-{node.name}.secret"
    secret_file.write_text(secret)  # peers get tokens derived from it (peers.signaling)
    os.chmod(secret_file, 0o600)
    with log.open("w") as out:
        proc = lab.python(node.name, "peers.signaling", "--listen", addr,
                          "--port", str(SIGNALING_PORT), "--secret-file", str(secret_file),
                          stdout=out, stderr=out, start_new_session=True)
    _wait_for_line(lab, proc, log, f"signaling server on {node.name}")
    return {"address": addr, "port": SIGNALING_PORT, "log": str(log), "secret": secret}


def _start_turn(lab: Lab, node: Node) -> dict[str, Any]:
    addr = str(node.interfaces[0].address.ip)
    user, password = make_credentials(random.Random())  # fresh per lab
    cfg = TurnConfig(listen_ip=addr, relay_ip=addr, username=user, password=password,
                     port=TURN_PORT)
    d = lab_dir(lab) / f"turn-{node.name}"
    d.mkdir(exist_ok=True)
    proc = lab.popen(node.name, coturn_argv(cfg, d), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(cfg, lambda argv: lab.run(node.name, argv).stdout,
                   lambda: proc.poll() is None, timeout=READY_TIMEOUT_S)
    except RuntimeError as exc:
        raise LabError(f"lab {lab.name}: {exc}") from None
    return {"address": addr, "port": TURN_PORT, "realm": cfg.realm, "username": user,
            "password": password, "log": str(d / "turnserver.log")}


STARTERS = {"stun": _start_stun, "signaling": _start_signaling, "turn": _start_turn}
