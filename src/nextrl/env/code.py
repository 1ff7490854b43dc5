"""The code environment: HumanEval- and MBPP-style problems, scored by running the tests in the sandbox.

Task records (JSONL, optionally .gz; `env.options.path`):

    {"prompt": "def f(x):\\n    \\"\\"\\"...\\"\\"\\"\\n", "test": "def check(candidate): ...", "entry_point": "f"}  HumanEval
    {"text": "Write a function ...", "test_list": ["assert f(1) == 2", ...], "code": "..."}             MBPP

HumanEval: the policy continues the function from its signature and docstring; the program is prompt +
completion + test + `check(entry_point)`. MBPP: the policy writes the function after the instruction and the
first test (to fix the name); the program is the completion + every test. `passed` is 1 when the program
exits 0 in the sandbox *and* prints a random sentinel placed after the tests (so an accidental early exit with
code 0 does not pass; a program that reads its own source can still find the sentinel and forge a pass, see
`nextrl.env.sandbox`); `format` is −1 when the completion is empty.

Options: `path` (required), `max_tokens` (384), `cpu_seconds` (5), `wall_seconds` (10), `memory_mb` (512),
`workers` (programs run at once, 4).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env.base import Environment, Reward, ScoringModel, Task
from nextrl.env.next_token import end_of_turn_ids
from nextrl.env.records import RecordTasks, file_tasks
from nextrl.env.sandbox import Limits, run_many, unavailable
from nextrl.errors import ConfigError

OPTIONS = {"path", "max_tokens", "cpu_seconds", "wall_seconds", "memory_mb", "workers"}


def prompt_text(record: dict[str, Any]) -> str:
    if "prompt" in record:  # HumanEval: continue the function
        return record["prompt"]
    tests = record.get("test_list") or []
    return f'"""{record["text"].strip()}\n{tests[0] if tests else ""}\n"""\n'


def program(record: dict[str, Any], completion: str, sentinel: str) -> str:
    """The program the sandbox runs: the solution, then the tests, then the sentinel."""
    if "prompt" in record:
        body = (
            record["prompt"] + completion + "\n\n" + record["test"] + f"\n\ncheck({record['entry_point']})\n"
        )
    else:
        setup = record.get("test_setup_code") or ""
        body = setup + "\n" + completion + "\n\n" + "\n".join(record.get("test_list") or []) + "\n"
    return body + f"\nprint({sentinel!r})\n"


class CodeEnv(Environment):
    name = "code"
    reward_components = ("passed", "format")

    def __init__(self, options: dict[str, Any], tokenizer):
        unknown = set(options) - OPTIONS
        if unknown:
            raise ConfigError(f"config key 'env.options': unknown option(s) {sorted(unknown)} for env 'code'")
        if "path" not in options:
            raise ConfigError("config key 'env.options.path': the code environment needs a file of problems")
        if (why := unavailable()) is not None:
            raise ConfigError(f"env.name 'code' needs the sandbox: {why}")
        self.options, self.tok = options, tokenizer
        self.max_tokens = int(options.get("max_tokens", 384))
        self.limits = Limits(
            cpu_seconds=int(options.get("cpu_seconds", 5)),
            wall_seconds=float(options.get("wall_seconds", 10)),
            memory_mb=int(options.get("memory_mb", 512)),
        )
        self.workers = int(options.get("workers", 4))
        self.eos_ids = end_of_turn_ids(tokenizer)

    def make_task(self, record: dict[str, Any], index: int) -> Task:
        ids = list(self.tok(prompt_text(record), add_special_tokens=False)["input_ids"])
        return Task(f"code:{record.get('task_id', index)}", ids, domain="code", meta={"record": record})

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return SamplingParams.simple(self.max_tokens, n, temperature, top_p, eos_token_ids=self.eos_ids)

    def run(self, records: Sequence[dict[str, Any]], completions: Sequence[str]) -> list[bool]:
        """Whether each completion passes its record's tests in the sandbox (in parallel)."""
        sentinels = [f"nextrl-passed-{secrets.token_hex(8)}" for _ in completions]
        sources = [program(r, c, s) for r, c, s in zip(records, completions, sentinels, strict=True)]
        results = run_many(sources, self.limits, self.workers)
        return [r.ok and s in r.stdout for r, s in zip(results, sentinels, strict=True)]

    def score(
        self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]], scorer: ScoringModel | None = None
    ) -> list[list[Reward]]:
        flat = [
            (t, self.tok.decode(r.completion_ids, skip_special_tokens=True))
            for t, g in zip(tasks, rollouts, strict=True)
            for r in g
        ]
        passed = iter(self.run([t.meta["record"] for t, _ in flat], [c for _, c in flat]))
        texts = iter(c for _, c in flat)
        out = []
        for group in rollouts:
            rewards = []
            for _ in group:
                ok, text = next(passed), next(texts)
                comps = {"passed": float(ok), "format": 0.0 if text.strip() else -1.0}
                rewards.append(Reward(self.total(comps), comps, text[:200], parsed=bool(text.strip())))
            out.append(rewards)
        return out

    def task_source(self, cfg) -> RecordTasks:
        """The problems of `env.options.path`."""
        return file_tasks(self, cfg.rl.seed, "problems")
