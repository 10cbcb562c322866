"""The lesson machinery: build the lab, capture, run the steps, narrate from the captures.

A lesson is data (title, the seed idea it shows, a topology, a takeaway) plus an
experiment: a function that drives real sockets opened inside the lab's
namespaces, in steps. After each step the captures are brought up to date
(`Capture.settle`) and the step is told from them: each packet as it arrived
at a router and as it left (or that it never left, and the nft rule that
dropped it), and the router's NAT table before and after. The experiment then
states facts it checked against the captures; `nat-testbed lesson N` exits 1
if one does not hold.

Steps wait for outcomes, never for time: a packet that should arrive is
received on its socket; a packet that should be dropped is waited for in the
router's nft trace (`Run.dropped`).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers import stun
from testbed import nattable
from testbed.lab import Lab
from testbed.nattable import NatTable
from testbed.netns import entered
from testbed.topology import Topology, parse_topology
from testbed.trace import narrate
from testbed.trace.capture import Capture
from testbed.trace.captured import Captured
from testbed.trace.folder import tell, write_folder
from testbed.trace.narrate import Crossing
from testbed.trace.nfttrace import Trace
from testbed.trace.packets import Packet

# Waits for a packet that should arrive (a packet that should not is waited for in the
# router's trace): generous, since it returns as soon as the packet is there, and a
# stalled vCPU or softirq can hold a forwarded packet for seconds (seen in CI).
RECV_TIMEOUT_S = 5.0
# A step's capture normally settles within milliseconds; past this, the step says what
# the pcaps still miss (a failed fact) instead of narrating from a partial capture.
STEP_SETTLE_S = 10.0
CONNTRACK_REWRITE = ("rewritten by conntrack, no rule consulted: the NAT rules see only a "
                     "flow's first packet")
DROP_TIMEOUT_S = 1.0
Say = Callable[[str], None]


@dataclass(frozen=True)
class Fact:
    """A claim the lesson makes, checked against the captures."""

    claim: str
    ok: bool
    evidence: str = ""


@dataclass(frozen=True)
class Lesson:
    number: int
    slug: str
    title: str
    seed: str  # the idea, as the explainer texts the lessons follow put it
    topology: str  # YAML
    routers: tuple[str, ...]  # captured on every interface, traced, tables shown
    experiment: Callable[[Run], None]
    takeaway: str
    explore: tuple[str, ...] = ()  # commands to poke at it; {lab} and {py} filled in
    lanes: tuple[str, ...] = ()  # sequence diagram columns, left to right
    # The diagram in the narration too (always in --out's sequence.txt and .html): off
    # where it would not fit a terminal (lesson 6 has ten lanes; its table says it all).
    diagram_in_terminal: bool = True

    def topo(self) -> Topology:
        return parse_topology(self.topology, f"<lesson {self.number} {self.slug}>")


@dataclass
class Step:
    number: int
    title: str
    look: str
    start: dict[str, int]  # packets per tap before the step
    end: dict[str, int] = field(default_factory=dict)
    crossings: list[Crossing] = field(default_factory=list)
    before: dict[str, NatTable] = field(default_factory=dict)
    after: dict[str, NatTable] = field(default_factory=dict)

    def packets(self, captured: Captured, tap: str) -> list[Packet]:
        lo, hi = self.start.get(tap, 0), self.end.get(tap, 0)
        return [p for p in captured.packets[tap] if lo <= p.index < hi]

    def find(self, match: Callable[[Crossing], bool], router: str | None = None
             ) -> Crossing | None:
        return next((c for c in self.crossings
                     if match(c) and (router is None or c.router == router)), None)

    def crossing(self, payload: bytes, router: str | None = None,
                 start: bool = False) -> Crossing | None:
        """The step's first crossing carrying `payload` (at `router`); with `start`,
        whose payload begins with it."""
        for c in self.crossings:
            body = c.arrived.payload
            if (body.startswith(payload) if start else body == payload) and \
                    (router is None or c.router == router):
                return c
        return None


@dataclass(frozen=True)
class Sent:
    node: str
    src: str  # ip:port on the sending host
    dst: str
    payload: bytes


class Endpoint:
    """A UDP socket bound inside a node's namespace, driven from this process."""

    def __init__(self, run: Run, node: str, port: int, ip: str | None = None) -> None:
        self.run = run
        self.node = node
        self.ip = ip or run.lab.addr(node)
        self.port = port
        with entered(run.lab.namespace(node).fd):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.ip, port))
        run.closers.append(self.sock.close)

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def send(self, dst: str | tuple[str, int], payload: bytes) -> Sent:
        ip, port = _split(dst)
        self.sock.sendto(payload, (ip, port))
        return Sent(self.node, self.addr, f"{ip}:{port}", payload)

    def recv(self, timeout: float = RECV_TIMEOUT_S) -> tuple[bytes, str] | None:
        """The next datagram and who it came from ('ip:port'), or None."""
        self.sock.settimeout(timeout)
        try:
            data, src = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data, f"{src[0]}:{src[1]}"


