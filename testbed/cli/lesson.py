"""`nat-testbed lesson [N]`: the seed ideas, made to happen on a real kernel and narrated."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from testbed.cli.common import check_lab_name
from testbed.errors import UsageError

if TYPE_CHECKING:
    from testbed.lessons.base import LessonResult

NAME = "lesson"
HELP = "step-by-step lessons with real packets (list them, or run one: lesson 4)"
DESCRIPTION = """Each lesson builds its lab, runs its experiment with real packets,
narrates every step from packet captures on both sides of the routers, checks its
facts against the captures and tears the lab down. Exit 1 if a fact does not hold."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lesson", nargs="?", metavar="N",
                   help="lesson number or name; 'all' runs every lesson; none lists them")
    p.add_argument("--out", metavar="DIR", help="keep the pcaps, nft traces and sequence "
                   "diagram (txt, html) here (with 'all': DIR/lesson-N/)")
    p.add_argument("--keep", action="store_true",
                   help="leave the lab up afterwards to poke at it (nat-testbed down LAB)")
    p.add_argument("--name", help="the lab's name (default: 'nt' + 4 random characters); "
                   "one lesson only")
    p.add_argument("--json", action="store_true", help="print the checked facts and every "
                   "step's crossings as JSON instead of the narration")


def _list() -> int:
    from testbed.lessons import all_lessons

    print("Lessons (run one, as root, with: nat-testbed lesson N):")
    lessons = all_lessons()
    width = max(len(ls.slug) for ls in lessons)  # ten lessons and more: columns still align
    for ls in lessons:
        print(f"  {ls.number:>2}  {ls.slug:<{width}}  {ls.title}")
    print("\nEach builds its lab, runs the experiment with real packets, narrates every step "
          "from\npacket captures on both sides of the routers, and tears the lab down.")
    return 0


def summary(res: LessonResult) -> dict[str, Any]:
    from testbed.trace.narrate import crossing_json

    return {"lesson": res.lesson.number, "slug": res.lesson.slug, "title": res.lesson.title,
            "lab": res.lab, "ok": res.ok, "elapsed_s": round(res.elapsed_s, 3),
            "complete_capture": res.captured.complete,
            "facts": [{"claim": f.claim, "ok": f.ok, "evidence": f.evidence}
                      for f in res.facts],
            "steps": [{"step": s.number, "title": s.title,
                       "crossings": [crossing_json(c) for c in s.crossings]}
                      for s in res.steps],
            "values": res.values}


def run(args: argparse.Namespace) -> int:
    from testbed.lab import require_root
    from testbed.lessons import all_lessons, find, run_lesson

    if not args.lesson:
        return _list()
    try:
        lessons = all_lessons() if args.lesson == "all" else [find(args.lesson)]
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    if args.name is not None and len(lessons) > 1:
        raise UsageError("--name: one lab name is for one lesson ('all' builds a lab for each)")
    check_lab_name(args.name)
    require_root()
    ok = True
    results = []
    for ls in lessons:
        out = None
        if args.out:
            out = args.out if len(lessons) == 1 else f"{args.out}/lesson-{ls.number}"
        say = (lambda _line: None) if args.json else print
        res = run_lesson(ls, out_dir=out, keep=args.keep, say=say, lab_name=args.name)
        ok = ok and res.ok
        results.append(summary(res))
        if not args.json and len(lessons) > 1:
            print(f"\n{'=' * 30} lesson {ls.number}: {res.elapsed_s:.2f} s, "
                  f"{'all facts hold' if res.ok else 'A FACT FAILED'}\n")
    if args.json:
        json.dump(results[0] if len(results) == 1 else results, sys.stdout, indent=2)
        print()
    elif len(results) > 1:
        print(all_summary(results))
    return 0 if ok else 1


def all_summary(results: list[dict[str, Any]]) -> str:
    """After `lesson all`: a line per lesson, every fact that failed, the total."""
    facts = [f for r in results for f in r["facts"]]
    held = sum(f["ok"] for f in facts)
    lines = ["Summary:"]
    for r in results:
        n_ok = sum(f["ok"] for f in r["facts"])
        mark = "ok" if r["ok"] else "FAILED"
        lines.append(f"  {r['lesson']}  {r['slug']:<16} {n_ok:>2} of {len(r['facts']):>2} "
                     f"facts hold  {r['elapsed_s']:5.1f} s  {mark}")
        lines += [f"       failed: {f['claim']}" for f in r["facts"] if not f["ok"]]
    total = sum(r["elapsed_s"] for r in results)
    verdict = "every fact holds" if held == len(facts) else f"{len(facts) - held} failed"
    lines.append(f"{len(results)} lessons in {total:.1f} s: {held} of {len(facts)} facts checked "
                 f"against the captures hold ({verdict})")
    return "\n".join(lines)
