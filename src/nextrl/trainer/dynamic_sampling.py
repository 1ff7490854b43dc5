"""DAPO dynamic sampling (arXiv 2503.14476): drop groups with no reward spread and refill the batch.

A group whose G rewards are all equal has zero group-relative advantage, so it adds rollout cost and no
gradient, and it shrinks the effective batch (noisier updates). DAPO keeps drawing until the batch holds
`target` groups with a spread. `fill_batch` does this against any `draw(k)` callable (generate and score k
fresh positions), over-sampling each draw by the keep rate observed so far.

Surplus: kept groups beyond `target` (a draw can overshoot) are returned in `stats["surplus"]`, not in the
batch; a caller that wants no waste feeds them into the next step's batch, one that does not drops them. They
are never in both, and no group is ever counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nextrl.utils.rewards import rewards_differ


@dataclass
class Group:
    task: Any
    rollouts: list = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # one total reward per rollout


def is_uniform(group: Group) -> bool:
    """True when the group's rewards are all equal (no learning signal) or it has fewer than 2 of them."""
    return not rewards_differ(group.rewards)


def _next_request(needed: int, kept: int, drawn: int, prior_keep_rate: float, max_factor: float) -> int:
    """How many groups to ask for: the number still needed divided by the keep rate (the prior before any
    draw, then the rate observed so far), at most `max_factor` times the need (a keep rate near 0 must not ask
    for the whole data set in one draw)."""
    if drawn == 0:
        factor = 1.0 / prior_keep_rate
    elif kept == 0:
        factor = max_factor  # nothing kept yet: the rate is unknown but low
    else:
        factor = drawn / kept
    # round before ceil so float error does not ask for one more (16 / 0.8 = 20.000000000000004)
    return max(needed, math.ceil(round(needed * min(factor, max_factor), 9)))


def fill_batch(
    draw: Callable[[int], Sequence[Group]],
    target: int,
    max_draws: int,
    is_uniform: Callable[[Group], bool] = is_uniform,
    prior_keep_rate: float = 1.0,
    max_factor: float = 4.0,
) -> tuple[list[Group], dict[str, Any]]:
    """Draw until `target` groups with a reward spread are kept, or `max_draws` calls were made.

    `draw(k)` must return fresh groups (never one it returned before); it may return fewer than k (a data
    source running dry) and an empty draw still counts. The first draw asks for target / `prior_keep_rate`
    (pass the previous step's kept/drawn to over-sample from the start; 1.0 asks for exactly `target`), later
    ones for what is missing scaled up by the observed drawn/kept ratio; every request is capped at
    `max_factor` times the need.

    Returns the kept groups, in draw order (exactly `target` unless the draws ran out), and stats: draws,
    groups_drawn, groups_dropped, groups_kept (in the batch), groups_surplus, short_by (target − kept), and
    surplus (the list of kept groups beyond target, not in the batch; the only non-numeric entry).
    groups_drawn = groups_dropped + groups_kept + groups_surplus.
    """
    if target < 0 or max_draws < 1:
        raise ValueError(f"target must be >= 0 and max_draws >= 1, got target={target} max_draws={max_draws}")
    if not 0.0 < prior_keep_rate <= 1.0 or max_factor < 1.0:
        raise ValueError(
            f"need 0 < prior_keep_rate <= 1 and max_factor >= 1, got {prior_keep_rate}, {max_factor}"
        )
    kept: list[Group] = []
    surplus: list[Group] = []
    draws = drawn = dropped = 0
    while len(kept) < target and draws < max_draws:
        needed = target - len(kept)
        groups = list(draw(_next_request(needed, len(kept), drawn, prior_keep_rate, max_factor)))
        draws += 1
        drawn += len(groups)
        for g in groups:
            if is_uniform(g):
                dropped += 1
            elif len(kept) < target:
                kept.append(g)
            else:
                surplus.append(g)
    stats = {
        "draws": draws,
        "groups_drawn": drawn,
        "groups_dropped": dropped,
        "groups_kept": len(kept),
        "groups_surplus": len(surplus),
        "short_by": target - len(kept),
        "surplus": surplus,
    }
    return kept, stats
