"""Conformance: each impairment mechanism does what the conditions say, judged from packets.

The same suite runs for every mechanism; the one the kernel lacks is skipped with the
reason. Conditions go on one direction (a -> b); the measurement is independent of the
mechanism: ICMP echo requests sent at a fixed pace and answered by b's kernel, timed
by a's kernel receive timestamps (delay, jitter, loss, duplication, reordering, in
arrival order); UDP with kernel receive timestamps at b (rate); b's own packet socket
and the sender's errors (MTU). Acceptance intervals come
from the configured values (testbed.impair.stats), never from a measured run.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed import netns, state
from testbed.conditions import Conditions, GilbertElliott, parse_spec
from testbed.impair import apply, clear, has_netem, probe
from testbed.impair.stats import (
    binomial_interval,
    geometric_mean_interval,
    markov_share_interval,
    within,
)
from testbed.lab import Lab
from testbed.topology import parse_topology

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]

TOPOLOGY = probe.TWO_HOSTS
B_ADDR = probe.B_ADDR
PROBE_GAP = 0.0005  # 2,000 probes a second: 1,000 round trips in about half a second


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(parse_topology(TOPOLOGY), start_services=False) as lab:
        yield lab


@pytest.fixture(scope="module", autouse=True)
def kernel_timestamps(lab: Lab) -> Iterator[None]:
    with probe.timestamps_on(lab.ns["a"].fd):
        yield


@pytest.fixture(params=["forwarder", "netem"])
def mechanism(request: pytest.FixtureRequest, lab: Lab) -> str:
    if request.param == "netem" and not has_netem(lab, "a"):
        pytest.skip("netem: this kernel has no sch_netem qdisc (CONFIG_NET_SCH_NETEM)")
    return str(request.param)


@pytest.fixture
def impaired(lab: Lab, mechanism: str) -> Iterator[tuple[Lab, str]]:
    yield lab, mechanism
    clear(lab, "a", "eth0")


def round_trips(lab: Lab, count: int) -> probe.Probes:
    return probe.round_trips(lab.ns["a"].fd, B_ADDR, count, PROBE_GAP)


def assert_count(name: str, observed: int, n: int, p: float) -> None:
    lo, hi = binomial_interval(n, p, 0.99)
    assert lo <= observed <= hi, (f"{name}: {observed} of {n}, configured {p:.2%}: outside "
                                  f"the 99% binomial interval [{lo}, {hi}]")


def twice(check: Callable[[], None]) -> None:
    """Run a statistical check; if it fails, measure again. A true 99% interval misses
    one run in a hundred by chance; missing twice in a row (one in 10,000) is a bias."""
    try:
        check()
    except AssertionError as first:
        print(f"first measurement outside its interval ({first}); measuring again")
        check()


def seeded(spec: str, seed: int) -> Conditions:
    """The forwarder's choices repeat with a seed (netem's cannot be seeded here)."""
    return dataclasses.replace(parse_spec(spec), seed=seed)


# ---------------------------------------------------------------- delay and jitter


@pytest.mark.parametrize("delay_ms,jitter_ms", [(10.0, 0.0), (10.0, 3.0)])
def test_delay_and_jitter(impaired: tuple[Lab, str], delay_ms: float, jitter_ms: float) -> None:
    """Timed one way, from a's kernel send stamp to b's kernel receive stamp: a round
    trip timed by this program also counted its own scheduling and the echo's return
    through two kernels' softirq work (one run at load 5: a mean of 12.4 ms). The delay
    and the jitter are the median and the normal-consistent spread (interquartile range
    / 1.349): a stall of the whole machine (this one is a VM with steal time) holds every
    frame in the forwarder at once, and one of up to 50 ms late-delivers at most 10% of
    frames paced 0.5 ms apart, which moves neither by more than 0.4 ms. More late frames
    fail the measurement (a 90 ms stall made 106 of 1,000, one run of 30 at load 3-5):
    it is measured again, as the statistical checks are; a wrong delay fails twice."""
    lab, mech = impaired
    cond = Conditions(delay=delay_ms / 1000, jitter=jitter_ms / 1000, seed=1)
    assert apply(lab, "a", "eth0", cond, mechanism=mech).mechanism == mech

    def check() -> None:
        run = probe.one_way(lab.ns["a"].fd, lab.ns["b"].fd, B_ADDR, 1000, PROBE_GAP)
        delays = sorted(ms for _, ms in run.delays)
        assert len(delays) == 1000
        q1, median, q3 = statistics.quantiles(delays, n=4)
        spread = (q3 - q1) / 1.349
        late = sum(1 for ms in delays if ms > delay_ms + 5 * jitter_ms + 1.0)
        print(f"{mech}: delay {delay_ms} ms jitter {jitter_ms} ms -> median {median:.3f} ms, "
              f"spread {spread:.3f} ms (mean {statistics.fmean(delays):.3f}, sd "
              f"{statistics.pstdev(delays):.3f}), {late} late, of {len(delays)} one way")
        assert within(median, delay_ms, 1.0, 0.05), f"median {median:.3f} ms vs {delay_ms} ms"
        assert within(spread, jitter_ms, 1.0, 0.05), f"spread {spread:.3f} vs {jitter_ms} ms"
        assert late <= len(delays) // 10, f"{late} of {len(delays)} later than 5 sd + 1 ms"

    twice(check)


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("spec", ["loss=10%", "delay=2ms,loss=10%"],
                         ids=["in-kernel", "scheduled"])
def test_random_loss(impaired: tuple[Lab, str], spec: str) -> None:
    lab, mech = impaired
    apply(lab, "a", "eth0", seeded(spec, 3), mechanism=mech)

    def check() -> None:
        run = round_trips(lab, 2000)
        lost = run.sent - len(run.replies)
        print(f"{mech} {spec}: lost {lost} of {run.sent}")
        assert_count("loss", lost, run.sent, 0.10)

    twice(check)


def test_bursty_loss(impaired: tuple[Lab, str]) -> None:
    lab, mech = impaired
    ge = GilbertElliott(p=0.05, r=0.40)  # 11.1% loss in bursts of 2.5
    apply(lab, "a", "eth0", Conditions(burst=ge, seed=2), mechanism=mech)

    def check() -> None:
        run = round_trips(lab, 3000)
        got = run.seqs
        lost = "".join("1" if s not in got else "0" for s in range(run.sent))
        share = lost.count("1") / run.sent
        lo, hi = markov_share_interval(run.sent, ge.p, ge.r)
        bursts = [len(m.group()) for m in re.finditer("1+", lost)]
        mean_burst = statistics.fmean(bursts)
        blo, bhi = geometric_mean_interval(len(bursts), ge.r)
        print(f"{mech}: GE loss {share:.2%} (expected {ge.mean_loss:.2%}, 99% [{lo:.2%}, "
              f"{hi:.2%}]), mean burst {mean_burst:.2f} (expected {ge.mean_burst:.2f})")
        assert lo <= share <= hi
        assert blo <= mean_burst <= bhi

    twice(check)


# ---------------------------------------------------------------- duplication, reordering


def test_duplication(impaired: tuple[Lab, str]) -> None:
    lab, mech = impaired
    apply(lab, "a", "eth0", seeded("duplicate=10%", 4), mechanism=mech)

    def check() -> None:
        run = round_trips(lab, 2000)
        print(f"{mech}: {run.duplicates} duplicates of {run.sent}")
        assert len(run.replies) == run.sent
        assert_count("duplication", run.duplicates, run.sent, 0.10)

    twice(check)


def test_reordering(impaired: tuple[Lab, str]) -> None:
    """25% of packets skip the 10 ms delay: they arrive at once, ahead of the packets
    sent before them that are still delayed."""
    lab, mech = impaired
    apply(lab, "a", "eth0", seeded("delay=10ms,reorder=25%", 5), mechanism=mech)
    n = 2000

    def check() -> None:
        run = round_trips(lab, n)
        order = [seq for seq, _ in run.replies]
        fast = sum(1 for _, rtt in run.replies if rtt < 5.0)
        at = {s: i for i, s in enumerate(order)}
        overtakes = sum(1 for s in order if s - 1 in at and at[s] < at[s - 1])
        print(f"{mech}: {fast} of {len(order)} skipped the delay, {overtakes} overtook "
              "their predecessor")
        assert sorted(order) == list(range(n))
        assert_count("reordered", fast, n, 0.25)
        # k overtakes k-1 when k skips the delay and k-1 does not: p(1-p). These events
        # are negatively correlated, so the binomial interval is a conservative bound.
        assert_count("overtakes", overtakes, n - 1, 0.25 * 0.75)

    twice(check)


# ---------------------------------------------------------------- rate


def _udp_socket(lab: Lab, node: str) -> socket.socket:
    with netns.entered(lab.ns[node].fd):
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _receiver(lab: Lab, port: int) -> socket.socket:
    rx = _udp_socket(lab, "b")
    rx.setsockopt(socket.SOL_SOCKET, probe.SO_RCVBUFFORCE, 16 << 20)  # holds a whole run
    rx.setsockopt(socket.SOL_SOCKET, probe.SO_TIMESTAMPNS, 1)
    rx.bind((B_ADDR, port))
    rx.settimeout(0.5)
    return rx


def _drain(rx: socket.socket) -> list[tuple[bytes, float]]:
    """Datagrams with their kernel arrival times (CLOCK_REALTIME), in arrival order."""
    got = []
    while True:
        try:
            msg, anc, _, _ = rx.recvmsg(65536, 64)
        except TimeoutError:
            return got
        got.append((msg, probe.kernel_time(anc)))


@dataclasses.dataclass
class Blast:
    queued: list[float]  # per frame: when its send call returned (it was queued by then)
    arrived: list[tuple[int, float, int]]  # (frame, kernel arrival time, bytes) in order


def blast(lab: Lab, rate_bps: int, payload: int, seconds: float) -> Blast:
    """Send UDP a -> b at 1.25 times `rate_bps` for `seconds`, each datagram numbered."""
    rx, tx = _receiver(lab, 9000), _udp_socket(lab, "a")
    try:
        frame = payload + 8 + 20 + 14
        gap = frame * 8 / (rate_bps * 1.25)
        pad = b"x" * (payload - 4)
        queued = []
        start = time.monotonic()
        for i in range(int(seconds / gap)):
            while time.monotonic() < start + i * gap:
                pass  # pacing below a scheduler tick; bounded by `seconds`
            tx.sendto(struct.pack("!I", i) + pad, (B_ADDR, 9000))
            queued.append(time.time())  # CLOCK_REALTIME, the kernel stamps' clock
        return Blast(queued, [(struct.unpack("!I", msg[:4])[0], at, len(msg) + 8 + 20 + 14)
                              for msg, at in _drain(rx)])
    finally:
        rx.close()
        tx.close()


def shaped_rate(run: Blast, ahead_s: float) -> tuple[float, int]:
    """Bits per second over the gaps where the shaper was busy: frame k arrived after
    frame j (the one before it) and k had been queued before j left. Its gap is then
    k's serialisation at the rate, whatever this program did; a gap after the sender
    itself fell behind (a busy machine ran it 30-280 ms late, measured at load 6) is
    idle time, not the shaper's. `ahead_s`: how long a frame takes to reach the shaper
    after its send call (a delay before it). Returns (rate, gaps counted)."""
    bits, seconds, counted = 0, 0.0, 0
    for (j, left, _), (k, at, size) in itertools.pairwise(run.arrived):
        if k == j + 1 and run.queued[k] + ahead_s <= left:
            bits, seconds, counted = bits + size * 8, seconds + at - left, counted + 1
    return (bits / seconds if seconds else 0.0), counted


@pytest.mark.parametrize("spec", ["rate=20mbit", "delay=5ms,rate=20mbit"],
                         ids=["alone", "after-delay"])
def test_rate(impaired: tuple[Lab, str], spec: str) -> None:
    lab, mech = impaired
    cond = parse_spec(spec)
    apply(lab, "a", "eth0", cond, mechanism=mech)

    def check() -> None:
        run = blast(lab, 20_000_000, 1200, 0.6)
        assert len(run.arrived) > 100
        measured, counted = shaped_rate(run, cond.delay)
        print(f"{mech} {spec}: {measured / 1e6:.2f} Mbit/s over {counted} busy gaps of "
              f"{len(run.arrived)} frames")
        assert counted >= len(run.arrived) // 2, f"the shaper was busy for {counted} gaps"
        assert within(measured, 20e6, 0, 0.05), f"{measured / 1e6:.2f} Mbit/s vs 20"

    twice(check)  # a stall of the whole machine also stalls the shaper's dequeue


# ---------------------------------------------------------------- MTU


ETH_P_ALL = 0x0003


def _capture(lab: Lab) -> socket.socket:
    with netns.entered(lab.ns["b"].fd):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind(("eth0", 0))
    s.setblocking(False)
    return s


def _frames(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(65536))
        except BlockingIOError:
            return out


def _send(lab: Lab, sizes: list[int], df: bool) -> tuple[list[int], list[int]]:
    """Send UDP datagrams of `sizes` a -> b; return (sizes received, send errnos)."""
    rx, tx = _udp_socket(lab, "b"), _udp_socket(lab, "a")
    errors = []
    try:
        rx.bind((B_ADDR, 9001))
        rx.settimeout(0.3)
        ip_mtu_discover, do, dont = 10, 2, 0
        tx.setsockopt(socket.IPPROTO_IP, ip_mtu_discover, do if df else dont)
        for size in sizes:
            try:
                tx.sendto(b"m" * size, (B_ADDR, 9001))
            except OSError as exc:
                errors.append(exc.errno)
        got = []
        while True:
            try:
                got.append(len(rx.recv(65536)))
            except TimeoutError:
                return got, errors
    finally:
        rx.close()
        tx.close()


def test_mtu_fragments(impaired: tuple[Lab, str]) -> None:
    lab, mech = impaired
    apply(lab, "a", "eth0", parse_spec("mtu=1000"), mechanism=mech)
    cap = _capture(lab)
    try:
        got, errors = _send(lab, [1400] * 5, df=False)
        frames = _frames(cap)
    finally:
        cap.close()
    assert got == [1400] * 5 and not errors
    ip = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 17]  # IPv4 UDP
    fragments = [f for f in ip if struct.unpack("!H", f[20:22])[0] & 0x3FFF]  # MF|offset
    assert len(fragments) >= 10, f"{len(fragments)} fragments on the wire for 5 datagrams"
    assert max(len(f) for f in frames) <= 1000 + 14
    # With DF the sender is told at once (no silent loss): EMSGSIZE.
    got, errors = _send(lab, [1400], df=True)
    assert got == [] and errors == [errno.EMSGSIZE]


def test_mtu_drops_oversize(impaired: tuple[Lab, str]) -> None:
    """A path-MTU black hole: IP packets over 1000 bytes vanish, the rest pass, and the
    interface MTU is untouched (the sender learns nothing)."""
    lab, mech = impaired
    apply(lab, "a", "eth0", parse_spec("mtu=1000,oversize=drop"), mechanism=mech)
    fits, over = 1000 - 28, 1001 - 28  # UDP payload for IP lengths 1000 and 1001
    got, errors = _send(lab, [fits] * 20 + [over] * 20, df=True)
    assert not errors
    assert got == [fits] * 20


# ---------------------------------------------------------------- ownership


def test_forwarder_is_recorded_and_removed(lab: Lab) -> None:
    if has_netem(lab, "a"):
        pytest.skip("the forwarder runs only where the kernel has no sch_netem")
    imp = apply(lab, "a", "eth0", parse_spec("delay=1ms"))
    assert imp.mechanism == "forwarder" and imp.forwarder_pid is not None
    st = state.read_state(lab.name) or {}
    assert st["impairments"]["a:eth0"]["mechanism"] == "forwarder"
    assert imp.forwarder_pid in [p["pid"] for p in st["processes"]]
    clear(lab, "a", "eth0")
    st = state.read_state(lab.name) or {}
    assert "a:eth0" not in st["impairments"]
    assert imp.forwarder_pid not in [p["pid"] for p in st["processes"]]
    assert not _alive(imp.forwarder_pid)
    assert "fwd" not in lab.run("a", ["nft", "list", "ruleset"], check=True).stdout
    assert lab.run("a", ["ping", "-c1", "-W1", B_ADDR], check=False).returncode == 0


def test_zero_conditions_install_nothing(lab: Lab) -> None:
    imp = apply(lab, "a", "eth0", Conditions())
    assert imp.parts == () and imp.forwarder_pid is None
    assert "qdisc tbf" not in lab.run("a", ["tc", "qdisc", "show", "dev", "eth0"],
                                    check=True).stdout
    clear(lab, "a", "eth0")


def test_lab_down_stops_the_forwarder() -> None:
    with Lab(parse_topology(TOPOLOGY), start_services=False) as lab:
        imp = apply(lab, "a", "eth0", parse_spec("delay=1ms"), mechanism="forwarder")
    assert imp.forwarder_pid is not None and not _alive(imp.forwarder_pid)


def _alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_clean_stops_the_forwarder_of_a_killed_run() -> None:
    """kill -9 of the process that applied the conditions: `clean LAB` finds the
    forwarder (recorded in the state file, and inside a lab namespace) and stops it."""
    script = (
        "import sys\n"
        "from testbed.lab import Lab\n"
        "from testbed.topology import parse_topology\n"
        "from testbed.conditions import parse_spec\n"
        "from testbed.impair import apply, probe\n"
        "lab = Lab(parse_topology(probe.TWO_HOSTS), start_services=False).up()\n"
        "imp = apply(lab, 'a', 'eth0', parse_spec('delay=5ms'), mechanism='forwarder')\n"
        "print(lab.name, imp.forwarder_pid, flush=True)\n"
        "sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    name, pid = proc.stdout.readline().split()
    try:
        assert _alive(int(pid))
    finally:
        proc.kill()
        proc.wait()
    done, busy = state.clean([name])
    assert [t.lab for t in done] == [name] and not busy
    assert not _alive(int(pid))
    assert not [n for n in netns.listed() if n.startswith(f"{name}-")]
