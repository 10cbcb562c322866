"""nat-testbed: NAT traversal on real Linux kernels."""

__version__ = "0.1.0"
