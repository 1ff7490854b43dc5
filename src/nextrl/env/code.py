"""The code environment: HumanEval- and MBPP-style problems, scored by running the tests in the sandbox.

Task records (JSONL, optionally .gz; `env.options.path`):

    {"prompt": "def f(x):\\n    \\"\\"\\"...\\"\\"\\"\\n", "test": "def check(candidate): ...", "entry_point": "f"}  HumanEval
    {"text": "Write a function ...", "test_list": ["assert f(1) == 2", ...], "code": "..."}             MBPP

HumanEval: the policy continues the function from its signature and docstring; the solution is prompt +
completion. MBPP: the policy writes the function after the instruction and the first test (to fix the name);
the solution is the completion.

The verdict is decided where the solution cannot reach it (`nextrl.env.verdict`, which states the threat
model): the tests are split into the calls of the solution (run in the sandbox, their values sent back as
plain data) and the comparisons with the expected values (run here), so an object that equals everything, an
early `exit(0)`, a patched `print` or a forged "passed" line earn nothing. A record whose tests cannot be split
(loops, local variables, setup code: 7 of HumanEval's 164, 3 of MBPP's 974) runs the old way: solution and
tests in one sandboxed program that must exit 0 and print a random sentinel placed after the tests
(HumanEval's check() gets the candidate's results rebuilt as plain values, `PLAIN_CALLS`), which a program
that reads its own source or patches a builtin can forge. The task source counts those records
(`stats()["tests_run_in_sandbox"]`). `passed` is 1 when every test holds; `format` is −1 when the completion is
empty.

The programs cannot read the problems file: its folder looks empty in the sandbox (as does every folder of
`hide`, for other copies of the tests); the temporary folder is their own tmpfs.

Options: `path` (required), `max_tokens` (384), `cpu_seconds` (5), `wall_seconds` (10), `memory_mb` (512),
`work_mb` (the program's writable tmpfs, 64), `workers` (programs run at once, 4), `hide` (more folders the
programs must not read: other copies of the data set).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env.base import Environment, Reward, ScoringModel, Task
from nextrl.env.records import RecordTasks, file_tasks
from nextrl.env.sandbox import Limits, RunResult, run_many, unavailable, unhideable
from nextrl.env.verdict import Plan, decide, harness, plan_tests
from nextrl.errors import ConfigError
from nextrl.model.tokenizer import end_of_turn_ids

OPTIONS = {"path", "max_tokens", "cpu_seconds", "wall_seconds", "memory_mb", "work_mb", "workers", "hide"}


def prompt_text(record: dict[str, Any]) -> str:
    if "prompt" in record:  # HumanEval: continue the function
        return record["prompt"]
    tests = record.get("test_list") or []
    return f'"""{record["text"].strip()}\n{tests[0] if tests else ""}\n"""\n'


def solution(record: dict[str, Any], completion: str) -> str:
    """The solution's source: HumanEval's prompt (imports, signature, docstring) and the completion; MBPP's
    setup code, if any, and the completion."""
    if "prompt" in record:
        return record["prompt"] + completion
    return (record.get("test_setup_code") or "") + "\n" + completion


# The old way's one defence beyond the sentinel: HumanEval's check() gets the candidate's results rebuilt as
# values of exact built-in types (compared by identity: a metaclass cannot pose as int), so an object whose
# `__eq__` answers True fails there too. The program can undo it (it runs in the same process); the split
# verdict is what it cannot undo.
PLAIN_CALLS = """
def _nextrl_plain_calls(fn):
    import collections
    exact = (type(None), bool, int, float, complex, str, bytes)
    rebuilt = (list, tuple, set, frozenset, collections.deque)
    mappings = (dict, collections.OrderedDict, collections.Counter)

    def plain(v, depth=0):
        t = type(v)
        if depth > 64:
            raise TypeError("the candidate's result is nested too deeply")
        if any(t is e for e in exact):
            return v
        if any(t is r for r in rebuilt):
            return t([plain(x, depth + 1) for x in v])
        if any(t is m for m in mappings):
            return t(dict([(plain(k, depth + 1), plain(x, depth + 1)) for k, x in dict.items(v)]))
        if t is collections.defaultdict:
            return collections.defaultdict(v.default_factory, plain(dict(v), depth))
        raise TypeError(f"the candidate returned a {t.__name__}, which is no plain value")

    def call(*args, **kwargs):
        return plain(fn(*args, **kwargs))

    return call
