"""Group-relative advantages: each prompt is sampled G times and every sample is scored against its siblings.

All functions take rewards shaped [num_groups, G] (one row per prompt/position) and return the same shape,
except `uniform_groups`, which flags whole rows.
"""

from __future__ import annotations

import torch

from nextrl.utils.rewards import REWARD_ATOL


def group_advantages(rewards: torch.Tensor, scale: bool, eps: float = 1e-6) -> torch.Tensor:
    """r - mean of the group; divided by (std + eps) when `scale` (GRPO), left unscaled otherwise (Dr. GRPO).

    The std is the population std (unbiased=False): it is defined for G == 1 (0, so advantages are 0 instead
    of NaN) and for binary rewards with success rate p it gives the familiar +-sqrt((1-p)/p) form. TRL and
    verl use the unbiased std; the two differ by the constant factor sqrt((G-1)/G) for a fixed G.
    """
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)


def rlp_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLP (arXiv 2510.01265): A_i = G/(G-1) * (r_i - mean_j r_j), no std scaling.

    G/(G-1) makes A_i equal r_i minus the mean of the *other* samples (a leave-one-out baseline), so the
    estimator stays unbiased. A group of one has no siblings to compare with and gets zero advantage.
    """
    rewards = rewards.float()
    g = rewards.shape[1]
    if g < 2:
        return torch.zeros_like(rewards)
    return g / (g - 1) * (rewards - rewards.mean(dim=1, keepdim=True))


def uniform_groups(rewards: torch.Tensor, atol: float = REWARD_ATOL) -> torch.Tensor:
    """Bool [num_groups]: True where every reward of the group is equal (within `atol`).

    Such groups have zero advantage everywhere, so they give no gradient (only KL); DAPO's dynamic sampling
    drops them and the trainer counts them (a rising count means the task became all-easy or all-hard).
    """
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    return spread <= atol
