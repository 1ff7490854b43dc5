"""The next-token environment's model-scored reward terms: `info_gain` (RLP) and `likelihood` (Quiet-STaR).

Both are teacher-forced: the true continuation is scored after the closed thought (where the thought format
says: `ThoughtFormat.scored_prefix`) by the scoring model (the current policy, through a `ScoringModel`
handle), and after the bare context by an EMA baseline that follows the policy (RLP). Where the format mixes
(`env.mix_weight`, the aside format) the with-thought log-prob is the mixture with the policy's own bare-context
prediction (one more teacher-forced pass per position; the empty-thought samples then need none). Both passes
go through the prefix-tree path, so the document prefix shared by a stripe's positions and their G thoughts is
encoded once per pass, not once per sample. The formulas themselves are in `nextrl.env.likelihood`, tested on
hand-made tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nextrl.config.schema import RewardConfig
from nextrl.engine.base import Rollout
from nextrl.env.base import ScoringModel, Task
from nextrl.env.formats.base import ThoughtFormat
from nextrl.env.likelihood import copies_target, information_gain, likelihood_gain
from nextrl.model.ema import EMAModel

MODEL_SCORED = ("info_gain", "likelihood")


class ModelScoredTerms:
    """Computes the model-scored terms of a reward spec for a batch of groups; owns the EMA baseline."""

    def __init__(self, rc: RewardConfig, names: Sequence[str], thought_format: ThoughtFormat, token_bytes):
        self.rc, self.names = rc, [n for n in names if n in MODEL_SCORED]
        self.format, self.token_bytes = thought_format, token_bytes
        self.scorer: ScoringModel | None = None
        self.ema: EMAModel | None = None

    @property
    def tokens(self) -> int:
        """True tokens scored after the thought: the most any present term reads."""
        return max(
            self.rc.info_gain_tokens if "info_gain" in self.names else 1,
            self.rc.likelihood_tokens if "likelihood" in self.names else 1,
        )

    def bind(self, scorer: ScoringModel) -> None:
        self.scorer = scorer
        if self.names and self.ema is None:
            # fp32 copy: a 0.1% step is below bf16 resolution, so a bf16 EMA would never move
            self.ema = EMAModel(scorer.model, self.rc.ema_tau, dtype=torch.float32)

    def update_baseline(self) -> None:
        if self.ema is not None and self.scorer is not None:
            self.ema.update(self.scorer.model)

    def state_dict(self) -> dict | None:
        return self.ema.state_dict() if self.ema is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.ema is not None and state is not None:
            self.ema.load_state_dict(state)

    def _mixed(self, scorer, contexts, targets, G, with_t: torch.Tensor, empty: list[int]) -> torch.Tensor:
        """The with-thought log-probs mixed with the policy's own bare-context ones (`ThoughtFormat.mix`, the
        aside format's `env.mix_weight`), per target token. The bare term is one teacher-forced pass per
        position, shared by its G samples (the engine's score plan records only the after-thought log-prob);
        the empty-thought samples read it as it is, so they need no pass of their own."""
        bare = scorer.logprobs(contexts, targets).to(with_t.device)
        bare = torch.repeat_interleave(bare, torch.tensor(G, device=bare.device), dim=0)
        if empty:
            rows = torch.tensor(empty, device=with_t.device)
            with_t[rows] = bare[rows, : with_t.shape[1]]
        return self.format.mix(with_t, bare[:, : with_t.shape[1]])

    @torch.no_grad()
    def __call__(
        self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]], scorer: ScoringModel | None
    ) -> dict[str, list[list[float]]]:
        scorer = scorer or self.scorer
        if scorer is None or self.ema is None:
            raise RuntimeError(
                f"reward terms {self.names} need a scoring model: call bind_scorer() or pass scorer="
            )
        targets = [list(t.meta["target_ids"][: self.tokens]) for t in tasks]
        with_t, thoughts, empty = self._with_thought(scorer, rollouts, targets)
        # without the thought, under the EMA baseline: one sequence per position (the bare context)
        contexts = [list(t.meta["context_ids"]) or [int(t.prompt_ids[0])] for t in tasks]
        without = scorer.like(self.ema.model).logprobs(contexts, targets)
        G = [len(g) for g in rollouts]
        if self.format.mix_weight is not None:
            with_t = self._mixed(scorer, contexts, targets, G, with_t, empty)
        without = torch.repeat_interleave(without, torch.tensor(G, device=without.device), dim=0)
        out = self._terms(with_t, without, _target_mask(with_t, targets, G))
        if self.rc.copy_guard:
            # a thought that writes out the start of the target gets no positive gain (Quiet-STaR's hack)
            copied = torch.tensor(self._copies(tasks, G, thoughts), device=with_t.device)
            out = {n: torch.where(copied, v.clamp(max=0.0), v) for n, v in out.items()}
        return {name: _per_group(v.tolist(), G) for name, v in out.items()}

    def _with_thought(
        self, scorer: ScoringModel, rollouts: Sequence[Sequence[Rollout]], targets: list[list[int]]
    ) -> tuple[torch.Tensor, list[list[int]], list[int]]:
        """Per sample, log p(target tokens | what the format scores after its thought) under the scoring
        model [samples, width]; the thoughts; and (when mixing) the samples whose thought is empty, left for
        `_mixed` to fill with the bare context's. A one-token target the engine already scored from the logits
        it sampled the answer from (`Rollout.target_logprob`) is read from the rollout; the others go through
        one teacher-forced pass, one sequence per sample."""
        mixing = self.format.mix_weight is not None
        prompts, comps, thoughts, read, missing, empty = [], [], [], [], [], []
        for group, tgt in zip(rollouts, targets, strict=True):
            for r in group:
                thoughts.append(self.format.thought_ids(r))
                if mixing and not self.format.closed_thought(r)[0]:
                    empty.append(len(thoughts) - 1)  # the bare context mixed with itself: read in _mixed
                    continue
                if self.tokens == 1 and r.target_logprob is not None:
                    read.append((len(thoughts) - 1, r.target_logprob))
                    continue
                missing.append(len(thoughts) - 1)
                prompts.append(self.format.scored_prefix(r))
                comps.append(tgt)
        width = max((len(tgt) for tgt in targets), default=0)
        device = next(scorer.model.parameters()).device  # where `without` is computed too
        with_t = torch.zeros((len(thoughts), width), device=device)  # fp32, as the passes' log-probs
        if missing:
            scored = scorer.logprobs(prompts, comps)
            with_t[torch.tensor(missing, device=device), : scored.shape[1]] = scored
        if read:
            rows = torch.tensor([i for i, _ in read], device=device)
            with_t[rows, 0] = torch.tensor([v for _, v in read], device=device, dtype=with_t.dtype)
        return with_t, thoughts, empty

    def _terms(
        self, with_t: torch.Tensor, without: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "info_gain" in self.names:
            n = min(self.rc.info_gain_tokens, with_t.shape[1])
            out["info_gain"] = information_gain(with_t, without, mask, tokens=n)
        if "likelihood" in self.names:
            n = min(self.rc.likelihood_tokens, with_t.shape[1])
            out["likelihood"] = likelihood_gain(with_t[:, :n], without[:, :n], mask[:, :n])
        return out

    def _copies(self, tasks: Sequence[Task], G: list[int], thoughts: list[list[int]]) -> list[bool]:
        """Per sample: does its thought write out the start of its task's target?"""
        flags, row = [], 0
        for t, g in zip(tasks, G, strict=True):
            for th in thoughts[row : row + g]:
                flags.append(
                    copies_target(self.token_bytes.join(th), t.meta["target_bytes"], self.rc.copy_min_bytes)
                )
            row += g
        return flags


def _target_mask(with_t: torch.Tensor, targets: list[list[int]], G: list[int]) -> torch.Tensor:
    """1 where a sample's row holds a real target token (its task's target may be shorter than the width)."""
    mask = torch.zeros_like(with_t)
    row = 0
    for tgt, g in zip(targets, G, strict=True):
        mask[row : row + g, : len(tgt)] = 1.0
        row += g
    return mask


def _per_group(values: list[float], G: list[int]) -> list[list[float]]:
    out, row = [], 0
    for g in G:
        out.append(values[row : row + g])
        row += g
    return out
