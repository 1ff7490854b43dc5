"""The structured format (base and small models nextrl pretrained): the prompt is the raw context ids plus
`<think>`; the thought and the answer are separate sampling phases, so the answer is read by position, with
no parsing.

An empty thought is `</think>` as the first thought token. With `rl.empty_thought_samples = k`, k of the G
samples of every position skip the thought: their completion is `</think>` followed by a sampled answer. On an
engine with lead tokens (`capabilities.lead`) the engine takes `</think>` as their first action in the same call
as the thinking samples; otherwise the answer is generated from `prompt + </think>` (any engine can) and joined
to a `</think>` recorded as the policy's own action: its behaviour log-prob is log π(</think> | prompt) scored
by the policy when the group is drawn, its entropy is that of the first-token distribution (the same for every
sample of the prompt), and it carries loss like a sampled token.

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

from nextrl.engine.base import Phase, Rollout, SamplingParams
from nextrl.env.base import Task
from nextrl.env.formats.base import (
    GroupSampler,
    ThoughtFormat,
    answer_params,
    answer_phase_ids,
    with_target,
)


class DelimitedFormat(ThoughtFormat):
    """What the formats with a thought between two delimiter tokens share (structured, aside): the thought
    phase stops at `close` (forced when the budget runs out), the answer phase follows it, and the answer is
    read by position."""

    teacher_forced = True

    def __init__(
        self, open_id: int, close_id: int, thought_tokens: int, answer_tokens: int, eos_ids, token_bytes
    ):
        self.open, self.close = open_id, close_id
        self.thought_tokens, self.answer_tokens = thought_tokens, answer_tokens
        self.eos_ids, self.token_bytes = tuple(eos_ids), token_bytes

    @property
    def has_empty_thought(self) -> bool:
        return self.thought_tokens > 0

    def sampling(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return structured_sampling(
            self.thought_tokens, self.answer_tokens, self.close, self.eos_ids, n, temperature, top_p
        )

    def answer_bytes(self, rollout: Rollout) -> bytes | None:
        ids = answer_phase_ids(rollout, self.n_phases, self.eos_ids)
        return None if ids is None else self.token_bytes.join(ids)


class StructuredFormat(DelimitedFormat):
    name = "structured"

    def prompt(self, context_ids: Sequence[int]) -> list[int]:
        return structured_prompt(context_ids, self.open, self.close, self.thought_tokens)

    def sample_groups(
        self, tasks: Sequence[Task], params: SamplingParams, k: int, sampler: GroupSampler
    ) -> list[list[Rollout]]:
        prompts = [t.prompt_ids for t in tasks]
        if not k:
            return sampler.generate(prompts, params)
        if sampler.lead and params.n > k:
            # k samples per group close the thought at once in the same call: the engine takes `</think>` as
            # their first action, with the first-step log-prob and entropy it has
            return sampler.generate(prompts, dataclasses.replace(params, lead=(self.close, k)))
        rollouts = sampler.generate(prompts, dataclasses.replace(params, n=params.n - k))
        # an engine without lead tokens: the answers from `prompt + </think>`, the close scored apart
        answers = sampler.generate(closed_prompts(prompts, self.close), answer_params(params, k))
        entropies = [g[0].entropies[0] if g[0].entropies else 0.0 for g in rollouts]
        # log π(</think> | prompt) at the sampling temperature: the behaviour log-prob of an empty thought
        close_lp = sampler.first_logprobs(prompts, self.close, params.temperature)
        empty = join_empty_thought(prompts, answers, close_lp, entropies, self.close)
        return [list(a) + list(b) for a, b in zip(rollouts, empty, strict=True)]

    def closed_thought(self, rollout: Rollout) -> tuple[list[int], bool]:
        if self.n_phases < 2:
            return [], False  # the prompt already ends with an empty `<think></think>`
        return closed_thought(rollout, self.close, self.eos_ids)

    def thought_ids(self, rollout: Rollout) -> list[int]:
        return self.closed_thought(rollout)[0][:-1]

    def empty_thought_targets(self, tasks: Sequence[Task]) -> tuple[list[list[int]], list[int]]:
        if self.n_phases < 2:  # no thought phase: nothing to close
            return [], []
        return empty_thought_targets(tasks, self.open, self.close)


def structured_prompt(
    context_ids: Sequence[int], think_open: int, think_close: int, thought_tokens: int
) -> list[int]:
    # With no thought budget the empty thought is part of the prompt and only the answer is sampled.
    suffix = [think_open] if thought_tokens > 0 else [think_open, think_close]
    return [*context_ids, *suffix]


def structured_sampling(
    thought_tokens: int,
    answer_tokens: int,
    think_close: int,
    eos_ids: tuple[int, ...],
    n: int,
    temperature: float,
    top_p: float,
) -> SamplingParams:
    answer = Phase(answer_tokens)
    if thought_tokens > 0:
        thought = Phase(thought_tokens, stop_token_ids=(think_close,), force_on_length=(think_close,))
        phases: tuple[Phase, ...] = (thought, answer)
    else:
        phases = (answer,)
    return SamplingParams(phases=phases, n=n, temperature=temperature, top_p=top_p, eos_token_ids=eos_ids)


def closed_thought(
    rollout: Rollout, think_close: int, eos_ids: Sequence[int], bridge: Sequence[int] = ()
) -> tuple[list[int], bool]:
    """The thought tokens including the close, and whether the close had to be added.

    The thought ends at `phase_starts[1]` when there is a second phase, else it is the whole completion (only
    the thought phase was sampled). It normally ends with the close (sampled, or forced when the budget ran
    out); a thought cut by eos gets its eos dropped and the close appended, so the answer is still scored after
    a closed thought, as the RL reward would be. A `bridge` that ends the thought phase right after its close
    is not the thought's (`SamplingParams.bridges`)."""
    end = rollout.phase_starts[1] if len(rollout.phase_starts) > 1 else len(rollout.completion_ids)
    ids, b = rollout.completion_ids, len(bridge)
    if b and end > b and ids[end - b - 1] == think_close and list(ids[end - b : end]) == list(bridge):
        end -= b
    thought = list(rollout.completion_ids[:end])
    if thought and thought[-1] == think_close:
        return thought, False
    while thought and thought[-1] in eos_ids:
        thought.pop()
    return [*thought, think_close], True


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


def empty_thought_targets(
    tasks: Sequence[Task], think_open: int, think_close: int
) -> tuple[list[list[int]], list[int]]:
    """For each position: `context <think></think> x_t`, trained on x_t only (its index is returned), so the
    next-token term also teaches that an empty thought changes nothing: closing the thought at once must cost
    the policy no accuracy, or "not thinking" is no option for it to learn."""
    return with_target(tasks, lambda ctx: [*ctx, think_open, think_close])
