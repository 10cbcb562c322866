"""Link conditions on a live lab: netem where the kernel has it, a forwarder elsewhere.

The model is testbed.conditions; the commands are testbed.impair.plan; the
forwarder program is testbed.impair.forwarder; applying to a lab is
testbed.impair.live. docs/conditions.md says which mechanism runs where.
"""

from testbed.impair.live import (
    Impairment,
    apply,
    apply_many,
    choose,
    clear,
    clear_all,
    describe,
    far_end,
    has_netem,
    impairments,
    summary,
)
from testbed.impair.plan import MECHANISMS

__all__ = ["MECHANISMS", "Impairment", "apply", "apply_many", "choose", "clear",
           "clear_all", "describe", "far_end", "has_netem", "impairments", "summary"]
