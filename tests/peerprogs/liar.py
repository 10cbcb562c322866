#!/usr/bin/env python3
"""The project's own peer, with one lie: whatever path it used, it claims direct."""
import asyncio
import sys

from peers.adapters.contract import Contract, emit
from peers.adapters.own import run

res = asyncio.run(run(Contract.from_env()))
res["outcome"] = "direct"
res["impl"] = "liar"
emit(res)
sys.exit(0)
