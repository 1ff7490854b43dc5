"""RL algorithms: advantages from grouped rewards and the clipped policy-gradient loss."""

from nextrl.algo.advantages import group_advantages, rlp_advantages, uniform_groups
from nextrl.algo.grpo import LossNorm, PolicyBatch, grpo_loss

__all__ = ["LossNorm", "PolicyBatch", "group_advantages", "grpo_loss", "rlp_advantages", "uniform_groups"]
