"""Self-selection in the RL loop: which positions a step draws, and which tokens its loss trains.

- Positions: the plain seeded cursor (`PositionSampler`), or, when the curriculum is on, a `PositionPool` with
  an easy-to-hard schedule over entropy buckets, online re-scoring by the policy's own uncertainty at its
  answer, and retirement of positions that keep giving no signal.
- Tokens: RLP trains the thought only (the answer is teacher-forced by the reward); the high-entropy mask keeps
  the loss on the top-ρ fraction of the batch's tokens by sampling entropy (arXiv 2506.01939).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from nextrl.algo.token_mask import high_entropy_mask
from nextrl.config import RunConfig
from nextrl.data.positions import PositionSampler
from nextrl.engine.base import Rollout
from nextrl.selection.curriculum import PositionPool
from nextrl.selection.index import COMPUTED, PositionIndex


class PlainPositions(PositionSampler):
    """`PositionSampler` with the pool's interface (a step argument, and no feedback)."""

    def take(self, n: int, step: int = 0) -> list[int]:  # noqa: ARG002 - the pool's signature
        return super().take(n)

    def visit(self, row: int, rewards: Sequence[float], signal: bool, uncertainty: float | None) -> None:
        pass

    def counts(self) -> dict:
        return {}


class CurriculumPositions(PositionPool):
    """`PositionPool` fed by the trainer after every visit."""

    def visit(self, row: int, rewards: Sequence[float], signal: bool, uncertainty: float | None) -> None:
        self.record(row, list(rewards), signal)
        if self.prefer == "policy_entropy" and uncertainty is not None:
            self.rescore([row], [uncertainty])


def build_positions(cfg: RunConfig, index: PositionIndex) -> PlainPositions | CurriculumPositions:
    # Positions of one document stripe share their prompt prefix: they are drawn together (as units).
    cur = cfg.curriculum
    weights = cur.bucket_weights
    units = index.units(
        "train", cfg.selection.context, cfg.rl.positions_per_prefix, by_bucket=weights is not None
    )
    if weights is not None:
        units = [u for u in units if weights.get(index.bucket[u[0]], 0) > 0]
        if not units:
            raise ValueError(
                f"config key 'curriculum.bucket_weights': no training position in the weighted buckets "
                f"{sorted(b for b, w in weights.items() if w > 0)} (present: {sorted(set(index.bucket))})"
            )
    if not cur.enabled:
        return PlainPositions(units, seed=cfg.rl.seed)
    rows = [r for u in units for r in u]
    buckets = sorted(cfg.selection.buckets, key=cfg.selection.buckets.get)  # easy -> hard by entropy bound
    if COMPUTED in {index.bucket[r] for r in rows}:
        buckets.append(COMPUTED)  # results of a computation: the hardest (they need written steps)
    return CurriculumPositions(
        units,
        bucket_of={r: index.bucket[r] for r in rows},
        buckets=buckets,
        seed=cfg.rl.seed,
        schedule="uniform" if cur.schedule == "none" else cur.schedule,
        total_steps=max(cfg.rl.steps, 1),
        retire_after=cur.retire_after,
        prefer="policy_entropy" if cur.prefer == "uncertain" else "uniform",
        initial_score={r: float(index.entropy[r]) for r in rows},
        fixed_weights=weights,
    )


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
