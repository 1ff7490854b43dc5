"""High-entropy minority tokens (arXiv 2506.01939): keep the policy-gradient loss only on the "forking" tokens.

In chains of thought most tokens are near-deterministic (entropy ≈ 0) and carry little learning signal; the
paper keeps the loss on the top 20% highest-entropy tokens of the batch and matched or beat full training
(10% and 50% were worse). The selection is over the whole batch, not per sequence: a sequence of easy tokens
may lose all of its loss tokens while a hard one keeps most of them.

Compute the entropies once over the whole rollout batch and mask before splitting into micro-batches; a per
micro-batch top-ρ would be a different (noisier) selection.
"""

from __future__ import annotations

import math

import torch


def _keep_count(rho: float, n_valid: int) -> int:
    # round before ceil so float error does not add a token (0.7 * 10 = 7.000000000000001)
    return max(1, math.ceil(round(rho * n_valid, 9))) if n_valid else 0


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """The loss mask restricted to the ceil(ρ · #valid) highest-entropy valid tokens of the whole batch.

    Returns a mask of `mask`'s dtype and shape that is a subset of it (at least one token when any is valid).
    Ties are broken by position in the flattened batch, earlier first. ρ = 1 returns `mask` itself."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho (fraction of tokens kept) must be in (0, 1], got {rho}")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} must have one shape")
    if rho == 1.0:
        return mask
    valid = (mask > 0).flatten()
    k = _keep_count(rho, int(valid.sum()))
    ent = entropy.detach().float().flatten()
    if bool(torch.isnan(ent[valid]).any()):
        raise ValueError("NaN entropy on a loss token: the logits are broken")
    # Invalid tokens go to -inf so they sort last (valid entropies are finite and >= 0); a stable descending
    # sort keeps equal entropies in index order, which makes the tie-break deterministic.
    scores = torch.where(valid, ent, float("-inf"))
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    keep = torch.zeros_like(valid)
    keep[order] = True
    keep = keep.view(mask.shape)
    if mask.dtype == torch.bool:
        return keep
    return torch.where(keep, mask, torch.zeros_like(mask))
