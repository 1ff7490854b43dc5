"""RPT's difficulty signal: entropy of the proxy's next-token distribution renormalised over its top-k."""

from __future__ import annotations

from nextrl.model.head import topk_entropy

__all__ = ["bucket_of", "topk_entropy"]


def bucket_of(entropy: float, buckets: dict[str, float]) -> str | None:
    """The bucket with the highest lower bound that `entropy` exceeds, or None if it exceeds none."""
    best, best_bound = None, float("-inf")
    for name, bound in buckets.items():
        if entropy > bound and bound > best_bound:
            best, best_bound = name, bound
    return best
