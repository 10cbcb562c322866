"""Signaling credentials: pure functions, no sockets, no event loop.

The testbed issues each peer of a lab a token derived from the lab's secret and the
peer's id (peer_token); a peer registers by answering the server's nonce with a proof
made from its token (register_proof), which the server checks (check_proof). Kept apart
from peers.signaling (an asyncio server) so a peer's session, and anything that only
describes one, loads no event loop.
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_LABEL = b"nat-testbed signaling token\0"
PROOF_LABEL = b"nat-testbed signaling register\0"


def peer_token(secret: bytes, peer_id: str) -> str:
    """The credential the testbed issues to the peer `peer_id` of a lab."""
    return hmac.new(secret, TOKEN_LABEL + peer_id.encode(), hashlib.sha256).hexdigest()


def register_proof(token: str, nonce: str, peer_id: str) -> str:
    """What a peer holding `token` answers the server's challenge `nonce` with."""
    body = PROOF_LABEL + nonce.encode() + b"\0" + peer_id.encode()
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def check_proof(secret: bytes, nonce: str, peer_id: str, proof: str) -> bool:
    expected = register_proof(peer_token(secret, peer_id), nonce, peer_id)
    return hmac.compare_digest(expected, proof)
