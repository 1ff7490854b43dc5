"""Self-selection inside the RL step: which tokens the loss trains, and the policy's own uncertainty at a
position (fed back to the task source, whose curriculum may prefer uncertain positions; the position draw
itself is `nextrl.positions.draw`).

- Tokens: RLP trains the thought only (the answer is teacher-forced by the reward); the high-entropy mask keeps
  the loss on the top-ρ fraction of the batch's tokens by sampling entropy (arXiv 2506.01939).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from nextrl.algo.token_mask import high_entropy_mask
from nextrl.engine.base import Rollout


def answer_entropy(group: Sequence[Rollout]) -> float | None:
    """The policy's uncertainty at a position: mean sampling entropy of the first answer token (after the
    thought), over the group's samples that reached it."""
    vals = [
        r.entropies[r.phase_starts[1]]
        for r in group
        if len(r.phase_starts) > 1
        and r.phase_starts[1] < len(r.entropies)
        and r.action_mask[r.phase_starts[1]]
    ]
    return float(np.mean(vals)) if vals else None


def loss_token_masks(rollouts: list[Rollout], thought_only: bool, rho: float) -> list[Rollout]:
    """Copies of the rollouts whose `action_mask` keeps only the tokens the loss should train."""
    masks = []
    for r in rollouts:
        m = list(r.action_mask)
        if thought_only and len(r.phase_starts) > 1:
            m[r.phase_starts[1] :] = [0] * (len(m) - r.phase_starts[1])
        masks.append(m)
    if rho < 1.0 and rollouts:
        width = max(len(m) for m in masks)
        ent = torch.zeros(len(masks), width)
        valid = torch.zeros(len(masks), width)
        for i, (r, m) in enumerate(zip(rollouts, masks, strict=True)):
            if len(r.entropies) != len(m):
                raise ValueError("entropy_mask_rho < 1 needs an engine that records token entropies")
            ent[i, : len(m)] = torch.tensor(r.entropies)
            valid[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        kept = high_entropy_mask(ent, valid, rho)
        masks = [[int(v) for v in kept[i, : len(m)].tolist()] for i, m in enumerate(masks)]
    return [dataclasses.replace(r, action_mask=m) for r, m in zip(rollouts, masks, strict=True)]
