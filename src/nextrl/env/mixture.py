"""A weighted mixture of task sources (web text with math, several corpora): each `take` splits its tasks among
the sources in proportion to their weights, deterministically, and routes the feedback of `visit` back to the
source a task came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nextrl.env.base import Task, TaskSource


class MixtureTaskSource:
    """A `TaskSource` over named sources with weights. Each source's share of all tasks given so far tracks its
    weight: a `take` asks the source furthest below its quota for its deficit, then the next, until `n` tasks
    are in hand. A source that gives more than asked (rounding up to keep prefix units whole) is charged what
    it gave, so the shares hold over a run however the sources round. A task keeps the `domain` its source
    gave it; `meta["source"]` names the source."""

    def __init__(self, sources: Mapping[str, TaskSource], weights: Mapping[str, float]):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        if set(weights) != set(sources):
            raise ValueError(f"weights {sorted(weights)} must name exactly the sources {sorted(sources)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("mixture weights must be >= 0 with a positive sum")
        self.sources = dict(sources)
        total = sum(weights.values())
        self.shares = {k: weights[k] / total for k in self.sources}
        self.given = dict.fromkeys(self.sources, 0)  # tasks each source gave so far

    def take(self, n: int, step: int) -> list[Task]:
        out: list[Task] = []
        while len(out) < n:
            remaining = n - len(out)
            total = sum(self.given.values()) + remaining
            deficit = {k: self.shares[k] * total - self.given[k] for k in self.sources if self.shares[k] > 0}
            name = max(deficit, key=lambda k: (deficit[k], -list(self.sources).index(k)))
            tasks = self.sources[name].take(max(1, min(remaining, int(deficit[name]))), step)
            if not tasks:
                raise RuntimeError(f"task source '{name}' gave no tasks")
            for t in tasks:
                t.meta["source"] = name
            self.given[name] += len(tasks)
            out += tasks
        return out

    def visit(self, task: Task, rewards: Sequence[float], signal: bool, uncertainty: float | None) -> None:
        self.sources[task.meta["source"]].visit(task, rewards, signal, uncertainty)

    def stats(self) -> dict[str, Any]:
        return {name: {"given": self.given[name], **src.stats()} for name, src in self.sources.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"given": dict(self.given), "sources": {k: s.state_dict() for k, s in self.sources.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.given = {k: int(v) for k, v in state["given"].items()}
        for k, s in self.sources.items():
            s.load_state_dict(state["sources"][k])
