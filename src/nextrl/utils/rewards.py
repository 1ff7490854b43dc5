"""When a group's rewards count as equal: one tolerance for the whole code base (advantages, dynamic sampling,
the curriculum and the trainer's signal counts all ask this module)."""

from __future__ import annotations

from collections.abc import Sequence

REWARD_ATOL = 1e-8  # rewards within this of each other are equal (float noise in summed components)


def reward_spread(rewards: Sequence[float]) -> float:
    """max − min of a group's rewards (0 for fewer than two)."""
    return max(rewards) - min(rewards) if len(rewards) > 1 else 0.0


def rewards_differ(rewards: Sequence[float], min_spread: float = 0.0) -> bool:
    """True when the group carries a learning signal: its rewards spread more than the tolerance (and than
    `min_spread`, a caller's threshold for a useful spread)."""
    return reward_spread(rewards) > max(REWARD_ATOL, min_spread)


# the component that says a sample is right, by environment: math, code, next-token (first one present wins)
CORRECTNESS = ("correct", "passed", "prefix_match")


def correctness_component(components: dict[str, float]) -> str | None:
    """The name of the component that says whether a sample is right, or None when there is none."""
    return next((name for name in CORRECTNESS if name in components), None)


def is_correct(components: dict[str, float]) -> bool:
    """Whether a sample is right: its correctness component is 1."""
    name = correctness_component(components)
    if name is None:
        raise ValueError(
            f"no correctness component among {sorted(components)} (expected one of {CORRECTNESS})"
        )
    return components[name] >= 1.0
