"""The environment interface: a task is a prompt plus what is needed to score it; a reward has named parts.

Environments must not assume one domain or one reward: next-token prediction on web text, math with a
verifier and sandboxed code all produce `Task`s and score `Rollout`s through this interface, so a trainer can
mix them in one batch (each task carries its `domain`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nextrl.engine.base import Rollout, SamplingParams


@dataclass
class Task:
    task_id: str
    prompt_ids: list[int]
    domain: str = "text"
    # Tasks with the same group_key share a prompt prefix (positions of one document); engines may exploit it.
    group_key: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reward:
    total: float
    components: dict[str, float] = field(default_factory=dict)
    answer: str | None = None  # the parsed prediction, for logs and reports
    parsed: bool = True  # False when the answer was missing or unparseable


class Environment(Protocol):
    name: str

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        """How the policy must generate for this environment's tasks (phases, stop tokens)."""
        ...

    def score(self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]]) -> list[list[Reward]]:
        """Rewards for `rollouts[i][j]`, the j-th sample of `tasks[i]`."""
        ...
