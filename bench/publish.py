"""How every benchmark script ends: print its section and append it to BENCHMARKS.md (unless --no-write)."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def publish(lines: list[str], write: bool) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        with open(BENCHMARKS, "a", encoding="utf-8") as f:
            f.write("\n" + text)
