"""RPT's difficulty signal: entropy of the proxy's next-token distribution renormalised over its top-k."""

from __future__ import annotations

import torch


def topk_entropy(logits: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Entropy (nats) of softmax over the k largest logits, for every position: [..., V] -> [...]."""
    top = logits.float().topk(min(k, logits.size(-1)), dim=-1).values
    logp = torch.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def bucket_of(entropy: float, buckets: dict[str, float]) -> str | None:
    """The bucket with the highest lower bound that `entropy` exceeds, or None if it exceeds none."""
    best, best_bound = None, float("-inf")
    for name, bound in buckets.items():
        if entropy > bound and bound > best_bound:
            best, best_bound = name, bound
    return best
