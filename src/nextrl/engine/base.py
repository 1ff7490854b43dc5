"""The rollout-engine interface: prompts in, sampled completions with behaviour log-probs out.

A completion may hold tokens the policy did not choose (a forced `</think>` when the thought ran out of
budget, later tool outputs): `action_mask` is 1 for sampled tokens, 0 for forced ones, and only sampled tokens
carry gradient. Engines may run in-process (PyTorch), in Ray workers or on vLLM; `policy_version` says which
weights produced a rollout so that asynchronous trainers can bound staleness and correct for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Phase:
    """One stretch of generation: up to `max_tokens` sampled tokens, ended early by one of `stop_token_ids`
    (which is kept, as a sampled token). When the budget runs out, `force_on_length` tokens are appended
    unsampled. The next phase continues from the same cache."""

    max_tokens: int
    stop_token_ids: tuple[int, ...] = ()
    force_on_length: tuple[int, ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    phases: tuple[Phase, ...]
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    eos_token_ids: tuple[int, ...] = ()  # end the whole completion in any phase

    @classmethod
    def simple(
        cls,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_token_ids: tuple[int, ...] = (),
    ) -> SamplingParams:
        return cls(
            phases=(Phase(max_new_tokens, tuple(stop_token_ids)),), n=n, temperature=temperature, top_p=top_p
        )

    @property
    def max_new_tokens(self) -> int:
        return sum(p.max_tokens + len(p.force_on_length) for p in self.phases)


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]
    # log p(token) under the sampling policy at `temperature` (before top-p truncation); 0.0 for forced tokens
    logprobs: list[float]
    action_mask: list[int]
    finish_reason: str  # "stop" | "length" | "eos"
    policy_version: int = 0
    # index in completion_ids where each phase starts (phase_starts[0] == 0)
    phase_starts: list[int] = field(default_factory=list)
    # entropy (nats) of the sampling distribution at each token (0.0 for forced tokens); engines may leave it
    # empty. Used by the high-entropy token mask and to re-score positions by the policy's own uncertainty.
    entropies: list[float] = field(default_factory=list)


class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Rollout]]:
        """`params.n` rollouts for each prompt, in prompt order."""
        ...

    def sync_weights(self, policy, version: int) -> None:
        """Make generation use the trainer's current weights (a no-op for an engine sharing the module)."""
        ...
