"""Port prediction against a sequential allocator (pure functions).

A NAT whose mapping depends on the destination (RFC 4787 APDM or ADM) gives a new
external port to every new destination. A *sequential* allocator hands them out in
order (49152, 49153, ...), so the port a peer's next mapping will get can be guessed:
bind to several STUN endpoints in one burst, read the mapped ports in the order the
requests left, and if they advance by the same step, the next ports are the last
one plus that step, plus twice the step, and so on. A random allocator gives no
common step (or a step no guess window can use), and then nothing is predicted.

The prediction is made by the side whose NAT it is (it knows its own bindings) and
announced as `predicted` candidates; the other side probes them like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_STEP = 64  # a larger common step is a coincidence of random ports, not an allocator
MAX_WINDOW = 16  # predicted candidates announced at most (signaling allows 32 candidates)
MIN_BINDINGS = 3  # two differences are needed to see a common step


@dataclass(frozen=True)
class Allocation:
    """What a burst of bindings says about our NAT's port allocation."""

    kind: str  # "independent" (one port for every destination), "sequential", "unpredictable"
    step: int = 0  # the common difference between consecutive mappings (sequential)
    last: int = 0  # the last mapped port seen

    @property
    def dependent(self) -> bool:
        """Endpoint-dependent mapping: the 'hard' side in Tailscale's words."""
        return self.kind != "independent"


def learn(ports: list[int]) -> Allocation:
    """The allocation seen in the mapped ports of bindings sent back to back, in order."""
    if len(ports) < MIN_BINDINGS:
        raise ValueError(f"need at least {MIN_BINDINGS} bindings, got {len(ports)}")
    if len(set(ports)) == 1:
        return Allocation("independent", 0, ports[-1])
    steps = {b - a for a, b in zip(ports, ports[1:], strict=False)}
    if len(steps) == 1:
        (step,) = steps
        if step != 0 and abs(step) <= MAX_STEP:
            return Allocation("sequential", step, ports[-1])
    return Allocation("unpredictable", 0, ports[-1])


def predicted_ports(alloc: Allocation, window: int) -> list[int]:
    """The next `window` ports a sequential allocator will hand out (valid ports only)."""
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"prediction window must be 1..{MAX_WINDOW}, got {window}")
    if alloc.kind != "sequential":
        return []
    out = [alloc.last + alloc.step * i for i in range(1, window + 1)]
    return [p for p in out if 1 <= p <= 65535]
