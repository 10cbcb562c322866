"""nat-testbed: NAT traversal on real Linux kernels (network namespaces, nftables NAT,
STUN, hole punching, TURN). The public Python API, documented in docs/api.md:

    Lab, load_topology          build a topology as live namespaces; run commands in them
    run_pair, run_matrix        one call attempt between two NATs; every pairing of a set
    NatSpec                     a NAT behaviour (RFC 4787 mapping, filtering, ...)
    Strategy                    a traversal strategy: stun, predict, birthday, portmap
    PeerResult, PairResult,     the typed results
    Cell, MatrixResult

Everything else (modules, functions, names not listed here) is internal and may change.
"""

from peers.result import PeerResult
from testbed.lab import Lab
from testbed.matrix.run import run_matrix
from testbed.nat import NatSpec
from testbed.pair import run_pair
from testbed.results import Cell, MatrixResult, PairResult
from testbed.strategy import Strategy
from testbed.topology import load_topology
from testbed.version import VERSION

__version__ = VERSION
__all__ = ["Cell", "Lab", "MatrixResult", "NatSpec", "PairResult", "PeerResult", "Strategy",
           "load_topology", "run_matrix", "run_pair"]
