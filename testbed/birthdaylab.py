"""The birthday study on real kernels: many trials of Tailscale's birthday probing.

One lab: a hard host behind the hard NAT, an easy host behind the easy NAT, the
project's STUN server on the emulated internet. Trials run in batches of
`concurrency` at once, all from one selector loop in this process (sockets opened in
the hosts' namespaces, so every packet crosses the real nftables NATs):

1. the easy side opens a fresh socket and learns its public endpoint with STUN;
2. the hard side opens `sockets` fresh sockets and sends from each an authenticated
   probe (peers.probe) to that endpoint, three times a few ms apart (the easy NAT
   drops them; each opens a mapping on the hard NAT, on a port of its choosing);
3. the easy side sends authenticated probes, numbered 1, 2, ... to distinct random
   ports of the hard side's public address, at `rate` per second;
4. a probe that lands on an open port crosses the hard NAT and reaches a hard socket,
   which checks it (HMAC, fresh number) and answers from there; the answer crosses
   the easy NAT (the easy side probed that port), which ends the trial. Its result is
   the index of the first probe that got through.

Concurrent trials do not help each other: a probe landing on another trial's open
port is dropped by the hard NAT's filter (that mapping sent to another endpoint).
Before that, the hard router's conntrack table is read: how many of each trial's
mappings it really holds in the probed range. After each batch both routers' rulesets
are loaded again (fresh maps) and their conntrack tables emptied, so every batch
starts from a fresh NAT.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from peers import probe as pr
from peers import stun
from peers.birthday import probe_ports
from testbed.lab import Lab
from testbed.nat import NatSpec, nat_section
from testbed.netns import entered
from testbed.study import StudyConfig
from testbed.topology import parse_topology

STUN_PRIMARY, STUN_ALTERNATE, STUN_PORT = "203.0.113.3", "203.0.113.4", 3478
OPEN_REPEATS, OPEN_GAP_S = 3, 0.003  # each hard socket's opening probe, and its repeats
SETTLE_S = 0.02  # after the last opening probe, before the easy side's first probe
GRACE_S = 0.2  # after the last probe, for a late answer
STUN_TIMEOUT_S = 2.0
_REPLY_DPORT = re.compile(r"\bdst=(\S+) sport=(\d+) dport=(\d+)")


@dataclass
class TrialResult:
    first_hit: int | None  # 0-based index of the first probe that got through
    probes_sent: int
    open_in_range: int = -1  # the hard NAT's mappings toward this trial in the range
    answered: bool = False  # the hard side's answer crossed back through the easy NAT


@dataclass
class StudyRun:
    trials: list[TrialResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    lab: str = ""
    hard_wan: str = ""


def study_topology(hard: NatSpec, easy: NatSpec) -> str:
    nodes: dict[str, Any] = {
        "hard": {"kind": "host"}, "easy": {"kind": "host"},
        "nat-hard": {"kind": "router", "nat": nat_section(hard)},
        "nat-easy": {"kind": "router", "nat": nat_section(easy)},
        "stun": {"kind": "server", "service": "stun",
                 "interfaces": {"eth0": [f"{STUN_PRIMARY}/24", f"{STUN_ALTERNATE}/24"]}},
    }
    doc = {"name": "birthday", "nodes": nodes,
           "links": [{"endpoints": ["hard:eth0", "nat-hard:lan"]},
                     {"endpoints": ["easy:eth0", "nat-easy:lan"]}],
           "networks": {"internet": {"scope": "internet",
                                     "members": ["nat-hard:wan", "nat-easy:wan", "stun:eth0"]}}}
    return yaml.safe_dump(doc, sort_keys=False)


class Trial:
    """One trial's sockets and state; the loop calls tick() and on_datagram()."""

    def __init__(self, lab: Lab, cfg: StudyConfig, rng: random.Random, hard_wan: str) -> None:
        self.cfg = cfg
        b = cfg.birthday
        with entered(lab.namespace("easy").fd):
            self.easy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with entered(lab.namespace("hard").fd):
            self.hard = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                         for _ in range(b.sockets)]
        self.easy.bind((lab.addr("easy"), 0))
        for s in self.hard:
            s.bind((lab.addr("hard"), 0))
        self.key = os.urandom(32)
        self.ports = probe_ports(rng, b)
        self.hard_wan = hard_wan
        self.tid = os.urandom(12)
        self.srflx: tuple[str, int] | None = None
        self.state = "stun"
        self.t_next = 0.0
        self.t_stun = 0.0
        self.opened = 0  # rounds of opening probes sent
        self.sent = 0
        self.t_probe0 = 0.0
        self.first_hit: int | None = None
        self.answered = False
        self.window = pr.ReplayWindow()
        self.seq = 0

    def sockets(self) -> list[tuple[socket.socket, int]]:
        return [(self.easy, -1), *((s, i) for i, s in enumerate(self.hard))]

    def close(self) -> None:
        for s, _ in self.sockets():
            s.close()

    @property
    def done(self) -> bool:
        return self.state == "done"

    def tick(self, now: float) -> None:
        if self.state == "stun":
            if self.t_stun == 0.0:
                self.t_stun = now
            if now - self.t_stun > STUN_TIMEOUT_S:
                raise RuntimeError("birthday study: the STUN server did not answer")
            req = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST,
                                   transaction_id=self.tid)
            self.easy.sendto(stun.pack(req), (STUN_PRIMARY, STUN_PORT))
            self.t_next = now + 0.2
        elif self.state == "open":
            assert self.srflx is not None
            for s in self.hard:
                self.seq += 1
                data = pr.probe(self.key, "hard", "easy", os.urandom(pr.NONCE_LEN), seq=self.seq)
                _send(s, data, self.srflx)
            self.opened += 1
            if self.opened < OPEN_REPEATS:
                self.t_next = now + OPEN_GAP_S
            else:
                self.state, self.t_probe0 = "probe", now + SETTLE_S
                self.t_next = self.t_probe0
        elif self.state == "probe":
            self._probe(now)

    def _probe(self, now: float) -> None:
        b = self.cfg.birthday
        allowed = min(b.probes, int((now - self.t_probe0) * b.rate + 1e-6) + 1)
        while self.sent < allowed:
            data = pr.probe(self.key, "easy", "hard", os.urandom(pr.NONCE_LEN),
                            seq=self.sent + 1)
            _send(self.easy, data, (self.hard_wan, self.ports[self.sent]))
            self.sent += 1
        if self.sent >= b.probes:
            self.state = "grace"
            self.t_next = now + GRACE_S
        else:
            self.t_next = self.t_probe0 + self.sent / b.rate

    def on_timeout_grace(self, now: float) -> None:
        if self.state == "grace" and now >= self.t_next:
            self.state = "done"

    def on_datagram(self, which: int, data: bytes, src: tuple[str, int], now: float) -> None:
        if which == -1:
            self._on_easy(data, now)
            return
        try:  # a hard socket: an easy probe got through the hard NAT
            p = pr.decode(self.key, data, sender="easy", receiver="hard")
        except pr.ProbeError:
            return
        if p.kind != pr.PROBE or not self.window.accept(p.seq):
            return
        index = p.seq - 1
        if self.first_hit is None or index < self.first_hit:
            self.first_hit = index
        self.seq += 1
        _send(self.hard[which], pr.ack(self.key, "hard", "easy", p.nonce, src, seq=self.seq), src)

    def _on_easy(self, data: bytes, now: float) -> None:
        if self.state == "stun" and stun.is_stun(data):
            try:
                msg = stun.unpack(data)
            except stun.StunError:
                return
            mapped = msg.get("XOR-MAPPED-ADDRESS")
            if msg.transaction_id == self.tid and mapped is not None:
                self.srflx = (mapped[0], mapped[1])
                self.state, self.t_next = "open", now
            return
        if not pr.is_probe(data):
            return
        try:
            p = pr.decode(self.key, data, sender="hard", receiver="easy")
        except pr.ProbeError:
            return
        if p.kind == pr.ACK and self.first_hit is not None:
            self.answered = True
            self.state = "done"  # the round trip closed: stop probing

    def result(self) -> TrialResult:
        return TrialResult(self.first_hit, self.sent, answered=self.answered)


