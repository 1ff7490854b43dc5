"""Evaluation: the nats per position that thinking buys.

For each held-out position the policy writes a thought (greedy by default), then the first true next token is
teacher-forced twice: after the closed thought (where the thought format says, `ThoughtFormat.scored_prefix`:
`context <think> thought </think>` in the structured format, `context ( thought )` in the aside format, the bare
context for an aside's empty thought) and after the bare context. The mean of log p(x_t | context, thought) −
log p(x_t | context) is RLP's reward (arXiv 2510.01265) with the policy itself as the baseline: its expectation
is the drop in cross-entropy that the thought buys. A model that ignores its thought scores about 0 (the
delimiters alone may shift it: a structured empty thought costs what `<think></think>` costs, an aside's empty
thought exactly 0); a useful thought scores > 0. Where the format mixes (`env.mix_weight`, the aside format) the
with-thought log-prob is the mixture's, log(w p(x_t | context, thought) + (1 − w) p(x_t | context)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from nextrl.engine.base import Rollout
from nextrl.engine.sampler import TorchSampler
from nextrl.env.base import Task
from nextrl.sharing.logprobs import tree_logprobs_and_nll


def information_gain_nats(
    logp_with_thought: Sequence[float] | torch.Tensor, logp_no_thought: Sequence[float] | torch.Tensor
) -> dict[str, float]:
    """Mean of the per-position differences (nats), its standard error (sample std / √n) and n.

    NaN mean for n = 0 and NaN stderr for n < 2: the quantities are undefined there, and 0 would read as a
    measurement."""
    a = torch.as_tensor(logp_with_thought, dtype=torch.float64).flatten()
    b = torch.as_tensor(logp_no_thought, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise ValueError(f"{a.numel()} log-probs with thought but {b.numel()} without")
    n = a.numel()
    d = a - b
    mean = float(d.mean()) if n else math.nan
    stderr = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "stderr": stderr, "n": n}


def _thoughts(
    model, pad_id: int, env, tasks: Sequence[Task], autocast, temperature: float, batch_size: int, seed: int
) -> list[Rollout]:
    """One thought per task (only the thought phase), sampled with the env's parameters."""
    fmt = env.thought_format
    if fmt.n_phases < 2:
        return [Rollout(list(t.prompt_ids), [], [], [], "stop", phase_starts=[0]) for t in tasks]
    # Only the thought phase: the answer is teacher-forced afterwards, so sampling it would be wasted work.
    params = env.sampling_params(1, temperature, 1.0)
    params = fmt.thought_params(tasks, dataclasses.replace(params, phases=params.phases[:1]))
    sampler = TorchSampler(model, pad_id, batch_size=batch_size, autocast_dtype=autocast, seed=seed)
    outs = sampler.generate([t.prompt_ids for t in tasks], params)
    return [group[0] for group in outs]


@torch.no_grad()
def _target_logprobs(
    model,
    pad_id: int,
    fmt,
    tasks: Sequence[Task],
    prefixes: Sequence[list[int]],
    autocast,
    max_nodes: int,
) -> tuple[list[float], list[float]]:
    """Per task (each with a context): log p(x_t | prefix) (the closed thought's `scored_prefix`; the format's
    mixture with the bare context's where it mixes, `ThoughtFormat.mix`) and log p(x_t | context)
    at temperature 1, teacher-forced through the prefix-tree path, without gradient. Both are one forward: the
    bare context is a prefix of the prompt, so "context x_t" and "prefix x_t" are branches of one trie
    (a stripe's prefix is encoded once), and only the row that predicts x_t in each is projected to the
    vocabulary (`tree_logprobs_and_nll`'s next-token targets), not the thought's rows."""
    if not tasks:
        return [], []
    targets = [int(t.meta["target_ids"][0]) for t in tasks]
    seqs = [[*p, x] for p, x in zip(prefixes, targets, strict=True)]
    seqs += [[*t.meta["context_ids"], x] for t, x in zip(tasks, targets, strict=True)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, nll = tree_logprobs_and_nll(
                model,
                [],
                [],
                1.0,
                pad_id,
                autocast,
                max_nodes,
                lm_seqs=seqs,
                lm_starts=[len(q) - 2 for q in seqs],
            )
    finally:
        model.train(was_training)
    logp = -nll
    with_t, without = logp[: len(tasks)], logp[len(tasks) :]
    return fmt.mix(with_t, without).tolist(), without.tolist()


def gains_of_thoughts(
    model,
    pad_id: int,
    env,
    tasks: Sequence[Task],
    thoughts: Sequence[Rollout],
    autocast,
    max_nodes: int = 4096,
) -> list[float]:
    """Per task, log p(x_t | closed thought) − log p(x_t | context) for the thought of the given rollout (one
    per task, e.g. the greedy with-thought evaluation's). NaN for a task with no context."""
    idx = [i for i, t in enumerate(tasks) if t.meta["context_ids"]]
    prefixes = [env.thought_format.scored_prefix(thoughts[i]) for i in idx]
    fmt = env.thought_format
    with_t, without = _target_logprobs(
        model, pad_id, fmt, [tasks[i] for i in idx], prefixes, autocast, max_nodes
    )
    out = [math.nan] * len(tasks)
    for k, a, b in zip(idx, with_t, without, strict=True):
        out[k] = a - b
    return out


def evaluate_information_gain(
    model,
    tokenizer,
    env,
    tasks: Sequence[Task],
    autocast: torch.dtype | None,
    thought_temperature: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    max_nodes: int = 4096,
) -> dict[str, Any]:
    """Information gain of the policy's own thoughts on `tasks` (next-token tasks in a format whose answer
    directly follows the thought): thoughts sampled by the plain sampler, then scored as `gains_of_thoughts`
    scores them.

    Returns information_gain_nats' mean/stderr/n plus logp_with_thought and logp_no_thought (means),
    thought_tokens (mean, the closing delimiter included; 0 for an empty aside), unclosed (thoughts ended by
    eos, closed here) and skipped (tasks with an empty context: there is nothing to condition the no-thought
    prediction on)."""
    fmt = getattr(env, "thought_format", None)
    if fmt is None or not fmt.teacher_forced:
        raise ValueError(
            "information gain needs a format whose answer directly follows the thought (structured or aside)"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tasks = list(tasks)
    usable = [t for t in tasks if t.meta["context_ids"]]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rollouts = _thoughts(model, pad_id, env, usable, autocast, thought_temperature, batch_size, seed)
    finally:
        model.train(was_training)
    closed = [fmt.closed_thought(r) for r in rollouts]
    prefixes = [fmt.scored_prefix(r) for r in rollouts]
    with_t, without = _target_logprobs(model, pad_id, fmt, usable, prefixes, autocast, max_nodes)
    result: dict[str, Any] = information_gain_nats(with_t, without)
    n = len(usable)
    result |= {
        "logp_with_thought": sum(with_t) / n if n else math.nan,
        "logp_no_thought": sum(without) / n if n else math.nan,
        "thought_tokens": sum(len(th) for th, _ in closed) / n if n else math.nan,
        "unclosed": sum(added for _, added in closed),
        "skipped": len(tasks) - n,
    }
    return result
