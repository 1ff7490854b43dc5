"""The code environment: HumanEval- and MBPP-style records scored by running their tests in the sandbox; an
early `exit(0)` does not pass; a short RL run on a file of problems written here."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from nextrl.config import load_config
from nextrl.engine.base import Rollout
from nextrl.env.sandbox import unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

PROBLEMS = [
    {
        "task_id": "H/0",
        "prompt": 'def add(a, b):\n    """Return a + b."""\n',
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    },
    {
        "task_id": 7,
        "text": "Write a function to double a number.",
        "test_list": ["assert double(2) == 4", "assert double(0) == 0"],
    },
]


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in PROBLEMS) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from nextrl.model.pretrain import prepare_base

    return prepare_base(load_config("micro", ["model.dtype=float32"])).tokenizer


def test_tests_decide_the_reward(problems, tokenizer):
    from nextrl.env import build_environment

    cfg = load_config(
        "micro", ["env.name=code", f"env.options={{path: '{problems}'}}", "reward=passed+0.5*format"]
    )
    env = build_environment(cfg, tokenizer)
    human, mbpp = (env.make_task(r, i) for i, r in enumerate(PROBLEMS))
    assert env.hidden == [str(problems)]  # the programs see the problems' folder empty

    def ro(task, text):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return Rollout(task.prompt_ids, ids, [0.0] * len(ids), [1] * len(ids), "eos", 0, [0])

    human_texts = ["    return a + b\n", "    return a - b\n", "    import sys\n    sys.exit(0)\n", ""]
    rewards = env.score([human], [[ro(human, t) for t in human_texts]])[0]
    assert [r.components["passed"] for r in rewards] == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]  # exit(0) skips the tests: no pass
    assert [r.components["format"] for r in rewards] == [0.0, 0.0, 0.0, -1.0]
    mbpp_texts = ["def double(x):\n    return 2 * x\n", "def double(x):\n    return x\n"]
    assert [r.total for r in env.score([mbpp], [[ro(mbpp, t) for t in mbpp_texts]])[0]] == [1.0, 0.0]


@pytest.mark.slow
def test_rl_on_code_problems_runs(problems, tmp_path):
    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import build_rl_trainer

    cfg = load_config(
        "micro",
        [
            "model.dtype=float32",
            "env.name=code",
            f"env.options={{path: '{problems}', max_tokens: 8, cpu_seconds: 2, wall_seconds: 4}}",
            "reward=passed+0.5*format",
            "rl.steps=2",
            "positions.per_step=2",
        ],
    )
    base = prepare_base(cfg)
    t = build_rl_trainer(
        cfg, copy.deepcopy(base.model), base.tokenizer, None, tmp_path, torch.device("cpu"), None
    )
    t.train()
    assert t.state.samples == 2 * 2 * cfg.sampling.group_size
    assert {g.task.domain for g in t.last_groups} == {"code"}
    assert all(set(r.components) == {"passed", "format"} for g in t.last_groups for r in g.rewards)
