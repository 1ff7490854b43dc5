"""Plain-text summary table printed at the end of a run (fixed width, no dependencies)."""

from __future__ import annotations

import math
from typing import Any

NO_VERDICT = "no verdict: evaluation did not finish"
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


def get(d: Any, *keys: str) -> Any:
    """Nested lookup that returns None on any missing level (partial summaries are normal)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def models(summary: dict) -> list[str]:
    """Models in the summary's order, plus any that only appear in a per-model section."""
    listed = summary.get("models")
    names = [m for m in listed if isinstance(m, str)] if isinstance(listed, list) else []
    for section in ("accuracy", "perplexity", "thought_length"):
        if isinstance(summary.get(section), dict):
            names += [m for m in summary[section] if isinstance(m, str)]
    return list(dict.fromkeys(names))


def verdict_text(summary: dict) -> str:
    text = get(summary, "verdict", "text")
    return text if isinstance(text, str) and text else NO_VERDICT


def summary_table(summary: dict) -> str:
    buckets = BUCKETS + (["computed"] if "computed" in (summary.get("eval_counts") or {}) else [])
    cols = ["std/all", "thought/all", *(f"th/{b}" for b in buckets), "ppl"]
    names = models(summary)
    w0 = max([5, *map(len, names)])
    lines = [f"{'model':<{w0}}" + "".join(f"{c:>12}" for c in cols)]
    for m in names:
        acc = get(summary, "accuracy", m)
        ppl = num(get(summary, "perplexity", m))
        cells = [pct(get(acc, "standard", "all")), pct(get(acc, "with_thought", "all"))]
        cells += [pct(get(acc, "with_thought", b)) for b in buckets]
        cells.append("-" if ppl is None else f"{ppl:.2f}")
        lines.append(f"{m:<{w0}}" + "".join(f"{c:>12}" for c in cells))
    rl, base = num(get(summary, "flops", "rl")), num(get(summary, "flops", "baseline"))
    ratio = f" (x{rl / base:.2f})" if rl is not None and base else ""
    wall = num(summary.get("wall_seconds"))
    wall_s = "-" if wall is None else f"{wall:.1f} s"
    lines.append(f"FLOPs rl {sci(rl)} vs baseline {sci(base)}{ratio} | wall {wall_s}")
    lines.append(f"Verdict: {verdict_text(summary)}")
    control = summary.get("control")
    if isinstance(control, dict):
        parts = [
            f"{k.removeprefix('vs_')} {100 * (num(get(control, k, 'diff')) or 0):+.1f} pts "
            f"(p = {num(get(control, k, 'p_value')) or 0:.2g})"
            for k in ("vs_base", "vs_baseline")
            if isinstance(control.get(k), dict)
        ]
        state = "PASSED" if control.get("passed") is True else "FAILED"
        lines.append(
            f"Positive control {state}: RL with thought on '{control.get('bucket')}' "
            f"{pct(control.get('rl_with_thought'))}; vs {', vs '.join(parts)}"
        )
    return "\n".join(lines)
