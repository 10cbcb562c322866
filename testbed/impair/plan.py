"""Conditions -> the commands that make a kernel apply them: pure functions, tested
against the tc and nft syntax they emit (tests/unit/test_impair_plan.py).

Two mechanisms, one meaning (testbed.conditions):
- netem: one `netem` root qdisc on the sending interface does delay, jitter, loss
  (random or Gilbert-Elliott), duplication and reordering; a `tbf` child does the rate.
- forwarder (kernels without sch_netem): an nftables netdev *egress* chain hands every
  frame leaving the interface to a TAP read by the forwarder process
  (testbed.impair.forwarder), which releases it on schedule through a packet socket
  whose frames carry MARK and so pass the chain; a `tbf` root qdisc does the rate. What
  the kernel can do alone stays in the kernel: with no delay, jitter, duplication,
  reordering or bursty loss there is no forwarder, and random loss is an nftables
  `numgen random` drop at the far end's *ingress*. (A drop in the sender's egress hook
  would return ENOBUFS to a local sender, which ping retries: a lost packet on a wire
  says nothing to its sender, and a drop on arrival does the same.)
Both: the MTU is the interface MTU of both ends (a veth drops received frames larger
than its own MTU, so one end alone would silently cut the other direction), or with
oversize 'drop', an nftables length drop at the far end's ingress.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from testbed.conditions import Conditions, format_percent

MARK = 0x6E740001  # 'nt' 1: frames the forwarder sends; the redirect filter skips them

NFT_TABLE = "nattestbed_impair"
NETEM_LIMIT = 1000  # packets: netem's default, and the forwarder's (schedule.QUEUE_LIMIT)
RATE_QUEUE_S = 0.1  # the token bucket's queue holds 100 ms at the rate
ETH_HEADER = 14
LOSS_SCALE = 1_000_000_000  # numgen's range: loss resolution of 1e-9
MECHANISMS = ("netem", "forwarder")


@dataclass(frozen=True)
class Parts:
    """Which pieces a condition needs under a mechanism (shown in status and results)."""

    mechanism: str
    scheduler: bool  # netem qdisc, or a forwarder
    rate: bool
    far_drop: bool  # an nftables drop chain at the far end's ingress
    mtu: bool

    def names(self) -> tuple[str, ...]:
        out = []
        if self.scheduler:
            out.append("netem" if self.mechanism == "netem" else "forwarder")
        if self.rate:
            out.append("tbf")
        if self.far_drop:
            out.append("nft-ingress-drop")
        if self.mtu:
            out.append("mtu")
        return tuple(out)


def parts(cond: Conditions, mechanism: str, always_forward: bool = False) -> Parts:
    """`always_forward`: run the forwarder even when nothing needs it (to measure its
    own cost, or to change conditions later without moving traffic)."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r}")
    if mechanism == "netem":
        scheduler = cond.needs_scheduler or bool(cond.loss)
        far_loss = False
    else:
        scheduler = cond.needs_scheduler or always_forward
        far_loss = bool(cond.loss) and not scheduler
    oversize_drop = cond.mtu is not None and cond.oversize == "drop"
    return Parts(mechanism, scheduler, cond.rate is not None, far_loss or oversize_drop,
                 cond.mtu is not None and cond.oversize == "fragment")


# ---------------------------------------------------------------- names


def chain_name(direction: str, dev: str) -> str:
    """nft chain names are unquoted identifiers; interface names fit (letters, digits,
    '_', '.', '-'), anything else is replaced."""
    return f"{direction}_" + re.sub(r"[^A-Za-z0-9_.-]", "_", dev)


def tap_name(dev: str) -> str:
    """A TAP name unique per interface within a namespace, within IFNAMSIZ."""
    return f"imp{zlib.crc32(dev.encode()):08x}"[:15]


# ---------------------------------------------------------------- nftables


