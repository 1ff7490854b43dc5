"""Next-token accuracy on held-out positions, in RPT's two modes: *standard* (greedy next token, no thought)
and *with_thought* (write a thought, then answer). Outcomes are kept per position, so that two models (or two
modes) can be compared on the same positions with a paired test (`nextrl.eval.stats`)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from nextrl.engine.base import Rollout, RolloutEngine, SamplingParams
from nextrl.env.base import Task
from nextrl.env.formats import EngineSampler
from nextrl.sharing.logprobs import tree_next_token_log_probs

MIX_SLICE = 32  # positions per pass of `mixed_answers`: it holds two [positions x vocabulary] rows


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


@torch.no_grad()
def mixed_answers(
    model,
    pad_id: int,
    env,
    tasks: Sequence[Task],
    rollouts: Sequence[Rollout],
    autocast,
    temperature: float = 0.0,
    max_nodes: int = 4096,
    seed: int = 0,
) -> tuple[list[bool], list[Rollout]]:
    """The with-thought prediction of a format that mixes (`env.mix_weight`): each rollout's answer token
    replaced by the argmax (temperature 0; else a draw at `temperature`) of the format's mixture of the model's
    two next-token rows, after the closed thought (`scored_prefix`) and after the bare context. An empty thought
    is the bare row itself (the standard prediction); a rollout without an answer (its thought ended by eos)
    keeps none. Returns whether each answer is right (as `thought_rollouts`) and the rollouts."""
    fmt = env.thought_format
    gen = torch.Generator().manual_seed(seed)
    out = list(rollouts)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(tasks), MIX_SLICE):
            idx = [i for i in range(s, min(s + MIX_SLICE, len(tasks))) if len(rollouts[i].phase_starts) > 1]
            if not idx:
                continue
            prefixes = [fmt.scored_prefix(rollouts[i]) for i in idx]
            prefixes += [list(tasks[i].meta["context_ids"]) for i in idx]
            rows = tree_next_token_log_probs(model, prefixes, pad_id, autocast, max_nodes).cpu()
            mixed = fmt.mix(rows[: len(idx)], rows[len(idx) :])
            if temperature > 0:
                picked = torch.multinomial(torch.softmax(mixed / temperature, -1), 1, generator=gen)[:, 0]
            else:
                picked = mixed.argmax(-1)
            for k, i in enumerate(idx):
                out[i] = with_answer(rollouts[i], int(picked[k]), float(mixed[k, picked[k]]))
    finally:
        model.train(was_training)
    rewards = env.score(tasks, [[r] for r in out])
    return [r[0].components.get("prefix_match", r[0].total) > 0 for r in rewards], out


def with_answer(rollout: Rollout, token: int, logprob: float) -> Rollout:
    """`rollout` with its answer (last) phase replaced by the one token `token`."""
    start = rollout.phase_starts[-1]
    return dataclasses.replace(
        rollout,
        completion_ids=[*rollout.completion_ids[:start], token],
        logprobs=[*rollout.logprobs[:start], logprob],
        action_mask=[*rollout.action_mask[:start], 1],
        entropies=rollout.entropies[:start] + ([0.0] if rollout.entropies else []),
        finish_reason="length",
    )


def thought_length(rollout: Rollout) -> int:
    """Tokens of the thought phase, its closing delimiter included (0 for a format without a thought phase, and
    for an aside's empty thought)."""
    return rollout.phase_starts[1] if len(rollout.phase_starts) > 1 else len(rollout.completion_ids)
