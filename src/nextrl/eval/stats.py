"""Paired statistics for comparing two models on the same held-out positions.

Every model is evaluated on the same positions, so the comparison is paired: what matters is the positions
where exactly one of the two is right. McNemar's exact test asks whether those discordant positions split
evenly (two-sided binomial test with p = 1/2 on them); the paired bootstrap gives an interval for the
difference in accuracy by resampling positions (both models' outcomes on a position move together). Both are
far more powerful than comparing two independent proportions, whose ±2 s.e. band ignores the pairing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def stderr(correct: Sequence[bool]) -> float:
    """Standard error of an accuracy: sqrt(p(1−p)/n); NaN for n = 0."""
    n = len(correct)
    if n == 0:
        return math.nan
    p = float(np.mean(correct))
    return math.sqrt(p * (1.0 - p) / n)


def _log_binom_pmf(k: int, n: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test of `a` against `b` (outcomes on the same positions, in the same order).

    Returns n, the discordant counts a_only (a right, b wrong) and b_only, the accuracy difference a − b, and the
    two-sided p-value 2·P(X ≤ min(a_only, b_only)) for X ~ Binomial(a_only + b_only, 1/2), capped at 1 (1.0
    when there is no discordant position: no evidence either way)."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs outcomes on the same positions: {len(a)} vs {len(b)}")
    x = np.asarray(a, dtype=bool)
    y = np.asarray(b, dtype=bool)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    m = a_only + b_only
    if m == 0:
        p = 1.0
    else:
        tail = sum(math.exp(_log_binom_pmf(k, m)) for k in range(min(a_only, b_only) + 1))
        p = min(1.0, 2.0 * tail)
    n = len(x)
    return {
        "n": n,
        "a_only": a_only,
        "b_only": b_only,
        "diff": (a_only - b_only) / n if n else math.nan,
        "p_value": p,
    }


def paired_bootstrap_ci(
    a: Sequence[bool], b: Sequence[bool], level: float = 0.95, samples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval for mean(a) − mean(b), resampling positions with replacement (pairs kept)."""
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs outcomes on the same positions: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan, math.nan
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def compare(a: Sequence[bool], b: Sequence[bool], seed: int = 0) -> dict[str, float]:
    """McNemar's exact test plus the paired-bootstrap 95% interval of the difference, as one record."""
    out = mcnemar_exact(a, b)
    out["ci_low"], out["ci_high"] = paired_bootstrap_ci(a, b, seed=seed)
    return out
