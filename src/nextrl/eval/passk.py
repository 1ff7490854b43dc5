"""pass@k of a model on an environment's problems (math, code): n samples per problem, the unbiased estimator
of Chen et al. (2021) from the number c of samples that are right,

    pass@k = 1 − C(n − c, k) / C(n, k)        (1 when n − c < k)

averaged over problems, with its standard error. A sample is right when the environment's correctness
component is 1 (`correct` for math, `passed` for code)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nextrl.engine.base import RolloutEngine
from nextrl.env.base import Environment, TaskSource
from nextrl.utils.rewards import is_correct


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are right."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_pass_at_k(
    env: Environment,
    engine: RolloutEngine,
    source: TaskSource,
    problems: int,
    n: int,
    ks: Sequence[int],
    temperature: float = 0.8,
    batch: int = 16,
) -> dict[str, Any]:
    """pass@k for each k in `ks` (k <= n) over `problems` problems drawn from `source` (fewer when the source
    has fewer: a problem is never counted twice)."""
    if any(k > n for k in ks):
        raise ValueError(f"every k must be at most n={n}: {list(ks)}")
    params = env.sampling_params(n, temperature, 1.0)
    counts: list[int] = []
    seen: set[str] = set()
    while len(counts) < problems:
        # each problem once: a source that starts over (a new epoch) has no more problems to give
        drawn = source.take(min(batch, problems - len(counts)), 0)
        tasks = []
        for t in drawn:  # one at a time: a batch that spans two epochs can hold a problem twice
            if t.task_id not in seen:
                seen.add(t.task_id)
                tasks.append(t)
        if not tasks:
            break
        groups = engine.generate([t.prompt_ids for t in tasks], params)
        for task, rewards in zip(tasks, env.score(tasks, groups), strict=True):
            counts.append(sum(is_correct(r.components, env.correctness_of(task)) for r in rewards))
    if not counts:
        raise ValueError("the task source gave no problems to evaluate")
    out: dict[str, Any] = {"problems": len(counts), "samples_per_problem": n}
    for k in ks:
        vals = np.array([pass_at_k(n, c, k) for c in counts])
        se = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
        out[f"pass@{k}"] = {"mean": float(vals.mean()), "stderr": se}
    return out