def _split(ep: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(ep, tuple):
        return ep
    ip, port = ep.rsplit(":", 1)
    return ip, int(port)


@dataclass(frozen=True)
class StunAsk:
    """A Binding request sent and what its sender decoded from the answer."""

    client: str
    server: str
    request: bytes
    tid: bytes
    mapped: tuple[str, int] | None

    def request_at(self, step: Step, router: str) -> Crossing | None:
        return step.crossing(self.request, router)

    def answer_at(self, step: Step, router: str) -> Crossing | None:
        """The answer's crossing of `router` (matched by transaction id)."""
        return step.find(lambda c: c.arrived.proto == "udp" and c.arrived.payload[8:20] ==
                         self.tid and narrate.mapped_address(c.arrived.payload) is not None,
                         router)


@dataclass
class LessonResult:
    lesson: Lesson
    lab: str
    steps: list[Step]
    facts: list[Fact]
    captured: Captured
    elapsed_s: float
    text: str
    values: dict[str, Any]  # what the experiment measured, for tests and --json

    @property
    def ok(self) -> bool:
        return bool(self.facts) and all(f.ok for f in self.facts)


class Run:
    """One lesson being run: its lab, its capture, its steps and facts."""

    def __init__(self, lesson: Lesson, lab: Lab, cap: Capture, say: Say) -> None:
        self.lesson = lesson
        self.lab = lab
        self.cap = cap
        self._say = say
        self.lines: list[str] = []
        self.steps: list[Step] = []
        self.facts: list[Fact] = []
        self.values: dict[str, Any] = {}
        self.closers: list[Callable[[], None]] = []
        self._tables: dict[str, NatTable] = {}

    # ------------------------------------------------------------ output

    def say(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            self.lines.append(line)
            self._say(line)

    def fact(self, claim: str, ok: bool, evidence: str = "") -> bool:
        # Claims are often `a and b and ...` over values read from captures, which yield
        # None or a string when a capture missed a packet: a fact is true or false.
        ok = bool(ok)
        self.facts.append(Fact(claim, ok, evidence))
        self.say(f"  {'[ok]' if ok else '[FAILED]'} {claim}" +
                 (f"\n         ({evidence})" if evidence and not ok else ""))
        return ok

    # ------------------------------------------------------------ doing

    def endpoint(self, node: str, port: int, ip: str | None = None) -> Endpoint:
        return Endpoint(self, node, port, ip)

    def addr(self, node: str, iface: str | None = None) -> str:
        return self.lab.addr(node, iface)

    def wan(self, router: str) -> str:
        return self.lab.addr(router, self.lab.node(router).upstream)

    def stun(self, ep: Endpoint, server: str) -> StunAsk:
        """Send a STUN Binding request from `ep` and wait for the answer."""
        req = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST)
        data = stun.pack(req, fingerprint=True)
        ep.send(server, data)
        got = ep.recv()
        mapped = narrate.mapped_address(got[0]) if got else None
        return StunAsk(ep.addr, server, data, req.transaction_id, mapped)

    def table(self, router: str) -> NatTable:
        return nattable.snapshot(self.lab, router)

    def dropped(self, router: str, sent: Sent, timeout: float = DROP_TIMEOUT_S) -> Trace | None:
        """Wait for `router` to drop the packet carrying sent.payload (its nft trace)."""
        head = sent.payload[:12]
        return self.cap.wait_verdict(
            router, lambda t: t.verdict == "drop" and t.payload[:len(head)] == head
            and bool(t.payload), timeout)

    @contextlib.contextmanager
    def step(self, title: str, look: str = "", *,
             tables: Sequence[str] | None = None, narrate_: bool = True) -> Iterator[Step]:
        routers = list(self.lesson.routers if tables is None else tables)
        st = Step(len(self.steps) + 1, title, look, self.cap.counts())
        for r in routers:
            st.before[r] = self._tables.get(r) or self.table(r)
        self.say(f"\nStep {st.number}. {title}")
        if look:
            self.say(f"  Look for: {look}")
        yield st
        if not self.cap.settle(STEP_SETTLE_S):
            self.fact(f"step {st.number}'s capture caught up with the kernel's packet "
                      f"counters within {STEP_SETTLE_S:g} s", False,
                      "; ".join(self.cap.lagging()))
        st.end = self.cap.counts()
        captured = self.cap.result()
        wans = {r: self.lab.node(r).upstream or "" for r in self.lesson.routers}
        st.crossings = narrate.between(narrate.all_crossings(captured, wans), st.start, st.end)
        for r in routers:
            st.after[r] = self._tables[r] = self.table(r)
        self.steps.append(st)
        if narrate_:
            self.say(self.tell(st))

    # ------------------------------------------------------------ telling

    def side(self, router: str, iface: str) -> str:
        up = self.lab.node(router).upstream
        return f"{iface} ({'internet' if iface == up else 'LAN'} side)"

    def tell_crossing(self, c: Crossing) -> str:
        what = narrate.describe(c.arrived)
        came = f"arrived on {self.side(c.router, c.arrived.iface)}:"
        lines = [f"  at {c.router}: {what}", f"    {came:<34} {c.arrived.flow}"]
        if c.left is not None:
            change = _change(c.arrived, c.left)
            went = f"left on {self.side(c.router, c.left.iface)}:"
            lines.append(f"    {went:<34} {c.left.flow}"
                         + (f"   <- {change} rewritten" if change else "   (unchanged)"))
            lines.append(f"    = {c.sentence()}")
            if c.nat_rule:
                hint = narrate.nat_rule_hint(c.nat_rule)
                lines.append(f"    translated by the rule   {c.nat_rule}")
                if hint:
                    lines.append(f"      (it {hint})")
            elif c.rewritten:  # a later packet of a flow: the NAT chains never see it
                lines.append(f"    {CONNTRACK_REWRITE}")
            if c.rule and not c.nat_rule and c.arrived.iface == self.lab.node(c.router).upstream:
                known = "   (a flow conntrack knows)" if "established" in c.rule else ""
                lines.append(f"    let in by the rule   {c.rule}{known}")
        elif c.verdict == "local":
            lines.append("    for the router itself" + (f"  ({c.rule})" if c.rule else ""))
        else:
            lines.append(f"    never left: DROPPED by the rule   {c.rule or '(no trace)'}")
        return "\n".join(lines)

    def tell(self, st: Step) -> str:
        out = [self.tell_crossing(c) for c in st.crossings]
        if not st.crossings:
            out.append("  (no packet crossed a router)")
        for r, after in st.after.items():
            new, gone = nattable.diff(st.before[r], after)
            moved = nattable.state_changes(st.before[r], after)
            head = f"  NAT table of {r}"
            if st.number == 1:
                out.append(f"{head} before:\n{nattable.format_table(st.before[r], '    ')}")
            if new.empty and gone.empty and not moved:
                out.append(f"{head}: unchanged")
                continue
            out.append(f"{head} after (+ new, - gone, ~ changed):")
            out += [f"    ~ conntrack  {nattable.conntrack_line(e)}  (was {was})"
                    for e, was in moved]
            out += [f"    + conntrack  {nattable.conntrack_line(e)}" for e in new.conntrack]
            out += [f"    + nft @{e.map:<11} {e.text()}" for e in new.maps]
            out += [f"    - conntrack  {nattable.conntrack_line(e)}" for e in gone.conntrack]
            out += [f"    - nft @{e.map:<11} {e.text()}" for e in gone.maps]
            kept = len(after.conntrack) - len(new.conntrack) - len(moved)
            if kept:
                out.append(f"    ({kept} earlier conntrack entr{'y' if kept == 1 else 'ies'} "
                           "still there)")
        return "\n".join(out)


def _change(a: Packet, b: Packet) -> str:
    parts = []
    if a.src_ep != b.src_ep:
        parts.append("source")
    if a.dst_ep != b.dst_ep:
        parts.append("destination")
    return " and ".join(parts)


# --------------------------------------------------------------------------- running


def describe_lab(topo: Topology) -> list[str]:
    out = []
    width = max(len(n.name) for n in topo.nodes) + 2
    for n in topo.nodes:
        addrs = ", ".join(f"{i.name} {a.ip}" if len(n.interfaces) > 1 else str(a.ip)
                          for i in n.interfaces for a in i.addresses)
        nat = f"  [{n.nat.label} NAT]" if n.nat is not None and n.translates else ""
        out.append(f"    {n.name:<{width}} {n.kind:<7} {addrs}{nat}")
    return out


def run_lesson(lesson: Lesson, *, out_dir: str | Path | None = None, keep: bool = False,
               say: Say = print, lab_name: str | None = None) -> LessonResult:
    """Build the lesson's lab (named `lab_name`, or at random), capture, run the
    experiment with narration, tear down (unless `keep`). Pcaps, traces and the
    sequence diagram (txt, html) go to out_dir if given."""
    t0 = time.monotonic()
    tmp = None if out_dir is not None else tempfile.mkdtemp(prefix="nat-testbed-lesson-")
    d = Path(out_dir or tmp or ".").resolve()
    topo = lesson.topo()
    lab = Lab(topo, name=lab_name)
    lab.up()
    run: Run | None = None
    try:
        with Capture(lab, d, routers=lesson.routers) as cap:
            run = Run(lesson, lab, cap, say)
            _header(run, topo, d if out_dir else None)
            try:
                lesson.experiment(run)
            except Exception as exc:  # a lesson that breaks says so, as a failed fact
                run.fact("the experiment ran to its end", False, f"{type(exc).__name__}: {exc}")
            finally:
                for close in run.closers:
                    close()
        captured = cap.result()
        _footer(run, captured, d if out_dir else None, keep)
    finally:
        if keep:
            lab.detach()
        else:
            lab.down()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    assert run is not None
    return LessonResult(lesson, lab.name, run.steps, run.facts, captured,
                        time.monotonic() - t0, "\n".join(run.lines), run.values)


def _header(run: Run, topo: Topology, out: Path | None) -> None:
    ls = run.lesson
    run.say(f"Lesson {ls.number}: {ls.title}")
    run.say(_wrap(f'You may have read: "{ls.seed}"', "  "))
    run.say(f"\n  Lab {run.lab.name} ({topo.name}):")
    run.say("\n".join(describe_lab(topo)))
    taps = ", ".join(run.cap.taps)
    run.say(f"  Capturing with tcpdump on {taps}; each router's rule decisions with nft trace.")
    if out is not None:
        run.say(f"  Pcaps go to {out}/")


def _footer(run: Run, captured: Captured, out: Path | None, keep: bool) -> None:
    ls = run.lesson
    story = tell(captured, run.lab.topo, ls.routers, ls.lanes or ls.routers,
                 f"Lesson {ls.number}: {ls.title}")
    if ls.diagram_in_terminal:
        run.say("\nThe whole lesson as a sequence diagram (one arrow per packet per link):")
        run.say(story.diagram(titled=False))
    if out is not None:
        write_folder(out, story)
    ok = sum(f.ok for f in run.facts)
    run.say(f"\nChecked against the captures: {ok} of {len(run.facts)} facts hold"
            + ("" if captured.complete else " (warning: a capture did not catch up with "
               "its interface counters)"))
    run.say(_wrap(f"Takeaway: {ls.takeaway}", ""))
    if ls.explore:
        lab = run.lab.name if keep else "LAB"
        run.say("\nTry it yourself:" + ("" if keep else
                f"  (nat-testbed lesson {ls.number} --keep leaves the lab up; LAB is its name)"))
        for line in ls.explore:
            run.say("  " + line.format(lab=lab, py=sys.executable))
        if keep:
            run.say(f"  nat-testbed down {lab}        # when you are done")
    if out is not None:
        run.say(f"\nFiles in {out}/: sequence.html (the diagram, for a browser), "
                "sequence.txt, crossings.txt,\n  one pcap per interface (tcpdump -r, "
                "Wireshark), each router's nft trace, capture.json")


def _wrap(text: str, indent: str, width: int = 96) -> str:
    return textwrap.fill(text, width=width, initial_indent=indent,
                         subsequent_indent=indent + "  ")
