#!/usr/bin/env python3
"""The project's own peer, stopping its data half-way: it sends only half of
NT_SEND_BYTES, as a program that closes with the rest still in flight does (the webrtc
adapter once closed its peer connection once its own data was queued, not delivered)."""
import asyncio
import os
import sys

from peers.adapters.contract import Contract, emit
from peers.adapters.own import run

os.environ["NT_SEND_BYTES"] = str(int(os.environ.get("NT_SEND_BYTES", "65536")) // 2)
res = asyncio.run(run(Contract.from_env()))
res["impl"] = "quitter"
emit(res)
sys.exit(0)
