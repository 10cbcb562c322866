#!/usr/bin/env python3
"""A contract program that prints 4 MiB of binary garbage and no result line."""
import os
import sys

for _ in range(64):
    sys.stdout.buffer.write(os.urandom(65536))
sys.stdout.buffer.write(b"\n{not json at all\n")
sys.stdout.flush()
