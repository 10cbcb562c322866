"""`nat-testbed up` with each bad topology of the corpus: exit 2 and nothing created.

One child process runs `up` for every file (the refusals themselves are measured one
process each by tests/unit/test_bad_topologies.py); then no namespace, marker or state
file of any of those labs may exist.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import netns, state

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "tests" / "data" / "bad-topologies").glob("*.yaml"))
DRIVER = """
import contextlib, io, json, sys
from testbed.cli import main
out = {}
for name, path in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["up", "--name", name, path])
    out[name] = [code, err.getvalue()]
print(json.dumps(out))
"""


def test_up_refuses_every_bad_file_and_creates_nothing() -> None:
    token = secrets.token_hex(2)
    labs = {f"ntbad{token}{i:02d}": str(p) for i, p in enumerate(FILES)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(list(labs.items()))],
                          cwd=REPO, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for name, path in labs.items():
        code, err = results[name]
        assert code == 2, (path, err)
        assert err.startswith(f"nat-testbed: {path}") and err.count("\n") == 1, err
    markers = state.labs_from_markers()
    left = [n for n in netns.listed() if any(n.startswith(f"{lab}-") for lab in labs)]
    left += [lab for lab in labs if lab in markers or state.read_state(lab) is not None]
    left += [str(p) for p in state.STATE_DIR.glob(f"ntbad{token}*")]
    assert left == []
