"""The sampling core every engine shares: the phase program a sequence walks through, the token draw, and the
rollout a finished sequence becomes.

- **Phase program** (`SequenceState`): a sequence samples up to `Phase.max_tokens` tokens per phase; a phase's
  stop token (kept, as a sampled token) ends the phase, one of `SamplingParams.eos_token_ids` the whole
  completion; when a phase's budget runs out its `force_on_length` tokens are appended unsampled (action mask
  0, log-prob 0); the prompt's `SamplingParams.bridges` tokens are appended the same way after the first phase,
  however it ended. `SamplingParams.lead` makes a sample's first token an action it did not draw, and
  `SamplingParams.score_phase` records a target token's log-prob at the first step of that phase.
- **Token draw** (`sample_tokens`, `decode_step`): temperature, top-p, the behaviour log-prob and entropy
  before truncation, one uniform per row from the engine's generator.
- **Rollouts** (`to_rollouts`): a finished sequence as the `Rollout` the trainer reads.

The PyTorch engines (`TorchSampler`, `PrefixSharingSampler`) run all three on their own logits; the vLLM
engine feeds the tokens vLLM sampled through the same phase program (`SequenceState.add`, `force_pending`),
so every engine produces rollouts by the same rules. Nothing here knows a thought format: phases are token
ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nextrl.engine.base import Phase, Rollout, SamplingParams


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`'s kind, or nothing when `dtype` is None (the model's own dtype)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class SequenceState:
    """Decoding state of one sequence: where it is in the phase program and what it has produced."""

    prompt: list[int]
    phases: tuple[Phase, ...]
    phase: int = 0
    used: int = 0  # sampled tokens used in the current phase
    forced: list[int] | None = None  # pending forced tokens once the budget ran out (None: still sampling)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=lambda: [0])
    finish: str | None = None
    lead: int | None = None  # the first token, taken as an action instead of drawn (SamplingParams.lead)
    target: int | None = None  # the token to score at the first step of the score phase (SamplingParams)
    target_logprob: float | None = None
    bridge: tuple[int, ...] = ()  # appended unsampled after the first phase (SamplingParams.bridges)
    bridging: list[int] | None = None  # the bridge tokens still to append (None: not reached yet)
    bridged_reason: str = "stop"  # how the first phase ended, for when its bridge is written

    def scores_now(self, phase: int | None) -> bool:
        """Whether this step's logits are the ones its target is scored from: the score phase's first step."""
        return (
            self.target is not None
            and self.target_logprob is None
            and self.finish is None
            and self.phase == phase
            and self.used == 0
            and self.forced is None
            and not self.bridging
        )

    def first_override(self) -> int:
        """The token this step must take instead of its draw (-1: its draw): the lead, at the first step."""
        return self.lead if self.lead is not None and not self.ids and not self.forced else -1

    def end_phase(self, reason: str) -> None:
        if self.phase == 0 and self.bridge and self.bridging is None:  # the phase ends once it is written
            self.bridging = list(self.bridge)
            self.bridged_reason = reason
            return
        if self.phase + 1 == len(self.phases):
            self.finish = reason
            return
        self.phase, self.used, self.forced = self.phase + 1, 0, None
        self.starts.append(len(self.ids))

    def settle(self) -> None:
        """Walk through exhausted phases until the sequence needs a token (sampled or forced) or is finished,
        so that a max_tokens-0 phase costs no step and a finished sequence is never fed to the model again."""
        while self.finish is None:
            if self.bridging:
                return  # needs a bridge token
            if self.forced is None and self.used < self.phases[self.phase].max_tokens:
                return  # needs a sampled token
            if self.forced is None:
                self.forced = list(self.phases[self.phase].force_on_length)
            if self.forced:
                return  # needs a forced token
            self.end_phase("length")

    def add(self, token: int, logprob: float, params: SamplingParams, entropy: float = 0.0) -> None:
        """The step's token: `token` with its log-prob and entropy when the sequence samples, else (a forced
        token is pending) that forced token, and `token` is ignored."""
        if self.bridging:  # like a forced token; the first phase ends after the last one
            self._append_forced(self.bridging.pop(0))
            if not self.bridging:
                self.end_phase(self.bridged_reason)
        elif self.forced:  # forced tokens are not actions: no logprob, no gradient
            self._append_forced(self.forced.pop(0))
        else:
            self.ids.append(token)
            self.logprobs.append(logprob)
            self.entropies.append(entropy)
            self.mask.append(1)
            self.used += 1
            if token in params.eos_token_ids:
                self.finish = "eos"
            elif token in self.phases[self.phase].stop_token_ids:
                self.end_phase("stop")
        self.settle()

    def _append_forced(self, token: int) -> None:
        self.ids.append(token)
        self.logprobs.append(0.0)
        self.entropies.append(0.0)
        self.mask.append(0)

    def force_pending(self, params: SamplingParams) -> None:
        """Append every forced (or bridge) token now due (an engine that samples a phase at once, like vLLM,
        never draws them), through any later phase that forces at once (a max_tokens-0 phase)."""
        while self.finish is None and (self.forced or self.bridging):
            self.add(-1, 0.0, params)

    def phase_starts(self, n_phases: int) -> list[int]:
        """Where each of the `n_phases` phases starts; unreached phases (the completion ended early) start at
        the end of the completion."""
        return self.starts + [len(self.ids)] * (n_phases - len(self.starts))

    def rollout(self, n_phases: int, version: int) -> Rollout:
        return Rollout(
            prompt_ids=self.prompt,
            completion_ids=self.ids,
            logprobs=self.logprobs,
            action_mask=self.mask,
            finish_reason=self.finish or "length",
            policy_version=version,
            phase_starts=self.phase_starts(n_phases),
            entropies=self.entropies,
            target_logprob=self.target_logprob,
            bridge=list(self.bridge),
        )


def check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    """Every engine refuses an empty prompt: its first sample would have nothing to be conditioned on."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: there is no token to condition the first sample on")


