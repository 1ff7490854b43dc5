"""Tiny real runs of the main job (micro preset) and of resume; the CPU cost is seconds, not minutes."""

import copy
import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from nextrl.cli import app
from nextrl.config import load_config
from nextrl.errors import RunFolderError
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import build_rl_trainer, run, select_stage
from nextrl.summary import RunSummary
from nextrl.trainer.step_account import FLOP_STAGES

pytestmark = pytest.mark.slow


def test_main_job_outputs(micro_run):  # micro_run: tests/conftest.py, shared with test_report.py
    out = micro_run
    for name in ("summary.json", "metrics.jsonl", "config.yaml", "report.html", "index/positions.parquet"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard" / "rl").glob("events.out.tfevents.*"))
    assert (out / "rl" / "checkpoints" / "latest").is_file()
    s = json.loads((out / "summary.json").read_text())
    cfg = load_config("micro")
    assert s["models"] == ["base", "baseline", "rl"]
    assert s["steps"]["rl"] == cfg.rl.steps
    for model in s["models"]:
        for mode in ("standard", "with_thought"):
            acc = s["accuracy"][model][mode]
            assert set(acc) == set(s["eval_counts"])
            assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert s["eval_counts"]["all"] == sum(v for k, v in s["eval_counts"].items() if k != "all")
    assert s["eval_counts"]["all"] <= cfg.eval.positions
    assert all(isinstance(n, int) and n > 0 for n in s["selection"]["skipped"].values())  # by reason
    # The baseline gets the RL run's FLOPs, to within one baseline step.
    assert s["flops"]["rl"] > 0
    step = s["flops"]["baseline"] / s["steps"]["baseline"]
    assert abs(s["flops"]["baseline"] - s["flops"]["rl"]) <= step / 2 + 1e-6
    assert s["wall_seconds"] >= sum(s["stage_seconds"].values()) - 1e-6
    assert s["tokens_per_second"]["rl"] > 0
    assert set(s["flops"]["rl_breakdown"]) == set(FLOP_STAGES)
    # the RL stage's seconds by pass: every step's stages plus what none claims, within the stage's wall time
    secs = s["rl_summary"]["stage_seconds"]
    assert {"prefill", "decode", "loss_forward", "loss_backward", "optimizer", "other"} <= set(secs)
    assert 0 < sum(secs.values()) <= s["stage_seconds"]["rl"]
    row = (out / "report.html").read_text().split("rl: decode", 1)[1].split("</tr>", 1)[0]
    assert f"<td>{secs['decode']:.1f}</td>" in row  # the report's compute table shows them beside the FLOPs
    html = (out / "report.html").read_text()
    assert "rl: reference" not in html  # a pass that did not run (no KL) is left out of the table
    lm_inside = cfg.rl.lm_coef > 0 and cfg.sharing.enabled
    assert ("rl: lm" not in html and "inside the loss passes" in html) == lm_inside
    assert s["rl_summary"]["reward"] == "prefix_match" and s["rl_summary"]["loss_tokens"] == "all"
    assert set(s["information_gain"]) == set(s["models"]) and s["information_gain"]["rl"]["n"] > 0
    assert 0 < s["rl_summary"]["mfu_training"] < 1 and 0 < s["rl_summary"]["mfu_rollout"] < 1
    v = s["verdict"]
    assert ("did not beat" in v["text"]) != v["rl_beats_baseline"]
    assert v["ci_low"] <= v["diff"] <= v["ci_high"] and f"{v['p_value']:.2g}" in v["text"]
    rl = s["rl_summary"]
    assert 0.0 <= rl["signal_fraction"] <= 1.0
    for m in s["models"]:  # per bucket, with standard errors and the paired thought-vs-standard test
        assert set(s["thought_length"][m]) == set(s["eval_counts"])
        assert set(s["accuracy_stderr"][m]["standard"]) == set(s["eval_counts"])
        assert 0.0 <= s["thought_vs_standard"][m]["all"]["p_value"] <= 1.0
    outcomes = pq.read_table(out / "eval" / "outcomes.parquet").to_pydict()
    n = s["eval_counts"]["all"]
    assert len(outcomes["correct"]) == len(s["models"]) * 2 * n
    rl_std = [
        c
        for c, m, md in zip(outcomes["correct"], outcomes["model"], outcomes["mode"], strict=True)
        if m == "rl" and md == "standard"
    ]
    assert sum(rl_std) / n == pytest.approx(s["accuracy"]["rl"]["standard"]["all"])

    # the verdict, recomputed from the per-position outcomes: McNemar's exact test written out (a two-sided
    # binomial test at 1/2 on the positions where exactly one model is right)
    def column(model, mode):
        rows = zip(outcomes["correct"], outcomes["model"], outcomes["mode"], strict=True)
        return [c for c, m, md in rows if m == model and md == mode]

    a, b = column("rl", v["rl_mode"]), column("baseline", v["baseline_mode"])
    a_only = sum(x and not y for x, y in zip(a, b, strict=True))
    b_only = sum(y and not x for x, y in zip(a, b, strict=True))
    k, m = min(a_only, b_only), a_only + b_only
    want_p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    assert v["p_value"] == pytest.approx(want_p)
    assert v["diff"] == pytest.approx((a_only - b_only) / n)
    assert v["rl_beats_baseline"] == (a_only > b_only and want_p < 0.01)
    rl_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rl_rows if r["stage"] == "rl"]
    assert [r["step"] for r in rl_rows] == list(range(1, cfg.rl.steps + 1))
    with_signal = sum(r["groups/signal_fraction"] * r["groups/drawn"] for r in rl_rows)
    assert with_signal == pytest.approx(rl["groups_with_signal"])
    assert rl_rows[-1]["flops/total"] == pytest.approx(s["flops"]["rl"])
    html = (out / "report.html").read_text()
    assert "information gain" in html and "prefix_match" in html
    assert v["text"].split(":")[0] in html
    # The trained policy is a plain Hugging Face model folder.
    model = AutoModelForCausalLM.from_pretrained(out / "models" / "rl")
    assert model.config.vocab_size == s["base_model"]["vocab_size"]


