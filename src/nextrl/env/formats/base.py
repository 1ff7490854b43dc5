"""The thought-format interface: how a next-token task is put to the policy and how its answer is read back.

One `ThoughtFormat` per format (`env.format`), each in its own module of this package. It owns everything that
knows the format's delimiters, so that the trainer, the learner and the engines need none of them:

- the prompt built from a position's context ids (`prompt`) and the sampling phases (`sampling`);
- where the answer is read (`answer_bytes`);
- what an empty thought is (`has_empty_thought`) and how the k empty-thought samples of a group are made
  (`sample_groups`, through a `GroupSampler` that the producer or the evaluation hands it);
- the thought of a rollout as scored (`closed_thought`, `thought_ids`) and the ids after which the true
  continuation is teacher-forced (`scored_prefix`), for model-scored rewards and evaluation's information gain;
- the text the learner's next-token term trains on for the empty thought (`empty_thought_targets`);
- how the answer after a thought is read from the after-thought and bare-context log-probs (`mix`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import torch

from nextrl.engine.base import Rollout, RolloutEngine, SamplingParams
from nextrl.env.base import Task


class GroupSampler(Protocol):
    """The engine as a format sees it: generation, whether it takes lead tokens, and the policy's log-prob of
    one token as the first action after each prompt (the behaviour log-prob of a forced first token)."""

    lead: bool

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Rollout]]: ...

    def first_logprobs(
        self, prompts: Sequence[Sequence[int]], token: int, temperature: float
    ) -> list[float]: ...


class EngineSampler:
    """A `GroupSampler` over a bare engine (evaluation: no accounting, no empty-thought samples)."""

    def __init__(self, engine: RolloutEngine):
        self.engine, self.lead = engine, engine.capabilities.lead

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Rollout]]:
        return self.engine.generate(prompts, params)

    def first_logprobs(self, prompts, token: int, temperature: float) -> list[float]:
        raise NotImplementedError("an evaluation sampler makes no empty-thought samples")


def answer_params(params: SamplingParams, k: int) -> SamplingParams:
    """The answer phase alone (the thought is already closed, or there is none), k samples per prompt."""
    return dataclasses.replace(
        params, phases=params.phases[-1:], n=k, score_phase=None, score_tokens=(), bridges=()
    )


def answer_phase_ids(rollout: Rollout, n_phases: int, eos_ids: Sequence[int]) -> list[int] | None:
    """Token ids of the answer (last) phase, cut at the first eos; None when no answer token was produced."""
    starts = rollout.phase_starts or ([0] if n_phases == 1 else [])
    if not starts:
        # phase_starts[0] == 0 always, so an empty list means the engine did not record phases: a bug, not a
        # missing answer (silently scoring every sample as missing would hide it).
        raise ValueError("rollout has no phase_starts for a multi-phase completion")
    if len(starts) < n_phases:
        return None  # the completion ended (eos) inside the thought
    ids = rollout.completion_ids[starts[n_phases - 1] :]
    for k, t in enumerate(ids):
        if t in eos_ids:
            ids = ids[:k]
            break
    return ids or None


class ThoughtFormat(ABC):
    """One thought format. `thought_tokens` is the thought budget (0: no thought phase), `eos_ids` end a
    completion in any phase."""

    name: str = ""
    thought_tokens: int = 0
    eos_ids: tuple[int, ...] = ()
    # the answer directly follows the thought, so the true continuation can be teacher-forced after it
    # (model-scored rewards, evaluation's information gain)
    teacher_forced: bool = False
    # the weight of the after-thought prediction in the answer's mixture with the bare context's (None: the
    # answer is read after the thought alone; only the aside format mixes, `AsideFormat.mix`)
    mix_weight: float | None = None

    @property
    def n_phases(self) -> int:
        """Sampling phases of a thinking sample: thought then answer, or the answer alone."""
        return 2 if self.teacher_forced and self.thought_tokens > 0 else 1

    @property
    def has_empty_thought(self) -> bool:
        """Whether the format has an empty thought that `rl.empty_thought_samples` can sample."""
        return False

    @abstractmethod
    def prompt(self, context_ids: Sequence[int]) -> list[int]:
        """The prompt of a thinking sample for a position whose context (document prefix included) is given."""

    @abstractmethod
    def sampling(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        """The phases, stop tokens and eos of a thinking sample."""

    @abstractmethod
    def answer_bytes(self, rollout: Rollout) -> bytes | None:
        """The predicted bytes, or None when the answer is missing or unparseable."""

    def thought_params(self, tasks: Sequence[Task], params: SamplingParams) -> SamplingParams:
        """`params` for a call whose prompts are `tasks`' prompts, with what the format adds per prompt (the
        aside format's bridge). Whoever samples thoughts from `Task.prompt_ids` outside `sample_groups` calls
        this."""
        return params

    def sample_groups(
        self, tasks: Sequence[Task], params: SamplingParams, k: int, sampler: GroupSampler
    ) -> list[list[Rollout]]:
        """`params.n` rollouts per task, the last `k` of each group with an empty thought."""
        if k:
            raise ValueError(f"format '{self.name}' has no empty thought to sample")
        return sampler.generate([t.prompt_ids for t in tasks], params)

    def closed_thought(self, rollout: Rollout) -> tuple[list[int], bool]:
        """The thought as scored (with its closing delimiter, if the format has one), and whether the close had
        to be added. A format without a thought phase has none."""
        return [], False

    def thought_ids(self, rollout: Rollout) -> list[int]:
        """The thought's own tokens, without delimiters (what the copy guard reads)."""
        return []

    def scored_prefix(self, rollout: Rollout) -> list[int]:
        """The ids after which the true continuation is teacher-forced for this rollout."""
        return [*rollout.prompt_ids, *self.closed_thought(rollout)[0]]

    def mix(self, logp_after: torch.Tensor, logp_bare: torch.Tensor) -> torch.Tensor:
        """The answer's log-probs as this format reads them after a thought, from the log-probs after the
        closed thought and after the bare context (the same tokens, or whole vocabulary rows): the ones after
        the thought, unless the format mixes."""
        return logp_after

    def empty_thought_targets(self, tasks: Sequence[Task]) -> tuple[list[list[int]], list[int]]:
        """Sequences and the index of their one target for the next-token term's "an empty thought changes
        nothing" (none for a format without an empty thought)."""
        return [], []


def with_target(tasks: Sequence[Task], prefix) -> tuple[list[list[int]], list[int]]:
    """For each task with a context and a target: `prefix(context) + [x_t]`, trained on x_t only (its index)."""
    seqs, starts = [], []
    for t in tasks:
        ctx = list(t.meta["context_ids"])
        if ctx and t.meta["target_ids"]:
            seqs.append([*prefix(ctx), int(t.meta["target_ids"][0])])
            starts.append(len(seqs[-1]) - 2)
    return seqs, starts