def check_call(prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
    """What every `generate` refuses: an empty prompt, and score tokens that are not one per prompt."""
    check_prompts(prompts)
    if params.score_phase is not None and len(params.score_tokens) != len(prompts):
        raise ValueError(
            f"SamplingParams.score_tokens has {len(params.score_tokens)} tokens for {len(prompts)} prompts"
        )
    if params.bridges and len(params.bridges) != len(prompts):
        raise ValueError(
            f"SamplingParams.bridges has {len(params.bridges)} entries for {len(prompts)} prompts"
        )


def new_states(prompt: Sequence[int], params: SamplingParams, index: int) -> list[SequenceState]:
    """The n decoding states of the call's prompt number `index`, settled (a sequence whose first phases
    sample nothing is at its first forced token or finished); the last k take `params.lead`'s token first;
    each scores the prompt's `params.score_tokens` entry when asked to."""
    tok, k = params.lead or (None, 0)
    target = params.score_tokens[index] if params.score_phase is not None else None
    bridge = tuple(params.bridges[index]) if params.bridges else ()
    states = [
        SequenceState(
            list(prompt), params.phases, lead=tok if j >= params.n - k else None, target=target, bridge=bridge
        )
        for j in range(params.n)
    ]
    for s in states:
        s.settle()
    return states


def to_rollouts(
    groups: Sequence[Sequence[SequenceState]], params: SamplingParams, version: int
) -> list[list[Rollout]]:
    """Each prompt's finished states as its rollouts, in order, tagged with the policy `version`."""
    return [[s.rollout(len(params.phases), version) for s in group] for group in groups]


def score_targets(states: Sequence[SequenceState], logits: torch.Tensor, params: SamplingParams) -> None:
    """Record the target log-prob (temperature 1) of every sequence at the first step of its score phase,
    from row r of `logits` for states[r] (the logits this step samples from)."""
    if params.score_phase is None:
        return
    rows = [r for r, s in enumerate(states) if s.scores_now(params.score_phase)]
    if not rows:
        return
    idx = torch.tensor(rows, device=logits.device)
    tgt = torch.tensor([states[r].target for r in rows], device=logits.device)
    lp = torch.log_softmax(logits[idx].float(), dim=-1).gather(-1, tgt[:, None]).squeeze(-1)
    for r, v in zip(rows, lp.tolist(), strict=True):
        states[r].target_logprob = v


def sample_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    gen: torch.Generator | None,
    override: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick one token per row; return (tokens, logprobs, entropies). The logprob (and the entropy) is
    log_softmax(logits / T) of the chosen token under the temperature-scaled distribution BEFORE top-p
    truncation (T=1 when greedy): this is the quantity the trainer recomputes from a plain forward, so it must
    not depend on the truncation. `override` (>= 0 in a row) takes that token instead of the row's draw."""
    # Every op here is a pass over [rows x vocabulary] (with 262k tokens as long as the head's matmul for the
    # row): x / 1 is skipped (exact), and the probabilities are exponentiated once for sampling and entropy.
    logits = logits.float()
    T = params.temperature
    logp = F.log_softmax(logits if T in (0, 1) else logits / T, dim=-1)
    p = logp.exp()
    if params.temperature == 0:
        tokens = logits.argmax(-1)
    else:
        probs = p
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep a token while the mass before it is < top_p: the smallest prefix reaching top_p, >= 1 token
            drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
            drop[:, 0] = False
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(drop, 0.0))
        # inverse-CDF sampling, one uniform per row: the first token whose cumulative mass exceeds u·total
        # (tokens of zero mass are never picked); what torch.multinomial does, but 0.5 ms instead of 18 ms for
        # 128 rows of a 4k vocabulary on a CPU, where multinomial was most of a decode iteration
        cdf = probs.cumsum(-1)
        u = torch.rand((probs.shape[0], 1), generator=gen, device=probs.device) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    if override is not None:  # lead tokens: taken, not drawn; their log-prob is still the policy's
        tokens = torch.where(override >= 0, override.to(tokens.device), tokens)
    entropy = -(p * logp).sum(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), entropy


def lead_overrides(
    states: Sequence[SequenceState], params: SamplingParams, device: torch.device
) -> torch.Tensor | None:
    """The lead tokens this step takes instead of its draws (-1: draw), or None (no lead in this call or
    step)."""
    if params.lead is None:  # the common case: nothing to look at in the decode loop
        return None
    over = [s.first_override() for s in states]
    return torch.tensor(over, device=device) if any(t >= 0 for t in over) else None


def decode_step(
    states: Sequence[SequenceState],
    logits: torch.Tensor,
    params: SamplingParams,
    gen: torch.Generator,
    device: torch.device,
) -> None:
    """One token for every live sequence, row r of `logits` being states[r]'s next-token logits: its target
    scored where this is its score step, its draw (or lead, or pending forced token) added to its phase
    program. One uniform per row from `gen` when sampling."""
    score_targets(states, logits, params)
    tokens, logps, ents = sample_tokens(logits, params, gen, lead_overrides(states, params, device))
    for s, tok, lp, h in zip(states, tokens.tolist(), logps.tolist(), ents.tolist(), strict=True):
        s.add(tok, lp, params, h)
