"""The pipeline of an RL run as a recurrence over steps (exact for this model, so no event library is needed):
batch i is generated in `gen` seconds by the rollout GPUs and trained in `train` seconds by the learner GPUs.

    gen_start[i]   = max(gen_end[i−1], train_end[i−1−d])     d = the staleness bound (0: synchronous)
    train_start[i] = max(gen_end[i], train_end[i−1])

Synchronous (d = 0) is gen + train per step; with d ≥ 1 generation of the next batches overlaps training, and
the steady state is max(gen, train) per step."""

from __future__ import annotations


def pipeline_seconds(steps: int, gen: float, train: float, staleness: int = 0, sync: float = 0.0) -> float:
    """Wall-clock of `steps` steps; `sync` is the weight push after each update (before the next generation that
    needs those weights)."""
    if steps <= 0:
        return 0.0
    gen_end: list[float] = []
    train_end: list[float] = []
    for i in range(steps):
        ready = train_end[i - 1 - staleness] + sync if i - 1 - staleness >= 0 else 0.0
        start = max(gen_end[i - 1] if i else 0.0, ready)
        gen_end.append(start + gen)
        train_end.append(max(gen_end[i], train_end[i - 1] if i else 0.0) + train)
    return train_end[-1]
