"""Evaluation: the nats per position that thinking buys.

For each held-out position the policy writes a thought (greedy by default), then the first true next token is
teacher-forced twice: after `context <think> thought </think>` and after the bare context. The mean of
log p(x_t | context, thought) − log p(x_t | context) is RLP's reward (arXiv 2510.01265) with the policy itself
as the baseline: its expectation is the drop in cross-entropy that the thought buys. A model that ignores its
thought scores about 0 (the `<think>` scaffold alone may shift it a little); a useful thought scores > 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from nextrl.algo.logprobs import completion_logprobs, tree_completion_logprobs
from nextrl.engine.base import Rollout
from nextrl.engine.sampler import TorchSampler
from nextrl.env.base import Task
from nextrl.env.formats import closed_thought


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
) -> list[tuple[list[int], bool]]:
    """(thought incl. `</think>`, whether `</think>` was added) per task, sampled with the env's parameters."""
    if env.cfg.thought_tokens == 0:
        return [([], False) for _ in tasks]  # the prompt already ends with an empty `<think></think>`
    # Only the thought phase: the answer is teacher-forced afterwards, so sampling it would be wasted work.
    params = env.sampling_params(1, temperature, 1.0)
    params = dataclasses.replace(params, phases=params.phases[:1])
    sampler = TorchSampler(model, pad_id, batch_size=batch_size, autocast_dtype=autocast, seed=seed)
    outs = sampler.generate([t.prompt_ids for t in tasks], params)
    return [closed_thought(group[0], env.think_close, env.eos_ids) for group in outs]


def _first_target_logprobs(
    model, prompts: list[list[int]], targets: list[int], pad_id: int, autocast, batch_size: int
) -> list[float]:
    """log p(target | prompt) at temperature 1 (the model's own distribution), in chunks of `batch_size`."""
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        chunk_t = [[t] for t in targets[i : i + batch_size]]
        logp = completion_logprobs(model, prompts[i : i + batch_size], chunk_t, 1.0, pad_id, autocast)
        out += logp[:, 0].tolist()
    return out


@torch.no_grad()
def gains_of_thoughts(
    model,
    pad_id: int,
    env,
    tasks: Sequence[Task],
    thoughts: Sequence[Rollout],
    autocast,
    max_nodes: int = 4096,
) -> list[float]:
    """Per task, log p(x_t | context, <think> thought </think>) − log p(x_t | context) for the thought of the
    given rollout (one per task, e.g. the greedy with-thought evaluation's), both teacher-forced through the
    prefix-tree path: a stripe's shared prefix is encoded once per pass. NaN for a task with no context."""
    prompts, with_t, bare, targets, idx = [], [], [], [], []
    for i, (t, r) in enumerate(zip(tasks, thoughts, strict=True)):
        if not t.meta["context_ids"]:
            continue
        th = closed_thought(r, env.think_close, env.eos_ids)[0] if env.cfg.thought_tokens > 0 else []
        target = int(t.meta["target_ids"][0])
        # the thought is a branch of the shared prompt, the target its last token: one tree for the stripe
        prompts.append(list(t.prompt_ids))
        with_t.append([*th, target])
        bare.append(list(t.meta["context_ids"]))
        targets.append([target])
        idx.append(i)
    out = [math.nan] * len(tasks)
    if not idx:
        return out
    was_training = model.training
    model.eval()
    try:
        a = tree_completion_logprobs(model, prompts, with_t, 1.0, pad_id, autocast, max_nodes=max_nodes)
        b = tree_completion_logprobs(model, bare, targets, 1.0, pad_id, autocast, max_nodes=max_nodes)
    finally:
        model.train(was_training)
    last = torch.tensor([len(c) - 1 for c in with_t], device=a.device)
    gain = a.gather(1, last[:, None])[:, 0] - b[:, 0]
    for k, v in zip(idx, gain.tolist(), strict=True):
        out[k] = v
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
) -> dict[str, Any]:
    """Information gain of the policy's own thoughts on `tasks` (structured-format next-token tasks).

    Returns information_gain_nats' mean/stderr/n plus logp_with_thought and logp_no_thought (means),
    thought_tokens (mean, `</think>` included), unclosed (thoughts ended by eos, closed here) and skipped
    (tasks with an empty context: there is nothing to condition the no-thought prediction on)."""
    if getattr(env.cfg, "format", None) != "structured":
        raise ValueError("information gain needs the structured format (the answer directly after </think>)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tasks = list(tasks)
    usable = [t for t in tasks if t.meta["context_ids"]]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            closed = _thoughts(model, pad_id, env, usable, autocast, thought_temperature, batch_size, seed)
            targets = [int(t.meta["target_ids"][0]) for t in usable]
            with_prompts = [list(t.prompt_ids) + th for t, (th, _) in zip(usable, closed, strict=True)]
            bare_prompts = [list(t.meta["context_ids"]) for t in usable]
            with_t = _first_target_logprobs(model, with_prompts, targets, pad_id, autocast, batch_size)
            without = _first_target_logprobs(model, bare_prompts, targets, pad_id, autocast, batch_size)
    finally:
        model.train(was_training)
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
