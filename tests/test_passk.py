"""pass@k: the unbiased estimator against its definition (the share of k-subsets of the n samples holding a
right one), and `nextrl eval` end to end on a file of problems written here."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from nextrl.eval.passk import pass_at_k


@pytest.mark.parametrize(("n", "c"), [(5, 0), (5, 1), (5, 3), (6, 6), (8, 2)])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_pass_at_k_is_the_share_of_subsets_with_a_right_sample(n, c, k):
    if k > n:
        return
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    want = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(want)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


@pytest.mark.slow
def test_nextrl_eval_prints_pass_at_k(tmp_path):
    pytest.importorskip("math_verify")
    from nextrl.cli import app
    from nextrl.config import load_config
    from nextrl.model.pretrain import prepare_base

    base = prepare_base(load_config("micro", ["model.dtype=float32"]))
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) for i in range(6))
    )
    args = [
        "eval",
        str(base.path),
        "--set",
        "env.name=math",
        "--set",
        f"env.options={{path: '{path}', max_tokens: 4}}",
    ]
    result = CliRunner().invoke(app, [*args, "--set", "reward=correct", "--samples", "3", "--k", "1", "--k", "3",
                                      "--problems", "6"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "math pass@1" in result.output
        and "math pass@3" in result.output
        and "(math: 6 problems; 3 samples each)" in result.output
    )


def test_eval_refuses_k_above_the_samples(tmp_path):
    from nextrl.cli import app

    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--samples", "4", "--k", "8"])
    assert result.exit_code == 2 and "between 1 and --samples (4)" in result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--set", "env.name=math"])
    assert result.exit_code == 2 and "not a Hugging Face model folder" in result.output


def test_pass_at_k_counts_each_problem_once_across_epochs():
    """A source that starts a new epoch inside a batch must not give a problem twice: 5 problems, batches of 4."""
    from nextrl.engine.base import Rollout, SamplingParams
    from nextrl.env.base import Environment, Reward, Task
    from nextrl.env.records import RecordTasks
    from nextrl.eval.passk import evaluate_pass_at_k

    class Env(Environment):
        reward_components = ("correct",)

        def sampling_params(self, n, temperature, top_p):
            return SamplingParams.simple(1, n=n)

        def score(self, tasks, rollouts, scorer=None):
            return [[Reward(1.0, {"correct": float(t.meta["i"] % 2 == 0)}) for _ in g] for t, g in
                    zip(tasks, rollouts, strict=True)]  # fmt: skip

    class Engine:
        def generate(self, prompts, params):
            return [[Rollout(list(p), [1], [0.0], [1], "stop")] * params.n for p in prompts]

    records = [{"i": i} for i in range(5)]
    source = RecordTasks(records, lambda r, i: Task(f"p{i}", [1], meta={"i": r["i"]}), seed=0)
    res = evaluate_pass_at_k(Env(), Engine(), source, problems=100, n=2, ks=[1], batch=4)
    assert res["problems"] == 5 and res["pass@1"]["mean"] == pytest.approx(3 / 5)
