"""Conditions applied to a live lab: one direction of a link is the egress of one interface.

    from testbed.conditions import parse_spec
    from testbed.impair import apply, clear
    imp = apply(lab, "home-a", "wan", parse_spec("delay=50ms,loss=2%"))
    imp.mechanism        # "netem" where the kernel has sch_netem, else "forwarder"
    clear(lab, "home-a", "wan")

Every impairment is recorded in the lab's state file under "impairments" (what
`status` and results metadata show), and its forwarder, if any, in "processes" (so
`down` and `clean LAB` stop it). Applying again to the same interface replaces the
conditions.
"""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from testbed import netns, ruleset, state
from testbed.conditions import Conditions, from_dict
from testbed.errors import LabError
from testbed.impair import plan
from testbed.netns import Netns
from testbed.topology import Topology
from testbed.topology import far_end as topology_far_end

# The forwarder creates a TAP and a socket per port, each under the kernel's RTNL lock,
# which other labs being built hold often: a 100-slot matrix lab (400 ports) took over
# 5 s at load 18 on 2 cores. A forwarder that dies is seen at once (its pipe closes).
READY_TIMEOUT_S = 5.0
READY_PER_PORT_S = 0.25
TUN = "/dev/net/tun"
Endpoint = tuple[str, str]  # (node or bridged segment, interface)


class Lab(Protocol):
    """What this module needs of a live lab (testbed.lab.Lab, one layer up, is one)."""

    name: str
    topo: Topology
    procs: list[subprocess.Popen[Any]]
    _state: dict[str, Any]

    def netns(self, key: str) -> str: ...

    def namespace(self, key: str) -> Netns: ...

    def run(self, node: str, argv: Sequence[str], *, check: bool = False,
            input: str | None = None, timeout: float | None = None,
            capture_output: bool = True, text: bool = True,
            **kw: Any) -> subprocess.CompletedProcess[Any]: ...

    def python(self, node: str, module: str, *args: str,
               **kw: Any) -> subprocess.Popen[Any]: ...

_netem: bool | None = None


@dataclass(frozen=True)
class Impairment:
    """One direction of a link under conditions: what runs, and where."""

    node: str
    iface: str
    conditions: Conditions
    mechanism: str
    parts: tuple[str, ...]
    far: Endpoint
    mtu_before: tuple[int, int] | None = None  # (near, far) MTUs to restore
    forwarder_pid: int | None = None
    tap: str | None = None

    @property
    def key(self) -> str:
        return f"{self.node}:{self.iface}"

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "iface": self.iface, "far": list(self.far),
                "mechanism": self.mechanism, "parts": list(self.parts),
                "conditions": self.conditions.to_dict(),
                "mtu_before": list(self.mtu_before) if self.mtu_before else None,
                "forwarder_pid": self.forwarder_pid, "tap": self.tap}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Impairment:
        mtu = d.get("mtu_before")
        return cls(d["node"], d["iface"], from_dict(d["conditions"]), d["mechanism"],
                   tuple(d["parts"]), (d["far"][0], d["far"][1]),
                   (int(mtu[0]), int(mtu[1])) if mtu else None, d.get("forwarder_pid"),
                   d.get("tap"))


# ---------------------------------------------------------------- choosing


