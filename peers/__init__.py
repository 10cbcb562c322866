"""UDP programs that run inside testbed namespaces: STUN, TURN client, signaling, peers."""
