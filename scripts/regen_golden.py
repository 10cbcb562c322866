#!/usr/bin/env python3
"""Rewrite the golden rulesets after a deliberate template change, and show the diff.

    .venv/bin/python scripts/regen_golden.py          # write, print a unified diff
    .venv/bin/python scripts/regen_golden.py --check  # print the diff, write nothing

The cases are the golden test's own (tests/unit/test_ruleset.py: CASES, GOLDEN), so
the two cannot drift apart. The test never writes: a blind regeneration cannot pass
it, and the diff printed here is what a reviewer reads before committing. Exit 1
when something differs (with --check) or when a golden file has no case any more.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
TEST = REPO / "tests" / "unit" / "test_ruleset.py"


def load_cases() -> ModuleType:
    spec = importlib.util.spec_from_file_location("golden_cases", TEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print the diff, write nothing")
    args = ap.parse_args(argv)
    from testbed.ruleset import render_ruleset

    cases = load_cases()
    golden: Path = cases.GOLDEN
    changed = 0
    for name, (spec, ctx) in sorted(cases.CASES.items()):
        path = golden / f"{name}.nft"
        new = render_ruleset(spec, ctx)
        old = path.read_text() if path.exists() else ""
        if new == old:
            continue
        changed += 1
        rel = path.relative_to(REPO)
        sys.stdout.writelines(difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True),
            f"a/{rel}", f"b/{rel}"))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new)
    stale = sorted(p.name for p in golden.glob("*.nft") if p.stem not in cases.CASES)
    for name in stale:
        print(f"stale golden file without a case: {golden / name}", file=sys.stderr)
    verb = "differ" if args.check else "rewritten"
    print(f"{changed} golden file{'s' if changed != 1 else ''} {verb}", file=sys.stderr)
    return 1 if stale or (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