def _send(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
    try:
        sock.sendto(data, addr)
    except (BlockingIOError, ConnectionRefusedError):
        pass  # a full queue or an ICMP error of an earlier probe: a lost probe


def run_batch(trials: list[Trial]) -> None:
    sel = selectors.DefaultSelector()
    try:
        for t in trials:
            for s, which in t.sockets():
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, (t, which))
        now = time.monotonic()
        for t in trials:
            t.t_next = now
        while not all(t.done for t in trials):
            now = time.monotonic()
            for t in trials:
                if not t.done and now >= t.t_next:
                    if t.state == "grace":
                        t.on_timeout_grace(now)
                    else:
                        t.tick(now)
            due = min((t.t_next for t in trials if not t.done), default=now)
            for key, _ in sel.select(max(0.0, due - time.monotonic())):
                t, which = key.data
                for _ in range(256):
                    try:
                        data, src = key.fileobj.recvfrom(2048)  # type: ignore[union-attr]
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    t.on_datagram(which, data, (src[0], src[1]), time.monotonic())
    finally:
        sel.close()


def open_mappings(lab: Lab, hard_wan: str, lo: int, hi: int) -> dict[tuple[str, int], int]:
    """From the hard router's conntrack table: per easy endpoint, how many mappings toward
    it hold an external port in lo-hi (the reply tuple's destination port)."""
    out = lab.run("nat-hard", ["conntrack", "-L", "-p", "udp"], timeout=30).stdout
    counts: dict[tuple[str, int], int] = {}
    for line in out.splitlines():
        found = _REPLY_DPORT.findall(line)
        if len(found) < 2:
            continue
        rdst, rdport = found[1][0], found[1][2]
        if rdst == hard_wan and lo <= int(rdport) <= hi:
            key = (found[0][0], int(found[0][2]))  # original destination: the easy endpoint
            counts[key] = counts.get(key, 0) + 1
    return counts


