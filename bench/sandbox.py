"""The code sandbox on HumanEval's canonical solutions, with the verdict decided in the trusted process (the
default) and the old way (tests and sentinel in the program): every canonical solution must pass, wrong ones
must not, and how many programs per second each way runs.

    python bench/sandbox.py --path ../shared/data/humaneval/HumanEval.jsonl.gz [--workers 4] [--repeat 3]

Per way: canonical solutions passing, `return None` stubs passing, an object whose `__eq__` always answers
True passing, the same with `builtins.any` patched (which undoes the old way's rebuilding of the candidate's
results: the old way credits it), and the throughput on the canonical solutions (the best and
the median of `--repeat` runs, the two ways interleaved so that both see the same machine load).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from nextrl.env.code import run_tests
from nextrl.env.records import read_records
from nextrl.env.sandbox import Limits
from nextrl.env.verdict import plan_tests
from publish import publish  # bench/publish.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
ANYTHING = "    return Anything()\n\n\nclass Anything:\n    __eq__ = lambda self, other: True\n"
UNDO = "import builtins\nbuiltins.any = lambda items: True\n"  # undoes the old way's rebuilding of results
WAYS = {"trusted verdict": True, "old way (tests in the program)": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--path", default=str(ROOT.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz")
    )
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of the canonical solutions per way")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    records = read_records(args.path)
    canonical = [r["canonical_solution"] for r in records]
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    passed: dict[str, list[str]] = {}
    for _ in range(args.repeat):
        for way, split in WAYS.items():
            t = time.time()
            verdicts = run_tests(records, canonical, Limits(), args.workers, split, [args.path])
            seconds[way].append(time.time() - t)
            passed[way] = [r["task_id"] for r, v in zip(records, verdicts, strict=True) if v.passed]
    wrong = {
        (way, name): sum(
            v.passed
            for v in run_tests(records, [body] * len(records), Limits(), args.workers, split, [args.path])
        )
        for way, split in WAYS.items()
        for name, body in (("stub", "    return None\n"), ("anything", ANYTHING), ("undo", ANYTHING + UNDO))
    }
    trusted = sum(plan_tests(r) is not None for r in records)
    n = len(records)
    lines = [
        f"### Code sandbox on HumanEval ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `python bench/sandbox.py --workers {args.workers} --repeat {args.repeat}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; isolation: unshare (user, mount, net, pid, ipc "
        "namespaces) + rlimits, read-only filesystem but for the program's tmpfs, data folder hidden, empty environment",
        f"- records whose tests the trusted process decides: {trusted} / {n} (the rest run the old way)",
        "",
        "| verdict | canonical passing | `return None` passing | `__eq__`-is-True object passing "
        "| the same, `builtins.any` patched | programs/s (best) | programs/s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for way in WAYS:
        best, median = n / min(seconds[way]), n / statistics.median(seconds[way])
        lines.append(
            f"| {way} | {len(passed[way])} / {n} | {wrong[way, 'stub']} / {n} | {wrong[way, 'anything']} / {n} "
            f"| {wrong[way, 'undo']} / {n} | {best:.1f} | {median:.1f} |"
        )
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
