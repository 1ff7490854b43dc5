"""Next-token accuracy on held-out positions, per entropy bucket, in RPT's two modes:
*standard* (greedy next token, no thought) and *with_thought* (write a thought, then answer)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from nextrl.engine.base import RolloutEngine, SamplingParams
from nextrl.env.base import Task


def _per_bucket(buckets: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    by: dict[str, list[bool]] = defaultdict(list)
    for b, c in zip(buckets, correct, strict=True):
        by[b].append(c)
        by["all"].append(c)
    return {b: float(np.mean(v)) for b, v in sorted(by.items())}


def standard_accuracy(
    env,
    engine: RolloutEngine,
    tasks: Sequence[Task],
    contexts: Sequence[Sequence[int]],
) -> dict[str, float]:
    """Greedy next token from the bare context, scored with the same byte rule as RL answers."""
    outs = engine.generate(list(contexts), SamplingParams.simple(1, temperature=0.0))
    correct = [
        env.standard_prediction_correct(t, o[0].completion_ids[0]) if o[0].completion_ids else False
        for t, o in zip(tasks, outs, strict=True)
    ]
    return _per_bucket([t.meta["bucket"] for t in tasks], correct)


def thought_accuracy(
    env,
    engine: RolloutEngine,
    tasks: Sequence[Task],
    temperature: float,
) -> tuple[dict[str, float], float]:
    """Thought then answer (greedy by default); returns per-bucket accuracy and the mean thought length."""
    outs = engine.generate([t.prompt_ids for t in tasks], env.sampling_params(1, temperature, 1.0))
    rewards = env.score(tasks, outs)
    correct = [r[0].components.get("prefix_match", r[0].total) > 0 for r in rewards]
    lengths = [o[0].phase_starts[1] if len(o[0].phase_starts) > 1 else len(o[0].completion_ids) for o in outs]
    return _per_bucket([t.meta["bucket"] for t in tasks], correct), float(
        np.mean(lengths)
    ) if lengths else 0.0
