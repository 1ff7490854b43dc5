"""The next-token task source: positions of the index, drawn by `nextrl.positions.draw` (plain cursor or
curriculum), made into tasks by the environment.

It holds an environment's tasks (`nextrl.env.base.Task`) without importing them: positions sit below the
environments, which read `context_start` from here; a task only needs its `meta` mapping for the feedback."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nextrl.config import RunConfig
from nextrl.positions.draw import CurriculumPositions, PlainPositions, build_positions
from nextrl.positions.index import PositionIndex


class PositionTaskSource:
    """A `TaskSource` over the training positions of a `PositionIndex`. `take` returns whole prefix units (the
    positions of one document stripe), so it may return more than asked."""

    def __init__(
        self,
        index: PositionIndex,
        sampler: PlainPositions | CurriculumPositions,
        make_task: Callable[..., Any],
        context: int,
    ):
        self.index, self.sampler, self.make_task, self.context = index, sampler, make_task, context

    def take(self, n: int, step: int) -> list[Any]:
        rows = self.sampler.take(n, step)
        tasks = self.index.tasks(self.make_task, rows, self.context)
        for r, t in zip(rows, tasks, strict=True):
            t.meta["index_row"] = int(r)  # for the feedback of `visit` (a row may be drawn twice in a step)
        return tasks

    def visit(self, task: Any, rewards: Sequence[float], signal: bool, uncertainty: float | None) -> None:
        self.sampler.visit(task.meta["index_row"], rewards, signal, uncertainty)

    def stats(self) -> dict[str, Any]:
        return self.sampler.counts()

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def position_tasks(cfg: RunConfig, index: PositionIndex, env) -> PositionTaskSource:
    """The run's training tasks: `cfg.curriculum` and `cfg.rl` pick the draw, `env.make_task` makes the tasks."""
    return PositionTaskSource(index, build_positions(cfg, index), env.make_task, cfg.selection.context)
