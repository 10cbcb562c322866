"""Birthday probing of a hard NAT, as Tailscale describes it (pure functions and limits).

The side behind an endpoint-dependent ("hard") NAT opens many sockets and sends from
each one packet to the other side's public endpoint: every packet opens a mapping on
a port nobody can predict, and each mapping admits packets from that one endpoint.
The other ("easy") side sends probes to random ports of the hard side's public
address at a bounded rate; a probe that lands on one of the open ports crosses the
hard NAT, and the connection forms on that port.

With `open` ports open among the `n` ports probed, and `probes` distinct random ports
probed, the chance that none is hit is the hypergeometric C(n - open, probes) /
C(n, probes): the probes are a uniform random subset of the range, whatever ports
the NAT picked, as long as they lie in the range. `success_probability` is one minus
that, computed as a product (exact for every n <= 65535, no big binomials).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MAX_SOCKETS = 1024  # sockets the hard side opens at most (file descriptors per peer)
MAX_PROBES = 65535  # probes at most: every port once
MAX_RATE = 50000.0  # probes per second at most (the lab's links; never a real network)
MIN_RATE = 1.0
DEFAULT_SOCKETS, DEFAULT_PROBES, DEFAULT_RATE = 256, 1024, 2000.0
PORT_MIN, PORT_MAX = 1, 65535
DEFAULT_RANGE = (1024, 65535)  # RFC 4787 REQ-3a: ports above 1023 map to ports above 1023


class BirthdayError(ValueError):
    """A birthday setting outside its limits; the message names the setting."""


@dataclass(frozen=True)
class Birthday:
    """How many sockets the hard side opens, how many probes the easy side sends, at what
    rate (probes per second), into which port range of the hard side's address."""

    sockets: int = DEFAULT_SOCKETS
    probes: int = DEFAULT_PROBES
    rate: float = DEFAULT_RATE
    port_lo: int = DEFAULT_RANGE[0]
    port_hi: int = DEFAULT_RANGE[1]

    def __post_init__(self) -> None:
        check_int("sockets", self.sockets, 1, MAX_SOCKETS)
        check_int("port range start", self.port_lo, PORT_MIN, PORT_MAX)
        check_int("port range end", self.port_hi, self.port_lo, PORT_MAX)
        check_int("probes", self.probes, 1, min(MAX_PROBES, self.range_size))
        if isinstance(self.rate, bool) or not isinstance(self.rate, int | float) or \
                not MIN_RATE <= self.rate <= MAX_RATE:
            raise BirthdayError(f"rate: must be {MIN_RATE:g} to {MAX_RATE:g} probes per "
                                f"second, got {self.rate!r}")

    @property
    def range_size(self) -> int:
        return self.port_hi - self.port_lo + 1

    @property
    def duration(self) -> float:
        """Seconds the easy side needs to send every probe at the rate."""
        return self.probes / self.rate


def check_int(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BirthdayError(f"{what}: must be a whole number {lo} to {hi}, got {value!r}")
    return value


def miss_probability(n: int, open_ports: int, probes: int) -> float:
    """C(n - open, probes) / C(n, probes): no probe of `probes` distinct random ports out
    of `n` lands on one of `open_ports` open ones."""
    if not 0 <= open_ports <= n or not 0 <= probes <= n:
        raise ValueError(f"need 0 <= open ({open_ports}), probes ({probes}) <= n ({n})")
    if probes > n - open_ports:
        return 0.0
    # prod_{i<probes} (n - open - i) / (n - i), in logs: 65535 factors stay exact enough.
    log = sum(math.log1p(-open_ports / (n - i)) for i in range(probes))
    return math.exp(log)


def success_probability(n: int, open_ports: int, probes: int) -> float:
    return 1.0 - miss_probability(n, open_ports, probes)


def probes_for(n: int, open_ports: int, target: float) -> int:
    """The fewest probes whose success probability reaches `target`."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if success_probability(n, open_ports, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def probe_ports(rng: random.Random, cfg: Birthday) -> list[int]:
    """`cfg.probes` distinct ports of the range in random order (a uniform random subset,
    so its first k ports are one too: one trial answers every smaller probe count)."""
    return rng.sample(range(cfg.port_lo, cfg.port_hi + 1), cfg.probes)


def due(rate: float, started: float, now: float, sent: int, total: int) -> int:
    """How many more probes may leave at `now` without exceeding `rate` since `started`."""
    # the small epsilon: at now == started + sent / rate, the product may fall just short
    allowed = min(total, int((now - started) * rate + 1e-6) + 1)
    return max(0, allowed - sent)
