"""Plain-text summary table printed at the end of a run (fixed width), read from a `RunSummary`."""

from __future__ import annotations

import math
from typing import Any

from nextrl.summary import RunSummary

NO_VERDICT = "no verdict: evaluation did not finish"
NO_BASELINE = "no verdict: no FLOP-matched baseline was trained (baseline.enabled=false)"
BUCKETS = ["easy", "medium", "hard"]


def num(x: Any) -> float | None:
    """A finite number from a JSON value, else None (bool is not a number here)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def pct(x: Any) -> str:
    v = num(x)
    return "-" if v is None else f"{100 * v:.1f}%"


def sci(x: Any) -> str:
    v = num(x)
    return "-" if v is None else f"{v:.2e}"


def models(summary: RunSummary) -> list[str]:
    """The evaluated models, in the summary's order (every per-model block is keyed by one of them)."""
    return list(summary.models)


def accuracy(summary: RunSummary, model: str, mode: str, bucket: str) -> float | None:
    """One accuracy figure, None when that model, mode or bucket was not evaluated."""
    acc = summary.accuracy.get(model)
    return None if acc is None else acc.by_mode()[mode].get(bucket)


SKIPPED = 0.95  # a model whose evaluated thoughts are empty at least this often did not think


def thinking_notes(summary: RunSummary) -> list[str]:
    """Plain words for the models that skipped thinking: with-thought then means with an empty thought."""
    notes = []
    for m in models(summary):
        empty = num(summary.empty_thoughts.get(m))
        if empty is not None and empty >= SKIPPED:
            mean = num(summary.thought_length.get(m, {}).get("all")) or 0.0
            notes.append(
                f"{m}: thinking skipped: mean thought {mean:.1f} token{'s' if mean != 1 else ''}, "
                f"{empty:.0%} of its evaluated thoughts empty"
            )
    return notes


def verdict_text(summary: RunSummary | None) -> str:
    v = summary.verdict if summary is not None else None
    if v is not None and v.text:
        return v.text
    if summary is not None and "baseline" not in summary.models:
        return NO_BASELINE
    return NO_VERDICT


def summary_table(summary: RunSummary | dict) -> str:
    """The run's results as fixed-width text; a dict is validated against `RunSummary` first."""
    s = summary if isinstance(summary, RunSummary) else RunSummary.from_dict(summary)
    buckets = BUCKETS + (["computed"] if "computed" in s.eval_counts else [])
    cols = ["std/all", "thought/all", *(f"th/{b}" for b in buckets), "ppl"]
    names = models(s)
    w0 = max([5, *map(len, names)])
    lines = [f"{'model':<{w0}}" + "".join(f"{c:>12}" for c in cols)]
    for m in names:
        ppl = num(s.perplexity.get(m))
        cells = [pct(accuracy(s, m, "standard", "all")), pct(accuracy(s, m, "with_thought", "all"))]
        cells += [pct(accuracy(s, m, "with_thought", b)) for b in buckets]
        cells.append("-" if ppl is None else f"{ppl:.2f}")
        lines.append(f"{m:<{w0}}" + "".join(f"{c:>12}" for c in cells))
    rl, base = num(s.flops.rl), num(s.flops.baseline)
    ratio = f" (x{rl / base:.2f})" if rl is not None and base else ""
    wall = num(s.wall_seconds)
    wall_s = "-" if wall is None else f"{wall:.1f} s"
    lines.append(f"FLOPs rl {sci(rl)} vs baseline {sci(base)}{ratio} | wall {wall_s}")
    lines.append(f"Verdict: {verdict_text(s)}")
    lines += [f"Note: {note}" for note in thinking_notes(s)]
    control = s.control
    if control is not None:
        parts = [
            f"{name} {100 * (num(c.diff) or 0):+.1f} pts (p = {num(c.p_value) or 0:.2g})"
            for name, c in (("base", control.vs_base), ("baseline", control.vs_baseline))
            if c is not None
        ]
        state = "PASSED" if control.passed else "FAILED"
        lines.append(
            f"Positive control {state}: RL with thought on '{control.bucket}' "
            f"{pct(control.rl_with_thought)}; vs {', vs '.join(parts)}"
        )
    return "\n".join(lines)