def flush(lab: Lab, node: str) -> None:
    """A fresh NAT for the next batch: its ruleset loaded again (which replaces the
    table, maps and all, in one transaction) and its conntrack table emptied."""
    lab.apply_nat(lab.node(node))
    lab.run(node, ["conntrack", "-F"], timeout=30)


def run_study(cfg: StudyConfig, *, progress: Callable[[int, int], None] = lambda d, n: None,
              lab_name: str | None = None) -> StudyRun:
    rng = random.Random(cfg.seed)
    topo = parse_topology(study_topology(cfg.hard, cfg.easy), "<study birthday>")
    hard_wan = str(topo.node("nat-hard").iface("wan").address.ip)
    run = StudyRun(hard_wan=hard_wan)
    t0 = time.monotonic()
    b = cfg.birthday
    with Lab(topo, name=lab_name) as lab:
        run.lab = lab.name
        while len(run.trials) < cfg.trials:
            n = min(cfg.concurrency, cfg.trials - len(run.trials))
            batch = [Trial(lab, cfg, rng, hard_wan) for _ in range(n)]
            try:
                run_batch(batch)
                counts = open_mappings(lab, hard_wan, b.port_lo, b.port_hi)
                for t in batch:
                    r = t.result()
                    r.open_in_range = counts.get(t.srflx, 0) if t.srflx else 0
                    run.trials.append(r)
            finally:
                for t in batch:
                    t.close()
            flush(lab, "nat-hard")
            flush(lab, "nat-easy")
            progress(len(run.trials), cfg.trials)
    run.elapsed_s = time.monotonic() - t0
    return run