def forward_chain(dev: str, tap: str, mark: int) -> str:
    """Every frame leaving `dev` not sent by the forwarder goes to its TAP."""
    return (f"table netdev {NFT_TABLE} {{\n"
            f"  chain {chain_name('out', dev)} {{\n"
            f"    type filter hook egress device \"{dev}\" priority 0;\n"
            f"    meta mark != {mark:#x} fwd to \"{tap}\"\n"
            f"  }}\n}}\n")


def far_drop_chain(far_dev: str, cond: Conditions, p: Parts) -> str:
    """Drops on arrival at the far end: random loss (when no scheduler does it) and
    IP packets larger than the MTU (oversize 'drop')."""
    rules = []
    if p.mechanism == "forwarder" and cond.loss and not p.scheduler:
        threshold = round(cond.loss * LOSS_SCALE)
        # numgen's values are 0 .. LOSS_SCALE - 1: a threshold of LOSS_SCALE is out of
        # nft's range (and means every packet)
        rules.append("drop" if threshold >= LOSS_SCALE
                     else f"numgen random mod {LOSS_SCALE} < {threshold} drop")
    if cond.mtu is not None and cond.oversize == "drop":
        rules.append(f"ip length > {cond.mtu} drop")
        rules.append(f"ip6 length > {max(cond.mtu - 40, 0)} drop")  # payload length
    body = "".join(f"    {r}\n" for r in rules)
    return (f"table netdev {NFT_TABLE} {{\n"
            f"  chain {chain_name('in', far_dev)} {{\n"
            f"    type filter hook ingress device \"{far_dev}\" priority 0;\n"
            f"{body}  }}\n}}\n")


def delete_chain(direction: str, dev: str) -> str:
    return f"delete chain netdev {NFT_TABLE} {chain_name(direction, dev)}\n"


# ---------------------------------------------------------------- tc


def _us(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def _pct(fraction: float) -> str:
    return format_percent(fraction)


def netem_args(cond: Conditions) -> list[str]:
    """netem's parameters (tc-netem(8)) for the scheduled part of `cond`."""
    args = ["limit", str(NETEM_LIMIT)]
    if cond.delay or cond.jitter:
        args += ["delay", _us(cond.delay)]
        if cond.jitter:
            args += [_us(cond.jitter), "distribution", "normal"]
    if cond.burst is not None:
        b = cond.burst  # gemodel p r 1-h 1-k: loss in Bad is 1-h, in Good 1-k
        args += ["loss", "gemodel", _pct(b.p), _pct(b.r), _pct(b.loss_bad), _pct(b.loss_good)]
    elif cond.loss:
        args += ["loss", "random", _pct(cond.loss)]
    if cond.duplicate:
        args += ["duplicate", _pct(cond.duplicate)]
    if cond.reorder:
        args += ["reorder", _pct(cond.reorder)]
    return args


def tbf_args(rate: int, mtu: int | None) -> list[str]:
    """A token bucket at `rate` whose bucket holds one frame (so the rate holds from the
    first packets on) and whose queue holds RATE_QUEUE_S at the rate."""
    frame = (mtu or 1500) + ETH_HEADER
    burst = max(frame, rate // 8 // 1000)  # a frame, or 1 ms at the rate
    limit = max(2 * frame, int(rate / 8 * RATE_QUEUE_S))
    return ["rate", f"{rate}bit", "burst", str(burst), "limit", str(limit)]


def qdisc_commands(dev: str, cond: Conditions, p: Parts) -> list[list[str]]:
    """tc commands for the sending side of `dev` (empty: nothing to install)."""
    tc = ["tc", "qdisc", "replace", "dev", dev]
    if p.mechanism == "netem" and p.scheduler:
        cmds = [tc + ["root", "handle", "1:", "netem"] + netem_args(cond)]
        if p.rate:
            assert cond.rate is not None
            cmds.append(tc + ["parent", "1:1", "handle", "10:", "tbf"]
                        + tbf_args(cond.rate, cond.mtu))
        return cmds
    if p.rate:
        assert cond.rate is not None
        return [tc + ["root", "handle", "10:", "tbf"] + tbf_args(cond.rate, cond.mtu)]
    return []
