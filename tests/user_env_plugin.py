"""A user's own environment and task source, written against nextrl's public interfaces only (imported by
tests/test_user_env.py through `env.name: user_env_plugin:make`, as a user's module would be)."""

from __future__ import annotations

import random

from nextrl.engine.base import SamplingParams
from nextrl.env import Environment, Reward, Task, register_environment


class AdditionEnv(Environment):
    """'12+7=' -> the model writes an answer; reward components `exact` (1 if it is right) and `digits` (the
    share of its characters that are digits: partial credit, so that an untrained model's groups differ)."""

    name = "addition"
    reward_components = ("exact", "digits")

    def __init__(self, tokenizer, digits: int = 1):
        self.tok, self.digits = tokenizer, digits

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return SamplingParams.simple(3, n=n, temperature=temperature, top_p=top_p)

    def score(self, tasks, rollouts, scorer=None):
        out = []
        for task, group in zip(tasks, rollouts, strict=True):
            rewards = []
            for r in group:
                text = self.tok.decode(r.completion_ids, skip_special_tokens=True).strip()
                exact = float(text == task.meta["answer"])
                digits = sum(c.isdigit() for c in text) / max(len(text), 1)
                comps = {"exact": exact, "digits": digits}
                rewards.append(Reward(self.total(comps), comps, text, parsed=True))
            out.append(rewards)
        return out


class AdditionTasks:
    """A seeded stream of addition problems: a TaskSource that is not a position index."""

    def __init__(self, tokenizer, seed: int = 0):
        self.tok, self.seed, self.cursor = tokenizer, seed, 0
        self.visits: list[tuple[str, list[float], bool]] = []

    def take(self, n: int, step: int) -> list[Task]:
        tasks = []
        for k in range(self.cursor, self.cursor + n):
            rng = random.Random(self.seed * 1_000_003 + k)
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            ids = self.tok(f"{a}+{b}=", add_special_tokens=False)["input_ids"]
            tasks.append(Task(f"add-{k}", ids, domain="math", meta={"answer": str(a + b)}))
        self.cursor += n
        return tasks

    def visit(self, task, rewards, signal, uncertainty) -> None:
        self.visits.append((task.task_id, list(rewards), signal))

    def stats(self) -> dict:
        return {"given": self.cursor}

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = state["cursor"]


def make(cfg, tokenizer) -> AdditionEnv:
    return AdditionEnv(tokenizer, **cfg.env.options)


register_environment("addition", make)
