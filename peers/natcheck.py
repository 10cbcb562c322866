"""RFC 5780 NAT behaviour discovery client.

    python -m peers.natcheck --server 203.0.113.3 [--port 3478] [--json]
                             [--lifetime --lifetime-max 10] [--transport tcp]

Over UDP by default; --transport tcp runs the same tests over TCP connections
(peers.natcheck_tcp).

Runs, against a server with two addresses and two ports (peers.stun_server, coturn):
  mapping     Test I / II / III from one socket (RFC 5780 4.3)
  filtering   Test I then CHANGE-REQUEST ip+port / port from a second socket that has only
              talked to the primary address (4.4), so the mapping tests cannot open its filter
  hairpinning a third socket sends a Binding request to the first one's mapped address (4.5)
  port preservation  mapped port == local port
  lifetime    optional binary search for the mapping lifetime (4.6), bounded by --lifetime-max

Tests that can fail run concurrently, so a default run costs at most one retransmission
timeout (0.1 + 0.2 + 0.2 + 0.2 s by default) on top of a few round trips.

The verdicts are pure functions of the observations (classify_mapping, classify_filtering,
lifetime_search); the socket layer takes its clock and sleep function as parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peers import stun
from peers.stun import Address, Class, Message, Method

EIM_EIF = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_PORT_DEPENDENT = "address-and-port-dependent"
UNKNOWN = "unknown"
PROGRESS = "progress: "  # the prefix of --progress lines on stderr

Clock = Callable[[], float]


# --- pure decision logic -----------------------------------------------------------------


def classify_mapping(test1: Address | None, test2: Address | None, test3: Address | None) -> str:
    """RFC 5780 4.3 from the mapped addresses of Tests I, II and III (None: no answer)."""
    if test1 is None or test2 is None:
        return UNKNOWN
    if test2 == test1:
        return EIM_EIF
    if test3 is None:
        return UNKNOWN
    return ADDRESS_DEPENDENT if test3 == test2 else ADDRESS_PORT_DEPENDENT


def classify_filtering(test1_ok: bool, test2_ok: bool, test3_ok: bool) -> str:
    """RFC 5780 4.4: test2 asked for change IP+port, test3 for change port only.

    A test is ok only if its answer came from the changed address it asked for.
    """
    if not test1_ok:
        return UNKNOWN
    if test2_ok:
        return EIM_EIF
    return ADDRESS_DEPENDENT if test3_ok else ADDRESS_PORT_DEPENDENT


def port_preserved(local: Address, mapped: Address | None) -> bool:
    return mapped is not None and mapped[1] == local[1]


def retransmit_waits(rto: float, tries: int, max_rto: float) -> tuple[float, ...]:
    """How long to wait after each send: rto doubling, capped at max_rto (RFC 8489 6.2.1)."""
    return tuple(min(rto * 2**i, max_rto) for i in range(tries))


@dataclass(frozen=True)
class LifetimeResult:
    lifetime_s: float  # longest idle time the mapping was seen to survive
    at_least: bool  # True: it survived the upper bound, the real lifetime may be longer
    trials: tuple[tuple[float, bool], ...]


def max_trials(max_s: float, resolution: float) -> int:
    """How many idle periods lifetime_search tries at most: the upper bound, then one
    halving of (0, max_s] per trial until the interval is within ``resolution``."""
    return 1 + max(0, math.ceil(math.log2(max_s / resolution)))


def lifetime_search(
    alive_after: Callable[[float], bool], max_s: float, resolution: float,
    on_trial: Callable[[int, float], None] | None = None,
) -> LifetimeResult:
    """Binary search of the mapping lifetime in (0, max_s] to within ``resolution`` seconds.

    ``alive_after(t)`` refreshes a mapping, stays idle t seconds and says if it survived;
    ``on_trial(n, t)`` hears of the n-th trial (1-based) before it starts.
    """
    trials: list[tuple[float, bool]] = []

    def probe(t: float) -> bool:
        if on_trial is not None:
            on_trial(len(trials) + 1, t)
        alive = alive_after(t)
        trials.append((t, alive))
        return alive

    if probe(max_s):
        return LifetimeResult(max_s, True, tuple(trials))
    lo, hi = 0.0, max_s  # alive after lo, dead after hi
    while hi - lo > resolution:
        mid = round((lo + hi) / 2, 6)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return LifetimeResult(lo, False, tuple(trials))


# --- STUN transactions over real sockets --------------------------------------------------


@dataclass
class Probe:
    """One STUN transaction; the answer is awaited on ``listen`` (for hairpinning that is
    another of our sockets, and the 'answer' is the request itself)."""

    name: str
    send: socket.socket
    dest: Address
    request: Message
    listen: socket.socket
    answer: Message | None = None
    answer_from: Address | None = None
    sends: int = 0
    rtt_ms: float | None = None
    send_errors: list[str] = field(default_factory=list)

    def evidence(self) -> dict[str, Any]:
        return {
            "sent_from": list(_sockname(self.send)),
            "sent_to": list(self.dest),
            "change_request": list(self.request.get("CHANGE-REQUEST", (False, False))),
            "sends": self.sends,
            "answered": self.answer is not None,
            "answer_from": list(self.answer_from) if self.answer_from else None,
            "mapped": _list(self.mapped()),
            "response_origin": _list(self.answer.get("RESPONSE-ORIGIN")) if self.answer else None,
            "other_address": _list(self.answer.get("OTHER-ADDRESS")) if self.answer else None,
            "rtt_ms": self.rtt_ms,
            "send_errors": self.send_errors,
        }

    def mapped(self) -> Address | None:
        if self.answer is None or self.answer.msg_class is not Class.SUCCESS:
            return None
        value = self.answer.get("XOR-MAPPED-ADDRESS") or self.answer.get("MAPPED-ADDRESS")
        return value if value is None else (value[0], value[1])


def _list(addr: Address | None) -> list[Any] | None:
    return None if addr is None else [addr[0], addr[1]]


def _sockname(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return (host, port)


def binding_request(
    change: tuple[bool, bool] | None = None, response_port: int | None = None
) -> Message:
    attrs: list[tuple[str, Any]] = [("SOFTWARE", "nat-testbed natcheck")]
    if change is not None:
        attrs.append(("CHANGE-REQUEST", change))
    if response_port is not None:
        attrs.append(("RESPONSE-PORT", response_port))
    return Message.new(Method.BINDING, Class.REQUEST, attrs)


def run_probes(probes: Sequence[Probe], waits: Sequence[float], clock: Clock) -> None:
    """Run STUN transactions concurrently with retransmissions until each is answered or
    has used up ``waits``."""
    by_tid = {p.request.transaction_id: p for p in probes}
    packed = {p.name: stun.pack(p.request, fingerprint=True) for p in probes}
    sel = selectors.DefaultSelector()
    for sock in {id(p.listen): p.listen for p in probes}.values():
        sel.register(sock, selectors.EVENT_READ)
    start = clock()
    next_send = {p.name: start for p in probes}
    first_send: dict[str, float] = {}
    try:
        while True:
            now = clock()
            pending = [p for p in probes if p.answer is None]
            for p in pending:
                if p.sends < len(waits) and now >= next_send[p.name]:
                    _send(p, packed[p.name])
                    first_send.setdefault(p.name, now)
                    next_send[p.name] = now + waits[p.sends - 1]
            live = [p for p in pending if p.sends < len(waits) or now < next_send[p.name]]
            if not live:
                return
            timeout = max(0.0, min(next_send[p.name] for p in live) - now)
            for key, _ in sel.select(timeout):
                _receive(key.fileobj, by_tid, first_send, clock)  # type: ignore[arg-type]
    finally:
        sel.close()


def _send(p: Probe, data: bytes) -> None:
    p.sends += 1
    try:
        p.send.sendto(data, p.dest)
    except OSError as exc:  # e.g. EPERM from a firewall: counts as a lost datagram
        p.send_errors.append(str(exc))


def _receive(
    sock: socket.socket, by_tid: dict[bytes, Probe], first_send: dict[str, float], clock: Clock
) -> None:
    while True:
        try:
            data, src = sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP error queued on the socket
            continue
        try:
            msg = stun.unpack(data)
        except stun.StunError:
            continue
        p = by_tid.get(msg.transaction_id)
        if p is None or p.answer is not None or p.listen is not sock:
            continue
        p.answer, p.answer_from = msg, (src[0], src[1])
        p.rtt_ms = round((clock() - first_send[p.name]) * 1000, 3)


# --- the discovery run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    server: str
    port: int = 3478
    bind: str | None = None
    rto: float = 0.1
    tries: int = 4
    max_rto: float = 0.2
    lifetime: bool = False
    lifetime_max: float = 10.0
    lifetime_resolution: float = 0.5
    transport: str = "udp"  # or "tcp" (peers.natcheck_tcp)
    allocations: int = 0  # new mappings to observe (pooling, port blocks), one socket each
    progress: bool = False  # a line per phase and lifetime trial on stderr

    def waits(self) -> tuple[float, ...]:
        return retransmit_waits(self.rto, self.tries, self.max_rto)


def local_ip_towards(server: Address) -> str:
    """Source address the kernel picks for ``server`` (connect() on UDP sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(server)
        return str(s.getsockname()[0])


def _udp_socket(ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.setblocking(False)
    return sock


def discover(
    settings: Settings, clock: Clock = time.monotonic, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    primary = (settings.server, settings.port)
    ip = settings.bind or local_ip_towards(primary)
    socks = [_udp_socket(ip) for _ in range(3)]
    try:
        return _discover(settings, primary, *socks, clock=clock, sleep=sleep)
    finally:
        for s in socks:
            s.close()


def _discover(
    settings: Settings,
    primary: Address,
    a: socket.socket,
    f: socket.socket,
    b: socket.socket,
    *,
    clock: Clock,
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    started = clock()
    waits = settings.waits()
    say_progress(settings, "RFC 5780 tests: mapping, filtering, hairpinning")
    m1 = Probe("mapping_test_1", a, primary, binding_request(), a)
    f1 = Probe("filtering_test_1", f, primary, binding_request(), f)
    run_probes([m1, f1], waits, clock)
    local = _sockname(a)
    mapped = m1.mapped()
    other = m1.answer.get("OTHER-ADDRESS") if m1.answer else None
    probes = [m1, f1]
    verdict_inputs: dict[str, Any] = {}
    if mapped is not None and other is not None:
        alt_ip, alt_port = other
        m2 = Probe("mapping_test_2", a, (alt_ip, primary[1]), binding_request(), a)
        m3 = Probe("mapping_test_3", a, (alt_ip, alt_port), binding_request(), a)
        f2 = Probe("filtering_test_2", f, primary, binding_request((True, True)), f)
        f3 = Probe("filtering_test_3", f, primary, binding_request((False, True)), f)
        hp = Probe("hairpinning", b, mapped, binding_request(), a)
        run_probes([m2, m3, f2, f3, hp], waits, clock)
        probes += [m2, m3, f2, f3, hp]
        verdict_inputs = {
            "mapping": classify_mapping(mapped, m2.mapped(), m3.mapped()),
            "filtering": classify_filtering(
                f1.answer is not None,
                f2.answer_from == (alt_ip, alt_port),
                f3.answer_from == (primary[0], alt_port),
            ),
            "hairpinning": hp.answer is not None,
        }
    result: dict[str, Any] = {
        "transport": "udp",
        "server": list(primary),
        "mapping": verdict_inputs.get("mapping", UNKNOWN),
        "filtering": verdict_inputs.get("filtering", UNKNOWN),
        "hairpinning": verdict_inputs.get("hairpinning"),
        "port_preservation": port_preserved(local, mapped),
        "nat_present": None if mapped is None else mapped != local,
        "mapped_address": _list(mapped),
        "local_address": list(local),
        "other_address": _list(other),
        "lifetime_s": None,
        "tests": {p.name: p.evidence() for p in probes},
        "notes": _notes(mapped, other),
    }
    if settings.lifetime and mapped is not None:
        most = max_trials(settings.lifetime_max, settings.lifetime_resolution)
        t_lt = clock()

        def trial(n: int, idle: float) -> None:
            say_progress(settings, f"mapping lifetime: trial {n} of at most {most}: idle "
                                f"{idle:g} s ({clock() - t_lt:.0f} s so far)")

        lt = lifetime_search(
            lambda t: _alive_after(t, primary, a, b, waits, clock, sleep),
            settings.lifetime_max,
            settings.lifetime_resolution,
            trial,
        )
        result["lifetime_s"] = lt.lifetime_s
        result["tests"]["lifetime"] = {
            "at_least": lt.at_least,
            "max_s": settings.lifetime_max,
            "resolution_s": settings.lifetime_resolution,
            "trials": [{"idle_s": t, "alive": alive} for t, alive in lt.trials],
        }
    if settings.allocations and mapped is not None:
        say_progress(settings, f"{settings.allocations} new mappings, one socket each: pooling "
                    "and the ports allocated")
        result["allocations"] = _allocations(settings, primary, a.getsockname()[0], waits,
                                             clock)
        result["allocation"] = describe_allocations(
            [tuple(x) for x in result["allocations"] if x is not None])
    result["elapsed_s"] = round(clock() - started, 3)
    return result


def _allocations(settings: Settings, primary: Address, ip: str, waits: Sequence[float],
                 clock: Clock) -> list[list[Any] | None]:
    """The external endpoint of `settings.allocations` new mappings, one fresh socket each
    (None where a binding went unanswered: e.g. a session cap dropped it)."""
    socks = [_udp_socket(ip) for _ in range(settings.allocations)]
    try:
        probes = [Probe(f"allocation_{i}", s, primary, binding_request(), s)
                  for i, s in enumerate(socks)]
        run_probes(probes, waits, clock)
        return [_list(p.mapped()) for p in probes]
    finally:
        for s in socks:
            s.close()


def describe_allocations(seen: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """What new mappings of one host show: how many external addresses (one: paired
    pooling or a single address; more: arbitrary pooling, RFC 4787 REQ-2) and the span
    of external ports (inside one port block, RFC 7422, if the NAT allocates in blocks)."""
    if not seen:
        return {"mappings": 0, "addresses": [], "pooling": UNKNOWN, "ports": None}
    addrs = sorted({str(a) for a, _ in seen})
    ports = [int(p) for _, p in seen]
    return {"mappings": len(seen), "addresses": addrs,
            "pooling": "paired" if len(addrs) == 1 else "arbitrary",
            "ports": [min(ports), max(ports)]}


def say_progress(settings: Settings, text: str) -> None:
    if settings.progress:
        print(f"{PROGRESS}{text}", file=sys.stderr, flush=True)


def _notes(mapped: Address | None, other: Address | None) -> list[str]:
    if mapped is None:
        return ["no answer to Test I: UDP to the server is blocked or the server is down"]
    if other is None:
        return ["the server sent no OTHER-ADDRESS: it cannot run RFC 5780 tests"]
    return []


def _alive_after(
    idle: float,
    server: Address,
    x: socket.socket,
    y: socket.socket,
    waits: Sequence[float],
    clock: Clock,
    sleep: Callable[[float], None],
) -> bool:
    """RFC 5780 4.6: refresh X's mapping, stay idle, then ask the server (from Y) to answer
    to X's mapped port with RESPONSE-PORT; X hears it only if its mapping is still alive."""
    refresh = Probe("lifetime_refresh", x, server, binding_request(), x)
    run_probes([refresh], waits, clock)
    mapped = refresh.mapped()
    if mapped is None:
        return False
    sleep(idle)
    check = Probe("lifetime_check", y, server, binding_request(response_port=mapped[1]), x)
    run_probes([check], waits, clock)
    return check.answer is not None


# --- command line --------------------------------------------------------------------------


def render_text(r: dict[str, Any]) -> str:
    def addr(a: list[Any] | None) -> str:
        return "-" if a is None else f"{a[0]}:{a[1]}"

    def yes(v: bool | None) -> str:
        return "unknown" if v is None else ("yes" if v else "no")

    lifetime = "not measured"
    if r["lifetime_s"] is not None:
        at_least = r["tests"]["lifetime"]["at_least"]
        lifetime = f"{'>= ' if at_least else ''}{r['lifetime_s']} s"
    over = f" over {r['transport'].upper()}" if r.get("transport", "udp") != "udp" else ""
    lines = [
        f"NAT check against {addr(r['server'])}{over} from {addr(r['local_address'])}",
        f"mapped address:    {addr(r['mapped_address'])}"
        + (" (no NAT: mapped == local)" if r["nat_present"] is False else ""),
        f"mapping:           {r['mapping']}",
        f"filtering:         {r['filtering']}",
        f"hairpinning:       {yes(r['hairpinning'])}",
        f"port preservation: {yes(r['port_preservation'])}",
        f"mapping lifetime:  {lifetime}",
        *(f"note: {n}" for n in r["notes"]),
    ]
    return "\n".join(lines)


def parse_args(argv: Iterable[str] | None) -> tuple[Settings, bool]:
    """Settings and whether to print JSON."""
    p = argparse.ArgumentParser(prog="python -m peers.natcheck", description=__doc__.split("\n")[0])
    p.add_argument("--server", required=True, help="STUN server primary IPv4 address")
    p.add_argument("--port", type=int, default=3478)
    p.add_argument("--bind", help="local IPv4 address (default: the route's source address)")
    p.add_argument("--rto", type=float, default=0.1, help="first retransmission timeout, s")
    p.add_argument("--tries", type=int, default=4, help="sends per transaction")
    p.add_argument("--max-rto", type=float, default=0.2, help="retransmission timeout cap, s")
    p.add_argument("--lifetime", action="store_true", help="measure the mapping lifetime (4.6)")
    p.add_argument("--lifetime-max", type=float, default=10.0, help="upper bound, s")
    p.add_argument("--lifetime-resolution", type=float, default=0.5, help="precision, s")
    p.add_argument("--allocations", type=int, default=0, metavar="N",
                   help="also open N new mappings: pooling and port range (0-256)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                   help="run the tests over UDP (default) or TCP connections")
    p.add_argument("--progress", action="store_true",
                   help=f"a line per phase and lifetime trial on stderr, after {PROGRESS!r}")
    args = p.parse_args(None if argv is None else list(argv))
    if not 0 <= args.allocations <= 256:
        p.error("--allocations: 0 to 256")
    if args.tries < 1 or args.rto <= 0 or args.max_rto < args.rto:
        p.error("need --tries >= 1 and 0 < --rto <= --max-rto")
    if args.lifetime_max <= 0 or args.lifetime_resolution <= 0:
        p.error("--lifetime-max and --lifetime-resolution must be positive")
    if args.lifetime and args.transport == "tcp":
        p.error("--lifetime: over UDP only (a TCP connection's mapping lives for hours)")
    if args.allocations and args.transport == "tcp":
        p.error("--allocations: over UDP only")
    settings = Settings(
        args.server,
        args.port,
        args.bind,
        args.rto,
        args.tries,
        args.max_rto,
        args.lifetime,
        args.lifetime_max,
        args.lifetime_resolution,
        args.transport,
        args.allocations,
        args.progress,
    )
    return settings, bool(args.json)


def main(argv: Iterable[str] | None = None) -> int:
    settings, as_json = parse_args(argv)
    try:
        if settings.transport == "tcp":
            from peers.natcheck_tcp import discover_tcp  # it imports this module
            result = discover_tcp(settings)
        else:
            result = discover(settings)
    except OSError as exc:
        print(f"natcheck: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if as_json else render_text(result))
    return 0 if result["mapped_address"] is not None else 2


if __name__ == "__main__":
    sys.exit(main())