def has_netem(lab: Lab, node: str) -> bool:
    """Whether the kernel has sch_netem: try to create one on a namespace's loopback
    (the kernel loads the module on demand where it is one). Cached: a kernel property."""
    global _netem
    if _netem is None:
        probe = lab.run(node, ["tc", "qdisc", "add", "dev", "lo", "root", "netem"],
                        check=False)
        _netem = probe.returncode == 0
        if _netem:
            lab.run(node, ["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
    return _netem


def choose(lab: Lab, node: str, mechanism: str = "auto") -> str:
    if mechanism == "auto":
        return "netem" if has_netem(lab, node) else "forwarder"
    if mechanism not in plan.MECHANISMS:
        raise LabError(f"unknown impairment mechanism {mechanism!r} "
                       f"(auto, {', '.join(plan.MECHANISMS)})")
    if mechanism == "netem" and not has_netem(lab, node):
        raise LabError("this kernel has no sch_netem (CONFIG_NET_SCH_NETEM): use the "
                       "forwarder mechanism")
    return mechanism


def far_end(lab: Lab, node: str, iface: str) -> Endpoint:
    """The other end of the veth that (node, iface) is one end of."""
    end = topology_far_end(lab.topo, node, iface)
    if end is None:
        raise LabError(f"lab {lab.name}: {node} has no interface {iface}")
    return end


# ---------------------------------------------------------------- applying


def apply(lab: Lab, node: str, iface: str, cond: Conditions, *,
          mechanism: str = "auto", always_forward: bool = False) -> Impairment:
    """Make the egress of `iface` on `node` (one direction of its link) behave as `cond`."""
    return apply_many(lab, {(node, iface): cond}, mechanism=mechanism,
                      always_forward=always_forward)[0]


def apply_many(lab: Lab, items: Mapping[Endpoint, Conditions], *,
               mechanism: str = "auto", always_forward: bool = False) -> list[Impairment]:
    """Apply several directions at once; the ones needing a forwarder share one process.
    `always_forward` runs the forwarder even for conditions the kernel does alone."""
    if not items:
        return []
    first = next(iter(items))[0]
    mech = choose(lab, first, mechanism)
    for (node, iface) in items:
        if f"{node}:{iface}" in _records(lab):
            clear(lab, node, iface)
    planned = {ep: (cond, plan.parts(cond, mech, always_forward), far_end(lab, *ep))
               for ep, cond in items.items()}
    fwd_eps = [ep for ep, (_, p, _) in planned.items() if p.scheduler and mech == "forwarder"]
    pid = _start_forwarder(lab, {ep: planned[ep][0] for ep in fwd_eps}) if fwd_eps else None
    out = []
    for ep, (cond, p, far) in planned.items():
        node, iface = ep
        mtu_before = _set_mtu(lab, ep, far, cond.mtu) if p.mtu else None
        for argv in plan.qdisc_commands(iface, cond, p):
            lab.run(node, argv, check=True)
        if p.far_drop:
            _nft(lab, far[0], plan.far_drop_chain(far[1], cond, p))
        tap = plan.tap_name(iface) if ep in fwd_eps else None
        if tap is not None:  # last: traffic flows unimpaired until the forwarder is ready
            _nft(lab, node, plan.forward_chain(iface, tap, plan.MARK))
        imp = Impairment(node, iface, cond, mech, p.names(), far, mtu_before,
                         pid if tap else None, tap)
        _records(lab)[imp.key] = imp.to_dict()
        out.append(imp)
    state.write_state(lab.name, lab._state)
    return out


def clear(lab: Lab, node: str, iface: str) -> bool:
    """Remove the conditions from one direction; False if it had none."""
    rec = _records(lab).pop(f"{node}:{iface}", None)
    if rec is None:
        return False
    imp = Impairment.from_dict(rec)
    if imp.tap:  # first, so no frame goes to a TAP that is about to vanish
        _nft(lab, node, plan.delete_chain("out", iface), check=False)
    if "tbf" in imp.parts or "netem" in imp.parts:
        lab.run(node, ["tc", "qdisc", "del", "dev", iface, "root"], check=False)
    if "nft-ingress-drop" in imp.parts:
        _nft(lab, imp.far[0], plan.delete_chain("in", imp.far[1]), check=False)
    if imp.mtu_before:
        lab.run(node, ["ip", "link", "set", "dev", iface, "mtu", str(imp.mtu_before[0])],
                check=True)
        lab.run(imp.far[0], ["ip", "link", "set", "dev", imp.far[1], "mtu",
                             str(imp.mtu_before[1])], check=True)
    if imp.forwarder_pid is not None and not any(
            r.get("forwarder_pid") == imp.forwarder_pid for r in _records(lab).values()):
        _stop_forwarder(lab, imp.forwarder_pid)
    state.write_state(lab.name, lab._state)
    return True


def clear_all(lab: Lab) -> None:
    for key in list(_records(lab)):
        node, iface = key.split(":", 1)
        clear(lab, node, iface)


def impairments(lab: Lab) -> list[Impairment]:
    return [Impairment.from_dict(r) for r in _records(lab).values()]


def summary(records: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a lab's conditions are and which mechanism applies them, from its state's
    "impairments" records: for `status` and results metadata. None: perfect links."""
    if not records:
        return None
    imps = [Impairment.from_dict(r) for r in records.values()]
    return {"mechanism": "+".join(sorted({i.mechanism for i in imps})),
            "directions": [{"from": i.key, "to": f"{i.far[0]}:{i.far[1]}",
                            "conditions": str(i.conditions), "parts": list(i.parts)}
                           for i in imps]}


def describe(records: Mapping[str, Any] | None) -> list[str]:
    """One line per conditioned direction, for a terminal."""
    s = summary(records)
    if s is None:
        return []
    return [f"{d['from']} -> {d['to']}: {d['conditions']} ({', '.join(d['parts'])})"
            for d in s["directions"]]


# ---------------------------------------------------------------- pieces


def _records(lab: Lab) -> dict[str, Any]:
    recs: dict[str, Any] = lab._state.setdefault("impairments", {})
    return recs


def _nft(lab: Lab, node: str, text: str, check: bool = True) -> None:
    """In-process (libnftables) where it can: a matrix lab loads hundreds of chains."""
    try:
        ruleset.load_ruleset(lab.namespace(node).fd, text, lab.netns(node))
    except LabError:
        if check:
            raise


def _mtu_of(lab: Lab, node: str, iface: str) -> int:
    out = lab.run(node, ["ip", "-o", "link", "show", "dev", iface], check=True).stdout.split()
    return int(out[out.index("mtu") + 1])


def _set_mtu(lab: Lab, ep: Endpoint, far: Endpoint, mtu: int | None) -> tuple[int, int]:
    assert mtu is not None
    before = (_mtu_of(lab, *ep), _mtu_of(lab, *far))
    for node, iface in (ep, far):
        lab.run(node, ["ip", "link", "set", "dev", iface, "mtu", str(mtu)], check=True)
    return before


def _log_path(lab: Lab, node: str) -> Path:
    d = state.STATE_DIR / lab.name
    d.mkdir(parents=True, exist_ok=True)
    return d / f"forwarder-{node}.log"


def tun_usable(tun: str = TUN) -> None:
    """The forwarder's TAPs come from /dev/net/tun: an ordinary user (rootless mode) can
    open it only where its mode lets everyone (0666, the distributions' default; root
    outside the user namespace is nobody in it). LabError in one line, before anything
    of the forwarder is started."""
    if os.access(tun, os.R_OK | os.W_OK):
        return
    try:
        mode = f"mode {stat.S_IMODE(os.stat(tun).st_mode):04o}"
    except OSError as exc:
        mode = exc.strerror or "missing"
    raise LabError(f"link conditions need the forwarder's TAP devices, and {tun} ({mode}) "
                   "cannot be opened by this user: make it 0666 as root (chmod 0666 "
                   f"{tun}; udev rules keep it), or run as root")


def _start_forwarder(lab: Lab, eps: Mapping[Endpoint, Conditions]) -> int:
    """One forwarder for `eps`, started in the first one's namespace; returns when it
    has created every TAP and socket (its "ready" line), never after a fixed sleep."""
    tun_usable()
    home = next(iter(eps))[0]
    spec = []
    for (node, iface), cond in eps.items():
        spec.append({"netns": None if node == home else str(netns.NETNS_DIR / lab.netns(node)),
                     "dev": iface, "tap": plan.tap_name(iface), "seed": cond.seed,
                     "conditions": cond.to_dict()})
    log = _log_path(lab, home)
    with log.open("a") as err:
        proc = lab.python(home, "testbed.impair.forwarder", "--spec", json.dumps(spec),
                          stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    assert proc.stdout is not None
    line = _read_line(proc.stdout, READY_TIMEOUT_S + READY_PER_PORT_S * len(spec))
    proc.stdout.close()
    if not line.startswith(b"ready"):
        proc.kill()
        proc.wait()
        tail = log.read_text()[-400:].strip()
        raise LabError(f"lab {lab.name}: impairment forwarder on {home} did not become "
                       f"ready ({len(spec)} ports): {tail or 'no output'}")
    return proc.pid


def _read_line(stream: Any, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 256)
        if not chunk:  # exited
            break
        buf += chunk
    return buf


def _stop_forwarder(lab: Lab, pid: int) -> None:
    for proc in list(lab.procs):
        if proc.pid == pid:
            proc.terminate()
            try:
                proc.wait(timeout=state.KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            lab.procs.remove(proc)
    procs = lab._state.get("processes", [])
    lab._state["processes"] = [p for p in procs if p.get("pid") != pid]
