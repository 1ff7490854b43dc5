"""The code sandbox on HumanEval's canonical solutions: every one must pass (and a wrong one must not), and
how many programs per second it runs.

    python bench/sandbox.py --path ../shared/data/humaneval/HumanEval.jsonl.gz [--workers 4] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from nextrl.env.code import program
from nextrl.env.records import read_records
from nextrl.env.sandbox import Limits, run_many
from publish import publish  # bench/publish.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--path", default=str(ROOT.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz")
    )
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    records = read_records(args.path)
    sentinel = "nextrl-bench-passed"
    t = time.time()
    good = run_many([program(r, r["canonical_solution"], sentinel) for r in records], Limits(), args.workers)
    seconds = time.time() - t
    passed = sum(r.ok and sentinel in r.stdout for r in good)
    failed = [
        rec["task_id"] for rec, r in zip(records, good, strict=True) if not (r.ok and sentinel in r.stdout)
    ]
    wrong = run_many([program(r, "    return None\n", sentinel) for r in records], Limits(), args.workers)
    wrongly_passed = sum(r.ok and sentinel in r.stdout for r in wrong)
    lines = [
        f"### Code sandbox on HumanEval ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `python bench/sandbox.py --workers {args.workers}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; isolation: unshare (user, mount, net, pid "
        "namespaces) + rlimits, read-only filesystem, empty environment",
        f"- canonical solutions passing: **{passed} / {len(records)}**"
        + (f" (failing: {', '.join(failed[:10])})" if failed else ""),
        f"- `return None` stubs passing: {wrongly_passed} / {len(records)} (HumanEval tests that a stub satisfies)",
        f"- throughput: {len(records) / seconds:.1f} programs/s with {args.workers} at a time "
        f"({seconds:.1f} s for {len(records)})",
    ]
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
