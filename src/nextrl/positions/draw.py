"""Which training positions each RL step draws: the plain seeded cursor over prefix units
(`PlainPositions`), or, when the curriculum is on, a `PositionPool` with an easy-to-hard schedule over entropy
buckets, online re-scoring by the policy's own uncertainty at its answer, and retirement of positions that keep
giving no signal (`CurriculumPositions`). Both take feedback through `visit`."""

from __future__ import annotations

from collections.abc import Sequence

from nextrl.config import RunConfig
from nextrl.errors import ConfigError
from nextrl.positions.curriculum import PositionPool
from nextrl.positions.cursor import PositionSampler
from nextrl.positions.index import COMPUTED, PositionIndex


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
        "train", cfg.selection.context, cfg.positions.per_prefix, by_bucket=weights is not None
    )
    if weights is not None:
        units = [u for u in units if weights.get(index.bucket[u[0]], 0) > 0]
        if not units:
            raise ConfigError(
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
