"""How every benchmark script ends: print its section and append it to docs/benchmarks-history.md (unless
--no-write); BENCHMARKS.md is the front page that summarises it, edited by hand."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-history.md"


def publish(lines: list[str], write: bool) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        with open(BENCHMARKS, "a", encoding="utf-8") as f:
            f.write("\n" + text)
