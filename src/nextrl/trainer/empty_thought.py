"""Empty-thought samples: members of a group that close the thought at once, so that RL can learn where thinking
pays.

With `rl.empty_thought_samples = k`, k of the G samples of every position skip the thought: their completion is
`</think>` followed by a sampled answer. The engine generates the answer from `prompt + </think>` (any engine
can, with no special support), and the `</think>` is recorded as the policy's own action: its behaviour
log-prob is log π(</think> | prompt) scored by the policy when the group is drawn, its entropy is that of the
first-token distribution (the same for every sample of the prompt), and it carries loss like a sampled token.

The estimator. Advantages are computed over the whole group as usual, so every thinking sample's baseline
includes the outcome of not thinking, and the empty sample's advantage is r_empty − mean(group): it raises the
probability of closing at once where not thinking beats the group, and lowers it where thinking wins. The
`</think>` was not drawn from the policy; treating it as on-policy (ratio 1 at the first update) is a biased,
deliberate exploration bonus: the importance-weighted estimator would scale its gradient by π(</think>), which
is near 0 exactly where the policy has not yet learnt that it may stop, so it would never learn it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from nextrl.engine.base import Rollout, SamplingParams


def answer_params(params: SamplingParams, k: int) -> SamplingParams:
    """The answer phase alone (the thought is already closed), k samples per prompt."""
    return dataclasses.replace(params, phases=params.phases[-1:], n=k, score_phase=None, score_tokens=())


def closed_prompts(prompts: Sequence[Sequence[int]], think_close: int) -> list[list[int]]:
    return [[*p, think_close] for p in prompts]


def join_empty_thought(
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[Rollout]],
    close_logprobs: Sequence[float],
    first_entropies: Sequence[float],
    think_close: int,
) -> list[list[Rollout]]:
    """Rollouts of `prompt` whose completion is `</think>` (an action with the given behaviour log-prob and
    entropy) followed by each answer generated from `prompt + </think>`; phases: thought [0, 1), answer [1, ...)."""
    out = []
    for p, group, lp, ent in zip(prompts, answers, close_logprobs, first_entropies, strict=True):
        out.append(
            [
                Rollout(
                    prompt_ids=list(p),
                    completion_ids=[think_close, *r.completion_ids],
                    logprobs=[float(lp), *r.logprobs],
                    action_mask=[1, *r.action_mask],
                    finish_reason=r.finish_reason,
                    policy_version=r.policy_version,
                    phase_starts=[0, *(1 + s for s in (r.phase_starts or [0]))],
                    entropies=[float(ent), *r.entropies] if r.entropies else [],
                )
                for r in group
            ]
        )
    return out