def test_run_folder_is_never_overwritten(micro_run):
    out = micro_run
    with pytest.raises(RunFolderError, match="--resume"):
        run(load_config("micro"), out)
    with pytest.raises(RunFolderError, match="config differs"):
        run(load_config("micro", ["rl.lr=0.5"]), out, resume=True)


def test_cli_reports_config_errors():
    result = CliRunner().invoke(app, ["run", "--preset", "micro", "--set", "rl.stepz=3"])
    assert result.exit_code == 2
    assert "rl.stepz" in result.output


def _trainer(cfg, base, index, out):
    policy = copy.deepcopy(base.model)
    return build_rl_trainer(cfg, policy, base.tokenizer, index, out, torch.device("cpu"), None)


def test_resumed_rl_equals_uninterrupted(tmp_path):
    # temperature 1.2, 8 positions a step and a dense reward term so that groups carry signal and the weights
    # really move; empty-thought samples, the EMA baseline and the next-token term are all resumed too
    cfg = load_config(
        "micro",
        [
            "rl.steps=4",
            "rl.checkpoint_every=2",
            "sampling.temperature=1.2",
            "positions.per_step=8",
            "model.dtype=float32",
            "reward=prefix_match+0.1*info_gain",
            "rl.empty_thought_samples=1",
            "rl.lm_coef=0.5",
        ],
    )
    base = prepare_base(cfg)
    index = select_stage(cfg, base, tmp_path, torch.device("cpu"), None)

    straight = _trainer(cfg, base, index, tmp_path / "a")
    straight.train()
    assert straight.state.groups_kept > 0

    first = _trainer(cfg, base, index, tmp_path / "b")
    first.train(stop_after=2)
    assert first.state.step == 2
    second = _trainer(cfg, base, index, tmp_path / "b")  # a fresh process would build exactly this
    assert second.maybe_resume()
    assert second.state.step == 2
    second.train()

    assert second.state.step == straight.state.step == 4
    assert second.state.reward_history == straight.state.reward_history
    for (name, a), b in zip(
        straight.policy.state_dict().items(), second.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    moved = any(
        not torch.equal(a, b)
        for a, b in zip(straight.policy.state_dict().values(), base.model.state_dict().values(), strict=True)
    )
    assert moved


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("lm_coef", [0.0, 0.5])
def test_shared_and_plain_loss_give_the_same_update(tmp_path, lm_coef):
    # The same rollouts and advantages through the prefix-tree loss and the plain loss: the same gradient
    # (fp32; compared before the optimizer step, since Adam's first step is ~sign(g) and would amplify float
    # noise in near-zero entries). Positions come in stripes, so the trees share document prefixes too. With
    # the next-token term, the shared path trains it inside the loss's forwards (its sequences ride in the
    # rollouts' prompt trees, micro-batches of 16 cut the batch), the plain path in passes of its own.
    common = ["model.dtype=float32", f"rl.lm_coef={lm_coef}", "rl.micro_batch_size=16"]
    cfg = load_config("micro", [*common, "positions.per_step=8"])
    base = prepare_base(cfg)
    index = select_stage(cfg, base, tmp_path, torch.device("cpu"), None)
    shared = _trainer(cfg, base, index, tmp_path / "s")
    tasks = shared.source.take(8, 0)
    rollouts = [r for g in shared.engine.generate([t.prompt_ids for t in tasks], shared.params) for r in g]
    advantages = [((i * 7) % 5 - 2) / 2 for i in range(len(rollouts))]
    lm_seqs = shared.env.lm_sequences(tasks) if lm_coef else None
    lm_empty = shared.env.empty_thought_targets(tasks) if lm_coef else None
    plain = _trainer(load_config("micro", [*common, "sharing.enabled=false"]), base, index, tmp_path / "p")
    for t in (shared, plain):
        t.learner.optimizer.step = lambda: None  # keep the accumulated gradients to compare them
    m_shared, m_plain = (
        shared.learner.update(rollouts, advantages, lm_seqs, lm_empty),
        plain.learner.update(rollouts, advantages, lm_seqs, lm_empty),
    )
    terms = ["loss"] + (["lm_loss", "lm_loss_empty_thought"] if lm_coef else [])
    for k in terms:
        assert m_shared[k] == pytest.approx(m_plain[k], rel=1e-4, abs=1e-6), k
    if lm_coef:
        assert len(shared.learner.plan_chunks(rollouts, lm_seqs + lm_empty[0])) > 1
        assert plain.learner.account.work["lm"].tokens > 0 and "lm" not in shared.learner.account.work
    loss_tokens = [t.learner.account.work["loss"].tokens for t in (shared, plain)]
    assert loss_tokens[0] < loss_tokens[1]  # the prefixes really were shared
    pairs = zip(shared.policy.named_parameters(), plain.policy.parameters(), strict=True)
    for (name, a), b in pairs:
        assert a.grad is not None and b.grad is not None, name
        assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-9, name


@pytest.mark.parametrize("reward", ["info_gain", "likelihood+format"])
def test_main_job_with_verifier_free_rewards(tmp_path, reward):
    out = tmp_path / "run"
    args = ["run", "--preset", "micro", "--out", str(out), "--set", f"reward={reward}"]
    args += ["--set", "baseline.enabled=false", "--set", "rl.dynamic_sampling=true"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Verdict: no verdict" in result.output and "report:" in result.output  # the terminal table
    s = json.loads((out / "summary.json").read_text())
    assert "verdict" not in s and RunSummary.load(out / "summary.json").verdict is None  # no baseline
    rl = s["rl_summary"]
    assert (rl["reward"], rl["advantages"], rl["loss_tokens"]) == (reward, "rlp", "thought")
    assert s["flops"]["rl_breakdown"]["scoring"] > 0  # the teacher-forced reward passes are counted
    assert s["information_gain"]["rl"]["n"] > 0
    assert reward in (out / "report.html").read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    names = {k for r in rows if r["stage"] == "rl" for k in r}
    assert {"reward/likelihood" if "likelihood" in reward else "reward/info_gain", "groups/drawn"} <= names
