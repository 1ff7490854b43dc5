"""The rollout-engine interface: prompts in, sampled completions with behaviour log-probs out.

A completion may hold tokens the policy did not choose (a forced closing delimiter when the thought ran out of
budget, later tool outputs): `action_mask` is 1 for sampled tokens, 0 for forced ones, and only sampled tokens
carry gradient. Engines may run in-process (PyTorch), in Ray workers or on vLLM; `policy_version` says which
weights produced a rollout so that asynchronous trainers can bound staleness and correct for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nextrl.accounting.flops import TokenWork


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
    # (token, k): the last k of each prompt's n samples begin with `token` as an action: it is not drawn, but
    # its log-prob and entropy are the policy's first-step ones (at `temperature`), and the phase program goes
    # on from it (a stop token ends its phase). Empty-thought samples: the closing delimiter, then the answer,
    # generated with the thinking samples in one call. Only engines with `capabilities.lead`.
    lead: tuple[int, int] | None = None
    # Teacher-forced scoring in the same call: at the first step of phase `score_phase`, each sample records
    # log p(score_tokens[i]) at temperature 1 (`Rollout.target_logprob`; i: its prompt's index in the call)
    # from the logits it samples from. The next-token environment's info gain reads the true next token's
    # log-prob after the closed thought there, instead of a forward of its own. Only engines with
    # `capabilities.score`.
    score_phase: int | None = None
    score_tokens: tuple[int, ...] = ()
    # Per prompt (one entry each, or empty for none): tokens appended unsampled right after the first phase
    # ends, by its stop token or its budget, before the next phase begins (`Rollout.bridge`): text that a
    # thought format moved from the end of the prompt to after the thought (a trailing space) is written back
    # here, so that the next phase reads on from where the prompt's text ended.
    bridges: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def simple(
        cls,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_token_ids: tuple[int, ...] = (),
        eos_token_ids: tuple[int, ...] = (),
    ) -> SamplingParams:
        """One phase of up to `max_new_tokens` sampled tokens (a math, code or judged-writing completion)."""
        return cls(
            phases=(Phase(max_new_tokens, tuple(stop_token_ids)),),
            n=n,
            temperature=temperature,
            top_p=top_p,
            eos_token_ids=tuple(eos_token_ids),
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
    # log p(SamplingParams.score_tokens[prompt]) at temperature 1 at the first step of `score_phase`, under the
    # policy that generated the rollout; None when not asked for or the completion ended before that phase
    target_logprob: float | None = None
    # the tokens `SamplingParams.bridges` asked to append after the first phase, whether or not the completion
    # reached them (a completion cut by eos inside the first phase ends before them)
    bridge: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine provides beyond `generate`, stated instead of probed: the trainer checks these when it is
    built and says what is missing (e.g. `rl.entropy_mask_rho < 1` needs `entropies`)."""

    entropies: bool = False  # Rollout.entropies filled for every token
    work: bool = False  # `last_work` / `last_seconds`: the work and seconds of the last `generate`, by stage
    state: bool = False  # `state_dict` / `load_state_dict` carry the sampling RNG, for exact resume
    lead: bool = False  # honours `SamplingParams.lead`
    score: bool = False  # honours `SamplingParams.score_phase` (fills `Rollout.target_logprob`)


@dataclass(frozen=True)
class PolicyWeights:
    """The learner's weights at `version`, handed to engines. `state_dict` is a callable so that an engine that
    shares the module in-process never copies anything; a remote engine (Ray worker, vLLM) calls it."""

    version: int
    state_dict: Callable[[], Mapping[str, Any]]


class RolloutEngine(Protocol):
    capabilities: EngineCapabilities
    last_work: dict[str, TokenWork]  # read only when capabilities.work
    last_seconds: dict[str, float]  # read only when capabilities.work (prefill/decode, or one "generation")

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Rollout]]:
        """`params.n` rollouts for each prompt, in prompt order."""
        ...

    def sync_weights(self, weights: PolicyWeights) -> None:
        """Make generation use these weights; later rollouts carry `weights.version` as their policy_version."""
        ...

    def state_dict(self) -> dict:  # only when capabilities.state
        ...

    def load_state_dict(self, state: dict) -> None:  # only when capabilities.state
        ...
