"""Traversal strategies on top of STUN, as values: what `--strategy`/`--strategies` name.

- stun: STUN, simultaneous punching and the TURN fallback (what every peer does).
- predict: also measure our NAT's port allocation with a burst of bindings and
  announce the ports a sequential allocator will hand out next (peers.predict).
- birthday: Tailscale's birthday probing between a hard and an easy NAT
  (peers.birthday): sockets, probes, rate and the probed port range are settings.
- portmap: ask the router for a mapping (NAT-PMP/PCP, testbed.portmap) and announce
  it as a `mapped` candidate.

A Strategy has a `.label` (its name), so it is a value of a matrix dimension like a
NatSpec. to_session gives the peer's Strategies; peer_flags the peer program's flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peers import birthday as bd
from peers.candidates import Address
from peers.session import STRATEGIES, Strategies

# The candidate kind each strategy adds: the evidence names it when it carried data.
CANDIDATE_KIND = {"stun": "srflx", "predict": "predicted", "birthday": "birthday",
                  "portmap": "mapped"}


class StrategyError(ValueError):
    """A bad strategy name or setting; the message names it."""


@dataclass(frozen=True)
class Strategy:
    name: str = "stun"
    birthday: bd.Birthday = field(default_factory=bd.Birthday)

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise StrategyError(f"unknown strategy {self.name!r}; expected one of: "
                                f"{', '.join(STRATEGIES)}")

    @property
    def label(self) -> str:
        return self.name

    @property
    def extra_s(self) -> float:
        """Seconds the strategy adds to the punch stage (the birthday probes' time)."""
        return self.birthday.duration if self.name == "birthday" else 0.0

    @property
    def kind(self) -> str:
        """The candidate kind this strategy adds."""
        return CANDIDATE_KIND[self.name]

    def to_session(self, mapped: Address | None = None) -> Strategies:
        return Strategies(predict=self.name == "predict",
                          birthday=self.birthday if self.name == "birthday" else None,
                          mapped=mapped if self.name == "portmap" else None)

    def peer_flags(self) -> list[str]:
        """The peer program's flags for this strategy (peers.peer); a portmap mapping's
        --port and --mapped are added per peer by whoever requested it (testbed.pair)."""
        if self.name == "stun":
            return []
        out = ["--strategy", f"stun,{self.name}"]
        if self.name == "birthday":
            b = self.birthday
            out += ["--birthday-sockets", str(b.sockets), "--birthday-probes", str(b.probes),
                    "--birthday-rate", f"{b.rate:g}", "--birthday-range",
                    f"{b.port_lo}-{b.port_hi}"]
        return out


DEFAULT = Strategy()


def strategies_from_list(text: str, birthday: bd.Birthday | None = None) -> list[Strategy]:
    """'stun,predict,birthday,portmap' (each once); birthday settings shared by all."""
    names = [s.strip() for s in text.split(",")]
    if not all(names):
        raise StrategyError(f"empty name in {text!r} (a comma-separated list like "
                            f"{','.join(STRATEGIES)})")
    if len(set(names)) != len(names):
        raise StrategyError(f"a strategy is listed twice in {text!r}")
    b = birthday or bd.Birthday()
    return [Strategy(n, b) for n in names]
