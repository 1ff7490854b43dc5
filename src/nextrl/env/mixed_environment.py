"""Several environments in one run (`env.mixture`): next-token text with math, say. Each task is routed to the
environment its task source belongs to (`meta["source"]`, set by `MixtureTaskSource`); each environment keeps
its own sampling plan, reward spec (`reward.by_env`) and state, and the trainer sees one `Environment`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env.base import Environment, Reward, ScoringModel, Task


class _SpecByEnv:
    """The reward spec of a mixture, for logs and the summary: one spec per environment."""

    def __init__(self, envs: Mapping[str, Environment]):
        self.envs = envs

    def __str__(self) -> str:
        return "; ".join(f"{name}: {env.spec}" for name, env in self.envs.items())


class MixedEnvironment(Environment):
    name = "mixture"

    def __init__(self, envs: Mapping[str, Environment], weights: Mapping[str, float]):
        self.envs, self.weights = dict(envs), dict(weights)
        self.reward_components = tuple(sorted({c for e in self.envs.values() for c in e.reward_components}))
        self.spec = _SpecByEnv(self.envs)  # type: ignore[assignment]
        # the run-level checks ask this one (e.g. rl.empty_thought_samples); each part samples with its own
        formats = [e.thought_format for e in self.envs.values() if e.thought_format is not None]
        self.thought_format = next(
            (f for f in formats if f.has_empty_thought), formats[0] if formats else None
        )

    @property
    def verifier_free(self) -> bool:
        return all(e.verifier_free for e in self.envs.values())

    def correctness_of(self, task: Task) -> str | None:
        return self.envs[task.meta["source"]].correctness_of(task)

    def split(self, tasks: Sequence[Task]) -> list[tuple[Environment, list[int]]]:
        parts: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            parts.setdefault(t.meta["source"], []).append(i)
        return [(self.envs[name], idx) for name, idx in parts.items()]

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        # the trainer reads n, temperature and the longest budget from this; each part samples with its own
        plans = [e.sampling_params(n, temperature, top_p) for e in self.envs.values()]
        return max(plans, key=lambda p: p.max_new_tokens)

    def _routed(self, tasks: Sequence[Task], fn) -> list:
        out: list = [None] * len(tasks)
        for env, idx in self.split(tasks):
            for i, value in zip(idx, fn(env, idx), strict=True):
                out[i] = value
        return out

    def score(
        self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]], scorer: ScoringModel | None = None
    ) -> list[list[Reward]]:
        return self._routed(
            tasks, lambda env, idx: env.score([tasks[i] for i in idx], [rollouts[i] for i in idx], scorer)
        )

    def lm_sequences(self, tasks: Sequence[Task]) -> list[list[int]]:
        return [s for env, idx in self.split(tasks) for s in env.lm_sequences([tasks[i] for i in idx])]

    def empty_thought_targets(self, tasks: Sequence[Task]) -> tuple[list[list[int]], list[int]]:
        seqs, starts = [], []
        for env, idx in self.split(tasks):
            s, a = env.empty_thought_targets([tasks[i] for i in idx])
            seqs += s
            starts += a
        return seqs, starts

    def bind_scorer(self, scorer: ScoringModel) -> None:
        for env in self.envs.values():
            env.bind_scorer(scorer)

    def after_update(self) -> None:
        for env in self.envs.values():
            env.after_update()

    def state_dict(self) -> dict[str, Any]:
        return {name: env.state_dict() for name, env in self.envs.items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for name, env in self.envs.items():
            env.load_state_dict((state or {}).get(name))
