"""Contract programs (docs/peers.md) for the testbed's own peer and third-party stacks."""
