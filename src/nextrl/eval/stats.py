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
from statistics import NormalDist

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


ALPHA, POWER = 0.01, 0.8  # the verdict's significance level, and the power a "detectable" difference has
UNDERPOWERED = 0.05  # an evaluation that cannot see 5 points says so


def paired_n_needed(delta: float, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Positions a paired (McNemar) comparison needs to detect a true accuracy difference `delta` with `power`
    at two-sided `alpha`, when a fraction `discordance` of positions has exactly one model right (Connor 1987:
    n = (z_{1-α/2}·√ψ + z_{power}·√(ψ − δ²))² / δ²). A difference δ needs ψ ≥ δ: the larger is used."""
    psi = max(discordance, delta)
    z_a, z_b = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    return (z_a * math.sqrt(psi) + z_b * math.sqrt(max(psi - delta * delta, 0.0))) ** 2 / (delta * delta)


def detectable_difference(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true accuracy difference that a paired comparison of `n` positions detects with `power` at
    two-sided `alpha`, given the observed `discordance` (fraction of positions where exactly one model is
    right); 1.0 when not even a difference of 100 points would be (n = 0). Bisection on `paired_n_needed`,
    which falls as the difference grows."""
    if n <= 0 or paired_n_needed(1.0, discordance, alpha, power) > n:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if paired_n_needed(mid, discordance, alpha, power) > n else (lo, mid)
    return hi


def compare(a: Sequence[bool], b: Sequence[bool], seed: int = 0) -> dict[str, float]:
    """McNemar's exact test, the paired-bootstrap 95% interval of the difference, and the smallest difference
    this comparison could detect (`detectable`: 80% power at p < 0.01), as one record."""
    out = mcnemar_exact(a, b)
    out["ci_low"], out["ci_high"] = paired_bootstrap_ci(a, b, seed=seed)
    n = out["n"]
    out["detectable"] = detectable_difference(n, (out["a_only"] + out["b_only"]) / n if n else 0.0)
    return out


def power_note(n: int, detectable: float) -> str:
    """How much an evaluation of `n` positions can see, in words: the figure, or "underpowered" past 5 points."""
    figure = f"differences of {100 * detectable:.1f} points or more (80% power, p < 0.01)"
    if detectable > UNDERPOWERED:
        return f"underpowered: {n} positions can only detect {figure}"
    return f"{n} positions detect {figure}"
