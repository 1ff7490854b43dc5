"""The math environment: gold answers (GSM8K's ####, MATH's answer or boxed solution), equivalence through
math-verify, unparseable golds skipped and counted, and a short RL run on a file of problems written here."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from nextrl.config import load_config
from nextrl.engine.base import Rollout
from nextrl.env.math import gold_answer, last_boxed

pytest.importorskip("math_verify")

PROBLEMS = [
    {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}
    for a, b in [(2, 3), (10, 4), (7, 7), (1, 9), (12, 30), (5, 6)]
] + [
    {"problem": "Simplify 2/4.", "answer": "\\frac{1}{2}"},
    {"problem": "What is 3 squared?", "solution": "It is $3^2 = \\boxed{9}$."},
    {"question": "Unanswerable", "answer": "#### "},  # no gold: skipped, counted
]


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in PROBLEMS) + "\n")
    return path


def test_gold_answers_and_boxes():
    assert gold_answer(PROBLEMS[0]) == "5"
    assert gold_answer({"answer": "so #### 1,234"}) == "1234"
    assert gold_answer(PROBLEMS[6]) == "\\frac{1}{2}"
    assert gold_answer(PROBLEMS[7]) == "9"
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("none") is None


def env_and_source(problems, tokenizer):
    from nextrl.env import build_environment

    cfg = load_config(
        "micro", ["env.name=math", f"env.options={{path: '{problems}'}}", "reward=correct+0.5*format"]
    )
    env = build_environment(cfg, tokenizer)
    return cfg, env, env.task_source(cfg)


def test_scoring_by_equivalence(problems):
    from nextrl.model.pretrain import prepare_base

    tok = prepare_base(load_config("micro", ["model.dtype=float32"])).tokenizer
    cfg, env, source = env_and_source(problems, tok)
    assert source.stats() == {"given": 0, "problems": 8, "skipped_gold": 1}
    half = next(
        t
        for t in (source.env.make_task(r, i) for i, r in enumerate(source.records))
        if "\\frac" in t.meta["gold"]
    )

    def ro(text):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return Rollout(half.prompt_ids, ids, [0.0] * len(ids), [1] * len(ids), "eos", 0, [0])

    texts = ["so \\boxed{0.5}", "\\boxed{1/2}", "\\boxed{\\frac{2}{4}}", "\\boxed{0.25}", "no box, 1/2"]
    rewards = env.score([half], [[ro(t) for t in texts]])[0]
    assert [r.components["correct"] for r in rewards] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [r.components["format"] for r in rewards] == [0.0, 0.0, 0.0, 0.0, -1.0]
    assert [r.total for r in rewards] == [1.0, 1.0, 1.0, 0.0, -0.5]


@pytest.mark.slow
def test_rl_on_math_problems_runs_and_resumes(problems, tmp_path):
    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import build_rl_trainer

    overrides = [
        "model.dtype=float32",
        "env.name=math",
        f"env.options={{path: '{problems}', max_tokens: 6}}",
        "reward=correct+0.5*format",
        "rl.steps=3",
        "rl.checkpoint_every=1",
        "positions.per_step=3",
        "sampling.temperature=1.5",
    ]
    cfg = load_config("micro", overrides)
    base = prepare_base(cfg)

    def make(out):
        return build_rl_trainer(
            cfg, copy.deepcopy(base.model), base.tokenizer, None, out, torch.device("cpu"), None
        )

    a = make(tmp_path / "a")
    a.train()
    assert type(a.source).__name__ == "MathTasks" and a.state.samples == 3 * 3 * cfg.sampling.group_size
    assert {g.task.domain for g in a.last_groups} == {"math"}
    b = make(tmp_path / "b")
    b.train(stop_after=2)
    c = make(tmp_path / "b")
    assert c.maybe_resume() and c.source.cursor == b.source.cursor
    c.train()
    assert c.state.reward_history == a.state.reward_history


@pytest.mark.slow
def test_a_mixture_of_text_and_math_trains_both_and_resumes(problems, tmp_path):
    """env.mixture={next_token: 1, math: 1}: every step holds both domains in the configured shares, each
    sampled with its own plan and scored with its own reward; per-domain metrics are logged; resume is exact."""
    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import build_rl_trainer, select_stage
    from nextrl.utils.metrics import MetricsLogger

    overrides = [
        "model.dtype=float32",
        "env.mixture={next_token: 1, math: 1}",
        f"env.options={{math: {{path: '{problems}', max_tokens: 6}}}}",
        "reward.by_env={math: correct+0.5*format}",
        "rl.steps=2",
        "rl.checkpoint_every=1",
        "positions.per_step=8",
        "positions.per_prefix=2",
        "sampling.temperature=1.5",
        "rl.empty_thought_samples=1",  # only the text environment has a thought to close
        "env.mixture_adapt={strength: 1, rate: 0.5, min_share: 0.2}",
    ]
    cfg = load_config("micro", overrides)
    base = prepare_base(cfg)
    index = select_stage(cfg, base, tmp_path / "idx", torch.device("cpu"), None)

    def make(out, logger=None):
        policy = copy.deepcopy(base.model)
        return build_rl_trainer(cfg, policy, base.tokenizer, index, out, torch.device("cpu"), None, logger)

    logger = MetricsLogger(tmp_path / "a")
    a = make(tmp_path / "a", logger)
    a.train()
    logger.close()
    groups = a.last_groups
    assert {g.task.domain for g in groups} == {"text", "math"}
    for g in groups:
        assert g.empty_samples == (0 if g.task.domain == "math" else 1)
        if g.task.domain == "math":
            assert set(g.rewards[0].components) == {"correct", "format"}
            assert len(g.rollouts[0].phase_starts) == 1  # math samples one phase; text thinks, then answers
        else:
            assert "prefix_match" in g.rewards[0].components and len(g.rollouts[0].phase_starts) == 2
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rows if r["stage"] == "rl"]
    assert all({"domain/text/reward", "domain/math/reward"} <= set(r) for r in rl_rows)
    # accuracy per domain: math's `correct`, text's `prefix_match`, recomputed from the last step's groups
    for d, comp in (("math", "correct"), ("text", "prefix_match")):
        samples = [r.components[comp] for g in groups if g.task.domain == d for r in g.rewards]
        assert rl_rows[-1][f"domain/{d}/accuracy"] == pytest.approx(
            sum(x >= 1 for x in samples) / len(samples)
        )
    # the first step draws at the configured 1:1 (every environment starts with full signal credit); then the
    # shares follow each environment's signal, never below min_share
    stats = a.source.stats()
    assert rl_rows[0]["positions/math/share"] == 0.5
    assert min(stats["math"]["share"], stats["next_token"]["share"]) >= 0.2
    assert stats["math"]["share"] + stats["next_token"]["share"] == pytest.approx(1.0)
    assert "math: correct+0.5*format" in a.summary()["reward"]
    b = make(tmp_path / "b")
    b.train(stop_after=1)
    c = make(tmp_path / "b")
    assert c.maybe_resume()
    c.train()
    assert c.state.reward_history == a.state.reward_history


def test_latex_golds_are_read_whole():
    """`2\\sqrt{3}` is not 2: unboxed LaTeX golds are boxed before math-verify reads them."""
    from math_verify import parse, verify

    from nextrl.env.math import gold_latex

    gold = parse(gold_latex("2\\sqrt{3}"))
    assert verify(gold, parse("\\boxed{2\\sqrt{3}}")) and not verify(gold, parse("\\boxed{2}"))
    pair = parse(gold_latex("\\left( 3, \\frac{\\pi}{2} \\right)"))
    assert verify(pair, parse("\\boxed{(3, \\frac{\\pi}{2})}")) and not verify(pair, parse("\\boxed{3}"))


def test_reward_by_env_names_must_be_in_the_mixture(problems):
    from nextrl.config import ConfigError
    from nextrl.env import build_environment

    cfg = load_config("micro", ["env.mixture={next_token: 1, math: 1}", "reward.by_env={maths: correct}"])
    with pytest.raises(ConfigError, match=r"reward.by_env.*\['maths'\]"):
        build_environment(cfg, None)


def test_mixture_errors_name_the_mixtures_keys(problems):
    from nextrl.config import ConfigError
    from nextrl.env import build_environment
    from nextrl.model.pretrain import prepare_base

    tok = prepare_base(load_config("micro", ["model.dtype=float32"])).tokenizer
    no_path = load_config("micro", ["env.mixture={next_token: 1, math: 1}", "reward.by_env={math: correct}"])
    with pytest.raises(
        ConfigError, match=r"config key 'env.options.math.path'.*environment 'math' of env.mixture"
    ):
        build_environment(no_path, tok)
    options = f"env.options={{math: {{path: '{problems}'}}}}"
    no_spec = load_config("micro", ["env.mixture={next_token: 1, math: 1}", options])
    with pytest.raises(ConfigError, match=r"config key 'reward.by_env.math'.*unknown term 'prefix_match'"):
        build_environment(no_spec, tok)
