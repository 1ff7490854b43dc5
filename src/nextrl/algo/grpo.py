"""The GRPO-family clipped policy-gradient loss, with the three length normalisations in use.

One function holds the whole objective so that it can be read (and checked against the papers) in one place:

    ratio = exp(logp - old_logp)                                    per token
    pg    = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    kl    = exp(ref - logp) - (ref - logp) - 1                      k3 estimator, >= 0, only when kl_coef > 0
    loss  = aggregate(pg + kl_coef * kl)                            over the tokens where mask == 1

Aggregations (`loss_norm`):
    grpo    mean over each sequence's tokens, then mean over sequences (long answers weigh less per token)
    dapo    sum over all tokens / number of tokens in the batch (every token weighs the same; DAPO)
    dr_grpo sum over all tokens / (B * max_tokens), a constant, so there is no length bias at all (Dr. GRPO)

The normaliser comes from this batch alone. A trainer that accumulates micro-batches recovers the whole
batch's loss by weighting each micro-batch loss by its share of the normaliser: loss tokens for `dapo`,
sequences for `dr_grpo`, and sequences *with at least one loss token* for `grpo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossNorm = Literal["grpo", "dapo", "dr_grpo"]


@dataclass
class PolicyBatch:
    logprobs: torch.Tensor  # [B, T] log p of the completion tokens under the current policy (with grad)
    old_logprobs: torch.Tensor  # [B, T] the same under the behaviour policy (recorded at generation)
    advantages: torch.Tensor  # [B] one advantage per sequence
    mask: torch.Tensor  # [B, T] 1 on sampled tokens that get loss; 0 on padding and forced tokens
    ref_logprobs: torch.Tensor | None = None  # [B, T] frozen reference, needed only when kl_coef > 0


def grpo_loss(
    batch: PolicyBatch,
    loss_norm: LossNorm,
    clip_eps_low: float,
    clip_eps_high: float,
    kl_coef: float = 0.0,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss (to minimise) and detached metrics: loss, pg_loss, kl, clip_frac, ratio_mean,
    logprob_mismatch (mean |logp - old_logp|; near 0 on-policy, a large value flags stale weights or a bug)."""
    # float32 maths whatever the model dtype: exp() of bf16 log-ratios is too coarse for the clip test.
    logp = batch.logprobs.float()
    old = batch.old_logprobs.float().detach()
    mask = batch.mask.float()
    adv = batch.advantages.float().detach()
    bsz = logp.shape[0]
    if old.shape != logp.shape or mask.shape != logp.shape or adv.shape != (bsz,):
        raise ValueError(
            f"shapes: logprobs {tuple(logp.shape)}, old_logprobs {tuple(old.shape)}, mask {tuple(mask.shape)}"
            f" must match and advantages {tuple(adv.shape)} must be [{bsz}]"
        )
    if loss_norm == "dr_grpo" and not max_tokens:
        raise ValueError("loss_norm 'dr_grpo' needs max_tokens (the constant generation budget)")
    on = mask > 0
    adv = adv[:, None]

    # Padding may hold any value (-inf, garbage): zero the log-ratio there so exp() cannot make inf * 0 = NaN.
    log_ratio = torch.where(on, logp - old, 0.0)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -ratio * adv
    pg_clipped = -torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv
    # The clipped branch "wins" only when it is strictly larger; there its gradient w.r.t. logp is zero.
    clipped = pg_clipped > pg_unclipped
    pg = torch.where(clipped, pg_clipped, pg_unclipped)

    if kl_coef > 0:
        if batch.ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs batch.ref_logprobs")
        ref_diff = torch.where(on, batch.ref_logprobs.float().detach() - logp, 0.0)
        kl = torch.exp(ref_diff) - ref_diff - 1.0
    else:
        kl = torch.zeros_like(pg)

    def aggregate(per_token: torch.Tensor) -> torch.Tensor:
        masked = per_token * mask
        if loss_norm == "grpo":
            n_seq = mask.sum(dim=1)
            has_tokens = n_seq > 0  # a sequence with no loss tokens would be 0/0: leave it out of the mean
            per_seq = masked.sum(dim=1)[has_tokens] / n_seq[has_tokens]
            return per_seq.sum() / max(int(has_tokens.sum()), 1)
        if loss_norm == "dapo":
            return masked.sum() / mask.sum().clamp(min=1.0)
        if loss_norm == "dr_grpo":
            return masked.sum() / (bsz * max_tokens)
        raise ValueError(f"unknown loss_norm {loss_norm!r}")

    pg_loss = aggregate(pg)
    loss = pg_loss
    if kl_coef > 0:
        loss = loss + kl_coef * aggregate(kl)

    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1.0)

        def token_mean(x: torch.Tensor) -> float:
            return float((x * mask).sum() / n_tok)

        metrics = {
            "loss": float(loss),
            "pg_loss": float(pg_loss),
            "kl": token_mean(kl),
            "clip_frac": token_mean(clipped.float()),
            "ratio_mean": token_mean(ratio),
            "logprob_mismatch": token_mean(log_ratio.abs()),
        }
    return loss, metrics