"""


def program(record: dict[str, Any], completion: str, sentinel: str) -> str:
    """The old way, for tests that cannot be split: the solution, the tests and the sentinel in one program."""
    if "prompt" in record:
        check = f"check(_nextrl_plain_calls({record['entry_point']}))"
        body = record["prompt"] + completion + "\n\n" + record["test"] + "\n" + PLAIN_CALLS + f"\n{check}\n"
    else:
        setup = record.get("test_setup_code") or ""
        body = setup + "\n" + completion + "\n\n" + "\n".join(record.get("test_list") or []) + "\n"
    return body + f"\nprint({sentinel!r})\n"


@dataclass(frozen=True)
class Verdict:
    passed: bool
    trusted: bool  # decided here from the values the program sent; False: the tests ran in the program
    status: str  # how the sandboxed program ended (`RunResult.status`)
    why: str | None = None  # why it failed, when it did


def run_tests(
    records: Sequence[dict[str, Any]],
    completions: Sequence[str],
    limits: Limits | None = None,
    workers: int = 4,
    split: bool = True,
    hidden: Sequence[str] = (),
) -> list[Verdict]:
    """Whether each completion passes its record's tests (the programs run in parallel). `hidden`: folders
    the programs must not read, the data set's above all (a file hides its folder). `split=False` runs every
    record the old way (for comparisons)."""
    plans = [plan_tests(r) if split else None for r in records]
    sentinels = [f"nextrl-passed-{secrets.token_hex(8)}" for _ in completions]
    sources = [
        harness(plan, solution(r, c)) if plan is not None else program(r, c, s)
        for r, c, s, plan in zip(records, completions, sentinels, plans, strict=True)
    ]
    results = run_many(sources, limits or Limits(), workers, hidden)
    return [_verdict(p, r, s) for p, r, s in zip(plans, results, sentinels, strict=True)]


def _verdict(plan: Plan | None, result: RunResult, sentinel: str) -> Verdict:
    if plan is None:
        passed = result.ok and sentinel in result.stdout
        return Verdict(passed, False, result.status, None if passed else f"the program ended {result.status}")
    if not result.ok:  # it must end cleanly, as the old way asked: no pass for a program left hanging
        return Verdict(False, True, result.status, f"the program ended {result.status}")
    decision = decide(plan, result.stdout)
    return Verdict(decision.passed, True, result.status, decision.failed)


class CodeEnv(Environment):
    name = "code"
    reward_components = ("passed", "format")
    correctness = "passed"

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
            work_mb=int(options.get("work_mb", 64)),
        )
        self.workers = int(options.get("workers", 4))
        # a program that can read the problems file can look its answers up: it sees that folder empty
        extra = options.get("hide") or []
        if isinstance(extra, str) or not all(isinstance(p, str) for p in extra):
            raise ConfigError("config key 'env.options.hide': a list of folders the programs must not read")
        self.hidden = [str(options["path"]), *extra]
        for key, path in [("path", options["path"])] + [("hide", p) for p in extra]:
            if (why := unhideable(path)) is not None:
                raise ConfigError(f"config key 'env.options.{key}': {why}")
        self.eos_ids = end_of_turn_ids(tokenizer)

    def make_task(self, record: dict[str, Any], index: int) -> Task:
        ids = list(self.tok(prompt_text(record), add_special_tokens=False)["input_ids"])
        return Task(f"code:{record.get('task_id', index)}", ids, domain="code", meta={"record": record})

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return SamplingParams.simple(self.max_tokens, n, temperature, top_p, eos_token_ids=self.eos_ids)

    def run(self, records: Sequence[dict[str, Any]], completions: Sequence[str]) -> list[Verdict]:
        """Each completion's verdict on its record's tests (the programs run in parallel)."""
        return run_tests(records, completions, self.limits, self.workers, hidden=self.hidden)

    def score(
        self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]], scorer: ScoringModel | None = None
    ) -> list[list[Reward]]:
        flat = [
            (t, self.tok.decode(r.completion_ids, skip_special_tokens=True))
            for t, g in zip(tasks, rollouts, strict=True)
            for r in g
        ]
        passed = iter(v.passed for v in self.run([t.meta["record"] for t, _ in flat], [c for _, c in flat]))
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
        """The problems of `env.options.path`, with the number whose tests run the old way."""
        source = file_tasks(self, cfg.rl.seed, "problems")
        source.counts["tests_run_in_sandbox"] = sum(plan_tests(r) is None for r in source.records)
        return source
