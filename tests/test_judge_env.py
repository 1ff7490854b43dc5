"""Judged writing: the judge's score read from its log-probs over the rating tokens (checked against a plain
forward), the repetition and length guards, and a short RL run with the policy's frozen copy as judge."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from nextrl.config import load_config
from nextrl.env.judge import RATINGS, TEMPLATE, distinct_2

pytestmark = pytest.mark.slow


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Continue: the river", "Write about tea."]))
    return path


@pytest.fixture(scope="module")
def base():
    from nextrl.model.pretrain import prepare_base

    return prepare_base(load_config("micro", ["model.dtype=float32"]))


def trainer(base, prompts, out, extra=()):
    from nextrl.pipeline import build_rl_trainer

    overrides = [
        "model.dtype=float32",
        "env.name=judge",
        f"env.options={{path: '{prompts}', max_tokens: 8}}",
        "reward=judge+0.5*repetition+length",
        "rl.steps=2",
        "rl.positions_per_step=2",
        "sampling.temperature=1.2",
        *extra,
    ]
    cfg = load_config("micro", overrides)
    return build_rl_trainer(
        cfg, copy.deepcopy(base.model), base.tokenizer, None, out, torch.device("cpu"), None
    )


def test_the_judge_score_is_its_expected_rating(base, prompts, tmp_path):
    t = trainer(base, prompts, tmp_path)
    env = t.env
    got = env.ratings(["Continue: the river"], ["flows to the sea"], [None])[0]
    text = TEMPLATE.format(rubric=env.rubric, prompt="Continue: the river", response="flows to the sea")
    ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = base.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    p = torch.softmax(logits[env.rating_ids], -1)  # the five ratings, renormalised
    want = (float((p * torch.arange(1, 6)).sum()) - 1) / 4
    assert got == pytest.approx(want, abs=1e-5) and 0.0 <= got <= 1.0
    assert len(env.rating_ids) == len(RATINGS) == len(set(env.rating_ids))


def test_guards_against_repetition_and_empty_answers():
    assert distinct_2(["the", "cat", "sat", "on", "the", "mat"]) == 1.0
    assert distinct_2(["a", "b", "a", "b", "a", "b"]) == pytest.approx(2 / 5)
    assert distinct_2([]) == 1.0


def test_rl_with_a_self_judge_runs(base, prompts, tmp_path):
    t = trainer(base, prompts, tmp_path)
    judge_before = [p.clone() for p in t.env.judge.model.parameters()]
    t.train()
    assert {g.task.domain for g in t.last_groups} == {"writing"}
    comps = [r.components for g in t.last_groups for r in g.rewards]
    assert all(set(c) == {"judge", "repetition", "length"} for c in comps)
    # the judge is a frozen copy: training the policy does not move it
    assert all(torch.equal(a, b) for a, b in zip(judge_before, t.env.judge.model.parameters(), strict=True))
    assert any(
        not torch.equal(a, b) for a, b in zip(t.policy.parameters(), base.model.parameters(), strict=True)
    )
