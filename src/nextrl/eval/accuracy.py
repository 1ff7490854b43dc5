"""Next-token accuracy on held-out positions, in RPT's two modes: *standard* (greedy next token, no thought)
and *with_thought* (write a thought, then answer). Outcomes are kept per position, so that two models (or two
modes) can be compared on the same positions with a paired test (`nextrl.eval.stats`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from nextrl.engine.base import Rollout, RolloutEngine, SamplingParams
from nextrl.env.base import Task
from nextrl.env.formats import EngineSampler


def per_bucket(buckets: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """Mean of `values` per bucket and over all ("all")."""
    by: dict[str, list[float]] = defaultdict(list)
    for b, v in zip(buckets, values, strict=True):
        by[b].append(float(v))
        by["all"].append(float(v))
    return {b: float(np.mean(v)) for b, v in sorted(by.items())}


def standard_correct(env, engine: RolloutEngine, tasks: Sequence[Task]) -> list[bool]:
    """Greedy next token from the bare context, scored with the same byte rule as RL answers."""
    contexts = [t.meta["context_ids"] for t in tasks]
    outs = engine.generate(contexts, SamplingParams.simple(1, temperature=0.0))
    return [
        env.standard_prediction_correct(t, o[0].completion_ids[0]) if o[0].completion_ids else False
        for t, o in zip(tasks, outs, strict=True)
    ]


def thought_rollouts(
    env, engine: RolloutEngine, tasks: Sequence[Task], temperature: float
) -> tuple[list[bool], list[Rollout]]:
    """Thought then answer (greedy by default): whether each answer is right, and the rollouts (one per task).
    The thought format makes them (`sample_groups`): in the aside format a thought closed at once is no
    thought, so that prediction is the bare context's."""
    params = env.sampling_params(1, temperature, 1.0)
    fmt = getattr(env, "thought_format", None)
    if fmt is None:
        outs = engine.generate([t.prompt_ids for t in tasks], params)
    else:
        outs = fmt.sample_groups(tasks, params, 0, EngineSampler(engine))
    rewards = env.score(tasks, outs)
    correct = [r[0].components.get("prefix_match", r[0].total) > 0 for r in rewards]
    return correct, [o[0] for o in outs]


def thought_length(rollout: Rollout) -> int:
    """Tokens of the thought phase, its closing delimiter included (0 for a format without a thought phase, and
    for an aside's empty thought)."""
    return rollout.phase_starts[1] if len(rollout.phase_starts) > 1 else len(rollout.completion_ids)
