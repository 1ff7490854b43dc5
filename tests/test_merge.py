"""Model merging (`nextrl merge`, through mergekit) checked against the methods' definitions, written out here
on the tensors of tiny random checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

pytest.importorskip("mergekit")

from nextrl.cli import app  # noqa: E402
from nextrl.errors import UsageError  # noqa: E402
from nextrl.model.merge import merge_models  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("ckpts")
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
    )  # fmt: skip
    paths = []
    for i in range(3):
        torch.manual_seed(i)
        LlamaForCausalLM(cfg).save_pretrained(root / f"m{i}")
        paths.append(root / f"m{i}")
    return paths


def weights(path):
    return {k: v.float() for k, v in load_file(path / "model.safetensors").items()}


def ties_reference(base, tvs, ws, density):
    """TIES by its definition: trim each task vector to its largest-magnitude `density` share, elect the sign of
    the weighted sum, average the agreeing entries (weighted)."""
    trimmed = []
    for tv in tvs:
        k = int(density * tv.numel())
        flat = tv.abs().flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.argsort(descending=True)[:k]] = True
        trimmed.append(tv * keep.reshape(tv.shape))
    sign = torch.sign(sum(w * t for w, t in zip(ws, trimmed, strict=True)))
    num = sum(w * t * (torch.sign(t) == sign) for w, t in zip(ws, trimmed, strict=True))
    den = sum(w * ((torch.sign(t) == sign) & (t != 0)) for w, t in zip(ws, trimmed, strict=True))
    return base + num / torch.where(den == 0, torch.ones_like(den), den)


def test_linear_and_task_arithmetic_follow_their_definitions(ckpts, tmp_path):
    m0, m1, m2 = (weights(p) for p in ckpts)
    lin = weights(merge_models(ckpts[1:], tmp_path / "lin", "linear", weights=[1.0, 3.0]))
    ta = weights(
        merge_models(ckpts[1:], tmp_path / "ta", "task_arithmetic", base=ckpts[0], weights=[0.5, 1.0])
    )
    for k in m0:
        torch.testing.assert_close(lin[k], (m1[k] + 3 * m2[k]) / 4, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            ta[k], m0[k] + 0.5 * (m1[k] - m0[k]) + (m2[k] - m0[k]), rtol=1e-5, atol=1e-6
        )


def test_ties_follows_its_definition(ckpts, tmp_path):
    m0, m1, m2 = (weights(p) for p in ckpts)
    got = weights(merge_models(ckpts[1:], tmp_path / "ties", "ties", base=ckpts[0], density=0.4))
    for k in m0:
        if m0[k].dim() < 2:  # norms: compare the matrices, where the trim has something to choose
            continue
        want = ties_reference(m0[k], [m1[k] - m0[k], m2[k] - m0[k]], [1.0, 1.0], 0.4)
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-6)


def test_dare_drops_and_rescales(ckpts, tmp_path):
    m0, m1 = weights(ckpts[0]), weights(ckpts[1])
    full = weights(merge_models(ckpts[1:2], tmp_path / "d1", "dare_linear", base=ckpts[0], density=1.0))
    half = weights(merge_models(ckpts[1:2], tmp_path / "d5", "dare_linear", base=ckpts[0], density=0.5))
    kept = total = 0
    for k in m0:
        tv = m1[k] - m0[k]
        torch.testing.assert_close(full[k], m1[k], rtol=1e-5, atol=1e-6)  # nothing dropped: the model itself
        delta = half[k] - m0[k]
        on = delta != 0
        # survivors share one scale per tensor, which keeps the task vector's L1 norm (mergekit's rescale;
        # in expectation the paper's 1/density)
        scale = delta[on] / tv[on]
        torch.testing.assert_close(scale, torch.full_like(scale, float(scale.mean())), rtol=1e-4, atol=1e-5)
        assert float(delta.abs().sum()) == pytest.approx(float(tv.abs().sum()), rel=1e-4)
        kept, total = kept + int(on.sum()), total + tv.numel()
    assert abs(kept / total - 0.5) < 4 * math.sqrt(0.25 / total) + 0.01


def test_bad_inputs_are_named(ckpts, tmp_path):
    with pytest.raises(UsageError, match="needs --base"):
        merge_models(ckpts[1:], tmp_path / "x", "ties")
    with pytest.raises(UsageError, match="not a Hugging Face model folder"):
        merge_models([tmp_path], tmp_path / "x", "linear")
    with pytest.raises(UsageError, match="is one of the models"):
        merge_models(ckpts[1:], ckpts[1], "linear")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(UsageError, match="not empty; nothing is overwritten"):
        merge_models(ckpts[1:], tmp_path / "full", "linear")
    result = CliRunner().invoke(app, ["merge", str(ckpts[1]), str(ckpts[2]), "--out", str(tmp_path / "c"),
                                      "--method", "nope"])  # fmt: skip
    assert result.exit_code == 2 and "unknown merge method 'nope'" in result.output


def test_cli_writes_a_loadable_checkpoint(ckpts, tmp_path):
    from transformers import AutoModelForCausalLM

    args = ["merge", str(ckpts[1]), str(ckpts[2]), "--base", str(ckpts[0]), "--method", "ties"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "cli"), "--density", "0.5"])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "cli")
    assert model.config.hidden_size == 16 and "merged" in result.output
    # these bare checkpoints have no tokenizer: the merge stands, the table says why it is missing
    assert "not evaluated:" in result.output and "no tokenizer" in result.output


@pytest.mark.slow  # micro_run: the micro main job, shared with test_main_job and test_report
def test_merge_ends_with_each_model_on_each_domain(micro_run, tmp_path):
    """Merging the run's RL policy and baseline ends with a table: both inputs and the merge, on the text domain
    (the run's held-out positions) and on math (a problem file), every model on the same problems."""
    import json

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n"
                                for i in range(4)))  # fmt: skip
    rl, baseline = micro_run / "models" / "rl", micro_run / "models" / "baseline"
    args = ["merge", str(rl), str(baseline), "--out", str(tmp_path / "m"), "--run", str(micro_run),
            "--set", "env.mixture={next_token: 1, math: 1}",
            "--set", f"env.options={{math: {{path: '{problems}', max_tokens: 4}}}}",
            "--set", "reward.by_env={math: correct}",
            "--samples", "2", "--k", "1", "--k", "2", "--problems", "4"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next((line for line in lines if line.startswith("model")), None)
    assert header is not None, result.output
    assert all(f"{d} pass@{k}" in header for d in ("next_token", "math") for k in (1, 2))
    at = lines.index(header)
    assert [line.split()[0] for line in lines[at + 1 : at + 4]] == ["rl", "baseline", "m"], result.output
    assert lines[at + 4] == "(next_token: 4 problems, math: 4 problems; 2 samples each)"
    table = json.loads((tmp_path / "m" / "eval.json").read_text())
    assert list(table["cells"]) == [str(rl), str(baseline), str(tmp_path / "m")]
    for row in table["cells"].values():
        assert set(row) == {"next_token", "math"}
        for res in row.values():
            assert res["problems"] == 4 and 0 <= res["pass@1"]["mean"] <= res["pass@2"]["mean"] <= 1


def test_evaluation_scores_without_the_model_scored_terms():
    """pass@k reads correctness only: the info_gain / likelihood terms of a run's reward (the gemma-cpu preset's
    prefix_match+0.1*info_gain) are left out, so that no scoring model is needed; what is left is unchanged."""
    from nextrl.config import load_config
    from nextrl.eval.domains import without_model_scored

    cfg = load_config(
        "micro",
        [
            "reward.spec=prefix_match+0.1*info_gain-0.2*format",
            "reward.by_env={next_token: info_gain, math: correct}",
        ],
    )
    out = without_model_scored(cfg)
    assert out.reward.spec == "prefix_match-0.2*format"
    assert out.reward.by_env == {"next_token": "prefix_match", "math": "correct"}
    assert cfg.reward.spec == "prefix_match+0.1*info_gain-0.2*format"  # the given config is not changed
    assert out.reward.ema_tau == cfg.reward.ema_tau and out.env == cfg.env


@pytest.mark.slow  # micro_run: the micro main job, shared with test_main_job and test_report
def test_eval_of_a_run_whose_reward_has_info_gain(micro_run):
    """`nextrl eval --run` of a run trained on prefix_match+0.1*info_gain (as gemma-cpu is) ends with its table;
    it stopped with 'reward terms ['info_gain'] need a scoring model' on the gemma-cpu run's models."""
    rl = micro_run / "models" / "rl"
    args = ["eval", str(rl), "--run", str(micro_run), "--set", "reward.spec=prefix_match+0.1*info_gain",
            "--samples", "2", "--k", "2", "--problems", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "next_token pass@2" in result.output and "(next_token: 3 problems; 2 samples each)" in result.output
    )
