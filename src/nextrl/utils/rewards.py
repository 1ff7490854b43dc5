"""When a group's rewards count as equal: one tolerance for the whole code base (advantages, dynamic sampling,
the curriculum and the trainer's signal counts all ask this module); and when a sample is right, by the
component its environment names (`Environment.correctness`)."""

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


def is_correct(components: dict[str, float], correctness: str | None) -> bool:
    """Whether a sample is right: its correctness component (the one its environment names in
    `Environment.correctness`) is 1."""
    if correctness is None or correctness not in components:
        raise ValueError(
            f"no correctness component among {sorted(components)} (the environment names "
            f"{correctness!r}; one without a right answer, a judge's rating, has no accuracy)"
        )
    return components[correctness] >= 1.0
