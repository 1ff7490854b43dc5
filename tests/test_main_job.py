"""Tiny real runs of the main job (micro preset) and of resume; the CPU cost is seconds, not minutes."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from nextrl.cli import app
from nextrl.config import load_config
from nextrl.engine import TorchSampler
from nextrl.env import NextTokenEnv
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import RunFolderError, run, select_stage
from nextrl.trainer.rl import RLTrainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "micro"
    result = CliRunner().invoke(app, ["run", "--preset", "micro", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_main_job_outputs(micro_run):
    out, output = micro_run
    for name in ("summary.json", "metrics.jsonl", "config.yaml", "report.html", "index/positions.parquet"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
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
    # The baseline gets the RL run's FLOPs, to within one baseline step.
    assert s["flops"]["rl"] > 0
    assert s["flops"]["rl"] == pytest.approx(sum(s["flops"]["rl_breakdown"].values()))
    step = s["flops"]["baseline"] / s["steps"]["baseline"]
    assert abs(s["flops"]["baseline"] - s["flops"]["rl"]) <= step / 2 + 1e-6
    assert s["wall_seconds"] >= sum(s["stage_seconds"].values()) - 1e-6
    assert s["tokens_per_second"]["rl"] > 0
    v = s["verdict"]
    assert v["rl_beats_baseline"] == (v["rl"] > v["baseline"])
    assert ("did not beat" in v["text"]) != v["rl_beats_baseline"]
    rl_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rl_rows if r["stage"] == "rl"]
    assert [r["step"] for r in rl_rows] == list(range(1, cfg.rl.steps + 1))
    assert rl_rows[-1]["flops/total"] == pytest.approx(s["flops"]["rl"])
    html = (out / "report.html").read_text()
    assert v["text"].split(":")[0] in html
    assert "RL" in output and "report:" in output
    # The trained policy is a plain Hugging Face model folder.
    model = AutoModelForCausalLM.from_pretrained(out / "models" / "rl")
    assert model.config.vocab_size == s["base_model"]["vocab_size"]


def test_run_folder_is_never_overwritten(micro_run):
    out, _ = micro_run
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
    env = NextTokenEnv(cfg.env, base.tokenizer)
    engine = TorchSampler(
        policy, base.tokenizer.pad_token_id, batch_size=64, autocast_dtype=None, seed=cfg.rl.seed
    )
    return RLTrainer(cfg, policy, base.tokenizer, index, env, engine, out, torch.device("cpu"), None)


def test_resumed_rl_equals_uninterrupted(tmp_path):
    # temperature 1.2 and 8 positions a step so that groups carry signal and the weights really move
    cfg = load_config(
        "micro",
        [
            "rl.steps=4",
            "rl.checkpoint_every=2",
            "sampling.temperature=1.2",
            "rl.positions_per_step=8",
            "model.dtype=float32",
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
