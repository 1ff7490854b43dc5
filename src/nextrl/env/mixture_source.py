"""A weighted mixture of task sources (web text with math, several corpora): each `take` splits its tasks among
the sources in proportion to their shares, deterministically, and routes the feedback of `visit` back to the
source a task came from.

With `adapt` the shares move toward the sources whose groups carry learning signal (rewards that differ within
the group, the only groups GRPO learns from):

    share_k ∝ w_k · (floor + ŝ_k)^strength,   then every source with w_k > 0 gets at least `min_share`,

where w_k is the configured weight and ŝ_k an exponential moving average (rate `rate`, one update per `take`)
of the fraction of source k's groups that had signal. ŝ_k starts at 1, so no source is starved before it has
been measured; `floor` keeps a source whose groups carry no signal today in the draw, so that it can recover."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nextrl.env.base import Task, TaskSource


@dataclass(frozen=True)
class Adaptation:
    """How a mixture's shares follow the signal of its sources (see the module docstring)."""

    strength: float = 1.0
    rate: float = 0.1
    floor: float = 0.05
    min_share: float = 0.05

    def __post_init__(self) -> None:
        if self.strength < 0 or not 0 < self.rate <= 1 or self.floor <= 0 or not 0 <= self.min_share < 1:
            raise ValueError(f"invalid mixture adaptation {self}")


class MixtureTaskSource:
    """A `TaskSource` over named sources with shares. Each `take` adds `share_k · n` to each source's credit
    and then asks the source with the most credit for what it is owed, then the next, until `n` tasks are in
    hand (deficit round robin). A source that gives more than asked (rounding up to keep prefix units whole) is
    charged what it gave, so the shares hold over a run however the sources round. A task keeps the `domain`
    its source gave it; `meta["source"]` names the source."""

    def __init__(
        self,
        sources: Mapping[str, TaskSource],
        weights: Mapping[str, float],
        adapt: Adaptation | None = None,
    ):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        if set(weights) != set(sources):
            raise ValueError(f"weights {sorted(weights)} must name exactly the sources {sorted(sources)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("mixture weights must be >= 0 with a positive sum")
        self.sources = dict(sources)
        total = sum(weights.values())
        self.weights = {k: weights[k] / total for k in self.sources}
        self.adapt = adapt
        self.given = dict.fromkeys(self.sources, 0)  # tasks each source gave so far
        self.credit = dict.fromkeys(self.sources, 0.0)  # tasks each source is owed
        self.signal = dict.fromkeys(self.sources, 1.0)  # ŝ_k: moving average of groups with signal
        self._seen = {k: [0, 0] for k in self.sources}  # groups, groups with signal since the last take
        self.shares = self._shares()

    def _shares(self) -> dict[str, float]:
        if self.adapt is None:
            return dict(self.weights)
        a = self.adapt
        raw = {k: w * (a.floor + self.signal[k]) ** a.strength for k, w in self.weights.items()}
        total = sum(raw.values())
        shares = {k: v / total for k, v in raw.items()}
        live = [k for k, w in self.weights.items() if w > 0]
        floor = min(a.min_share, 1.0 / len(live))
        low = {k for k in live if shares[k] < floor}
        if low:  # lift the starved to the floor, take it from the others in proportion
            rest = sum(shares[k] for k in shares if k not in low)
            scale = (1.0 - floor * len(low)) / rest if rest > 0 else 0.0
            shares = {k: floor if k in low else v * scale for k, v in shares.items()}
        return shares

    def _update_shares(self) -> None:
        if self.adapt is None:
            return
        for k, (groups, with_signal) in self._seen.items():
            if groups:
                self.signal[k] += self.adapt.rate * (with_signal / groups - self.signal[k])
        self._seen = {k: [0, 0] for k in self.sources}
        self.shares = self._shares()

    def take(self, n: int, step: int) -> list[Task]:
        self._update_shares()
        for k in self.sources:
            self.credit[k] += self.shares[k] * n
        out: list[Task] = []
        while len(out) < n:
            remaining = n - len(out)
            owed = {k: c for k, c in self.credit.items() if self.shares[k] > 0}
            name = max(owed, key=lambda k: (owed[k], -list(self.sources).index(k)))
            tasks = self.sources[name].take(max(1, min(remaining, int(owed[name]))), step)
            if not tasks:
                raise RuntimeError(f"task source '{name}' gave no tasks")
            for t in tasks:
                t.meta["source"] = name
            self.given[name] += len(tasks)
            self.credit[name] -= len(tasks)
            out += tasks
        return out

    def visit(self, task: Task, rewards: Sequence[float], signal: bool, uncertainty: float | None) -> None:
        name = task.meta["source"]
        self._seen[name][0] += 1
        self._seen[name][1] += int(signal)
        self.sources[name].visit(task, rewards, signal, uncertainty)

    def stats(self) -> dict[str, Any]:
        return {
            name: {"given": self.given[name], "share": self.shares[name], **src.stats()}
            for name, src in self.sources.items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "given": dict(self.given),
            "credit": dict(self.credit),
            "signal": dict(self.signal),
            "seen": {k: list(v) for k, v in self._seen.items()},
            "sources": {k: s.state_dict() for k, s in self.sources.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.given = {k: int(v) for k, v in state["given"].items()}
        if "credit" in state:
            self.credit = {k: float(v) for k, v in state["credit"].items()}
            self.signal = {k: float(v) for k, v in state["signal"].items()}
            self._seen = {k: [int(x) for x in v] for k, v in state["seen"].items()}
        else:  # a checkpoint of fixed shares from before credits: what each source was owed then
            total = sum(self.given.values())
            self.credit = {k: self.weights[k] * total - self.given[k] for k in self.sources}
        self.shares = self._shares()
        for k, s in self.sources.items():
            s.load_state_dict(state["sources"][k])
