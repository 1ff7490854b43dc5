"""The aside format, for pretrained models nextrl did not pretrain: the thought is an aside between two
delimiters from the model's own vocabulary (`env.delimiters`, default `" ("` and `")"`: no new tokens, whose
untrained embeddings would cost the model its prediction), and an empty thought is exactly no thought.

A thinking sample's prompt is `context + open`; the thought phase stops at `close` (forced when the budget runs
out) and the answer phase follows it, so the answer is read by position as in the structured format.

Where the aside goes. A context that ends in whitespace tokens gets its aside before them, and the engine
re-writes them after the close (`SamplingParams.bridges`, unsampled: no gradient), so the answer is read where
it was: `... = (40-4=36) 36`, not `... =  (40-4=36)36`. Gemma's tokenizer writes every number as a lone " "
token and then its digits, so without this every number's first digit was predicted straight after ")", where
the model expects a space: at the results of GSM8K's calculations the base model's own thought cost 6.6 nats of
the true digit after the space and 1.2 before it, and its with-thought accuracy went from 0% to 20%
(bench/aside_placement.py). `bridge(context)` is that trailing run (`Rollout.bridge`); `prompt` drops it and
`scored_prefix` puts it back after the close.

Why an empty thought is no thought. Any pair of delimiters costs a base model dearly even around nothing: on
Gemma 3 270M two inserted tokens cost 2-8 nats of the true next token (BENCHMARKS.md, thought formats). Here the
answer after an empty thought is read from the bare context, so not thinking costs exactly 0 nats:

- the empty-thought samples of a group (`rl.empty_thought_samples`) are answers generated from the bare
  context: their rollout's prompt is the context, their completion only the answer (`phase_starts` [0, 0]: an
  empty thought phase, then the answer);
- a thinking sample that closes its thought at once is the same: it is redone from the bare context;
- whatever scores "after an empty thought" reads the bare context (`scored_prefix`): information gain and
  likelihood (so an empty thought's information gain is exactly 0), evaluation's with-thought prediction
  (which then equals the standard one), and the next-token term's empty-thought text (`context x_t`).

The information gain of a non-empty thought is log p(x | context + open + thought + close) − log p(x | context).

Mixing (`env.mix_weight` = w, Quiet-STaR's mixing with a constant weight). The base model's own thoughts cost it
(−3.9 nats of the true token on Gemma 3 270M, and 23 points of greedy accuracy: BENCHMARKS.md), so the answer
after a non-empty thought may be read from the mixture

    p_mix(y) = w * p(y | context open thought close) + (1 - w) * p(y | context)

of the policy's two next-token distributions (`mix`, through `nextrl.model.mixing_head.mixed_log_probs` with the
constant logit z = logit(w)). A thought that puts no mass on the true token then costs at most −log(1 − w)
nats (0.03 at w = 0.03), the greedy answer changes only where the thought's prediction is confident enough to
outweigh the bare one, and a thought that makes the true token much likelier still gains: the gain over the
bare context is log(1 + w (p_after / p_bare − 1)), never below log(1 − w) (at w = 0.03, a thought that lifts the
true token from p = 0.01 to 0.9 gains log(1 + 0.03 · 89) = 1.3 nats instead of 4.5). An empty thought
is the bare context mixed with itself: exactly the bare context (`mix` returns it unchanged where the two
log-probs are equal). Where it is read:

- info gain and likelihood (`nextrl.env.model_scored`): the with-thought log-prob of each scored target token
  becomes log p_mix, per token (Quiet-STaR's teacher-forced tokens ahead), with the bare term the policy's own
  log p(x | context, earlier target tokens), one teacher-forced pass per position shared by its G samples; the
  baseline subtracted (RLP's EMA) is unchanged. The estimator of the reward is thus log p_mix(x) − log p_EMA(x);
  with a constant w it has no parameters of its own to learn (a learned per-position w is Quiet-STaR's
  `MixingHead`, not wired here);
- evaluation: the with-thought prediction is the argmax (or a draw at the evaluation's temperature) of the mixed
  vocabulary row, and its information gain is log p_mix(x) − log p_bare(x) under the same model.

The mismatch: RL's sampled answer after a thought (what `prefix_match` scores) is still drawn from p(. | context
open thought close) alone: the engine samples from one distribution and cannot mix. So under mixing
`prefix_match` rewards the unmixed answer while evaluation reads the mixed one; use mixing with the `info_gain`
reward, which scores the mixed log-prob.

What "not thinking" is for the policy. Unlike `</think>` in the structured format, not thinking is no action
here: the empty samples carry no extra token and no log-prob of "choosing" to skip. They are the group's
no-thought baseline, so every thinking sample's advantage is measured against not thinking, and RL raises the
thoughts that beat the bare context and lowers those that do not. (An action "skip" would need a token whose
probability the base model has never learnt, which is what this format avoids; the with-thought prediction of
a model that closes at once is its bare prediction, so a policy can still learn to think little.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from nextrl.data.shown_thoughts import before_trailing_space
from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env.base import Task
from nextrl.env.formats.base import (
    GroupSampler,
    answer_params,
    with_target,
)
from nextrl.env.formats.structured import DelimitedFormat, closed_thought
from nextrl.model.mixing_head import mixed_log_probs

DEFAULT_DELIMITERS = (" (", ")")


class AsideFormat(DelimitedFormat):
    name = "aside"

    def __init__(
        self,
        open_id: int,
        close_id: int,
        thought_tokens: int,
        answer_tokens: int,
        eos_ids,
        token_bytes,
        mix_weight: float | None = None,
    ):
        super().__init__(open_id, close_id, thought_tokens, answer_tokens, eos_ids, token_bytes)
        if mix_weight is not None and not 0.0 < mix_weight < 1.0:
            raise ValueError(f"the aside format's mix weight must lie in (0, 1), got {mix_weight}")
        if mix_weight is not None and answer_tokens != 1:
            raise ValueError(
                f"the aside format mixes a one-token answer only, not answer_tokens={answer_tokens}"
            )
        self.mix_weight = mix_weight

    def mix(self, logp_after: torch.Tensor, logp_bare: torch.Tensor) -> torch.Tensor:
        """log(w p_after + (1 - w) p_bare) elementwise (one token per row, or whole vocabulary rows), and
        exactly `logp_bare` where the two are equal (an empty thought: the bare context mixed with itself)."""
        if self.mix_weight is None:
            return logp_after
        w = self.mix_weight
        z = torch.tensor(math.log(w / (1.0 - w)), dtype=logp_after.dtype, device=logp_after.device)
        return torch.where(logp_after == logp_bare, logp_bare, mixed_log_probs(z, logp_after, logp_bare))

    def prompt(self, context_ids: Sequence[int]) -> list[int]:
        # no thought budget: no thought at all (an empty aside is no aside)
        if self.thought_tokens <= 0:
            return list(context_ids)
        keep = len(context_ids) - len(self.bridge(context_ids))
        return [*context_ids[:keep], self.open]

    def bridge(self, context_ids: Sequence[int]) -> list[int]:
        """The context's trailing whitespace tokens (and a currency sign after a space: " $" before "10"),
        which the aside goes before (`before_trailing_space`; none without a thought phase, or when nothing but
        whitespace and special tokens would be left before the aside)."""
        if self.n_phases < 2:
            return []
        return [int(t) for t in context_ids[before_trailing_space(context_ids, self.token_bytes) :]]

    def thought_params(self, tasks: Sequence[Task], params: SamplingParams) -> SamplingParams:
        """Each prompt's bridge (the whitespace its aside was moved before: the context past the prompt's own
        text), when any prompt has one."""
        if self.n_phases < 2:
            return params
        bridges = tuple(tuple(t.meta["context_ids"][len(t.prompt_ids) - 1 :]) for t in tasks)
        return dataclasses.replace(params, bridges=bridges) if any(bridges) else params

    # ------------------------------------------------------------ sampling a group

    def sample_groups(
        self, tasks: Sequence[Task], params: SamplingParams, k: int, sampler: GroupSampler
    ) -> list[list[Rollout]]:
        """The thinking samples from `context + open` (those that close at once redone from the bare context),
        then the k empty-thought samples: answers from the bare context."""
        if k and not self.has_empty_thought:
            raise ValueError("the aside format has no thought phase (env.thought_tokens = 0)")
        tasks = list(tasks)
        thinking = self.thought_params(tasks, dataclasses.replace(params, n=params.n - k))
        groups = (
            [[] for _ in tasks]
            if params.n == k
            else sampler.generate([t.prompt_ids for t in tasks], thinking)
        )
        groups = [list(g) for g in groups]
        if self.n_phases > 1:
            self._redo_closed_at_once(tasks, groups, params, sampler)
        if k:
            answers = sampler.generate([_context(t) for t in tasks], answer_params(params, k))
            for g, a in zip(groups, answers, strict=True):
                g += [no_thought(r) for r in a]
        return groups

    def _redo_closed_at_once(self, tasks, groups, params: SamplingParams, sampler: GroupSampler) -> None:
        redo = [(i, j) for i, g in enumerate(groups) for j, r in enumerate(g) if self._closed_at_once(r)]
        if not redo:
            return
        answers = sampler.generate([_context(tasks[i]) for i, _ in redo], answer_params(params, 1))
        for (i, j), (r,) in zip(redo, answers, strict=True):
            groups[i][j] = no_thought(r)

    # ------------------------------------------------------------ the thought as scored

    def _closed_at_once(self, rollout: Rollout) -> bool:
        """A thinking sample whose thought holds no token before its close (sampled, or cut by eos)."""
        return not is_no_thought(rollout) and self._thought(rollout)[0] == [self.close]

    def _thought(self, rollout: Rollout) -> tuple[list[int], bool]:
        return closed_thought(rollout, self.close, self.eos_ids, rollout.bridge)

    def closed_thought(self, rollout: Rollout) -> tuple[list[int], bool]:
        """`thought + close`; empty (no delimiters at all) for an empty thought."""
        if self.n_phases < 2 or is_no_thought(rollout):
            return [], False
        thought, added = self._thought(rollout)
        return ([], False) if thought == [self.close] else (thought, added)

    def thought_ids(self, rollout: Rollout) -> list[int]:
        return self.closed_thought(rollout)[0][:-1]

    def scored_prefix(self, rollout: Rollout) -> list[int]:
        """`context + open + thought + close` (with the context's trailing whitespace after the close), or the
        bare context for an empty thought."""
        thought, _ = self.closed_thought(rollout)
        if thought:
            return [*rollout.prompt_ids, *thought, *rollout.bridge]
        if is_no_thought(rollout) or self.n_phases < 2:
            return list(rollout.prompt_ids)  # the prompt is the bare context
        return [*rollout.prompt_ids[:-1], *rollout.bridge]  # closed at once: the context, without the open

    def empty_thought_targets(self, tasks: Sequence[Task]) -> tuple[list[list[int]], list[int]]:
        """`context x_t`: the answer after an empty thought is the answer from the bare context."""
        if self.n_phases < 2:
            return [], []
        return with_target(tasks, list)


def is_no_thought(rollout: Rollout) -> bool:
    """An empty-thought sample: its prompt is the bare context and its thought phase is empty."""
    return len(rollout.phase_starts) > 1 and rollout.phase_starts[1] == 0


def no_thought(answer: Rollout) -> Rollout:
    """An answer generated from the bare context as a two-phase rollout with an empty thought phase, so that
    its answer is read where every other sample's is."""
    return dataclasses.replace(answer, phase_starts=[0, *(answer.phase_starts or [0])])


def _context(task: Task) -> list[int]:
    ctx = list(task.meta["context_ids"])
    if not ctx:
        raise ValueError(f"task {task.task_id}: an empty thought needs a context to answer from")
    return ctx
