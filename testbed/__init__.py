"""nat-testbed: NAT traversal on real Linux kernels (network namespaces, nftables NAT,
STUN, hole punching, TURN). The public Python API, documented in docs/api.md:

    Lab, load_topology          build a topology as live namespaces; run commands in them
    run_pair, run_matrix        one call attempt between two NATs; every pairing of a set
    NatSpec                     a NAT behaviour (RFC 4787 mapping, filtering, ...)
    Strategy                    a traversal strategy: stun, predict, birthday, portmap
    PeerResult, PairResult,     the typed results
    Cell, MatrixResult

Everything else (modules, functions, names not listed here) is internal and may change.

The names are imported on first use (PEP 562): `import testbed.cli` for a command that
only reads a file (`validate`, `report`) must not pay for pyroute2 and the lab engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from testbed.version import VERSION

if TYPE_CHECKING:
    from peers.result import PeerResult
    from testbed.lab import Lab
    from testbed.matrix.run import run_matrix
    from testbed.nat import NatSpec
    from testbed.pair import run_pair
    from testbed.results import Cell, MatrixResult, PairResult
    from testbed.strategy import Strategy
    from testbed.topology import load_topology

__version__ = VERSION
_HOMES = {"Cell": "testbed.results", "Lab": "testbed.lab", "MatrixResult": "testbed.results",
          "NatSpec": "testbed.nat", "PairResult": "testbed.results",
          "PeerResult": "peers.result", "Strategy": "testbed.strategy",
          "load_topology": "testbed.topology",
          "run_matrix": "testbed.matrix.run", "run_pair": "testbed.pair"}
__all__ = ["Cell", "Lab", "MatrixResult", "NatSpec", "PairResult", "PeerResult", "Strategy",
           "load_topology", "run_matrix", "run_pair"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'testbed' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups never come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
