"""The planner: the cost model against FLOPs and bytes computed by hand for a tiny model, the pipeline
simulation on toy pipelines with known answers, and `nextrl plan` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from nextrl.cli import app
from nextrl.plan.cost import Workload, step_cost
from nextrl.plan.planner import make_plan, nodes_for_deadline, steady_period
from nextrl.plan.profiles import Hardware, ModelShape, hardware, model
from nextrl.plan.simulate import pipeline_seconds

TINY = ModelShape("tiny", hidden=4, layers=1, heads=1, kv_heads=1, head_dim=4, intermediate=8, vocab=10)
UNIT = Hardware("unit", peak_flops=1000.0, hbm_bytes_per_s=100.0, memory_bytes=1e9, gpus_per_node=1)


def test_decode_flops_and_bytes_by_hand():
    # weights a token multiplies by: attention 4·4·2 + 4·4·2 = 64, MLP 3·4·8 = 96, unembedding 10·4 = 40
    assert TINY.matmul_params == 200 and TINY.params == 240
    w = Workload(positions=1, group_size=1, context=2, thought=1, answer=1, per_prefix=1, decode_batch=1)
    c = step_cost(TINY, w, UNIT, gpus=1)
    # two decoded tokens after a 2-token prompt attend to 3 and 4 keys: 2·160·2 + 2·40·2 + 2·1·4·7
    assert c.flops["decode"] == 2 * 160 * 2 + 2 * 40 * 2 + 2 * 1 * 4 * 7
    # each decode iteration reads the bf16 weights (480 B) and the sequence's KV cache: 16 B per token over
    # context + half the completion (3 tokens)
    assert c.bytes["decode"] == 2 * (2 * 240 + 16 * 3)
    # memory-bound here: each iteration takes its bytes over the usable bandwidth
    assert c.seconds["decode"] == pytest.approx(2 * (2 * 240 + 16 * 3) / (100.0 * 0.7))


def test_memory_per_gpu_by_hand():
    from nextrl.plan.cost import memory

    w = Workload(positions=4, group_size=2, context=8, thought=3, answer=1, per_prefix=2, decode_batch=5,
                 micro_batch=2, recompute=False)  # fmt: skip
    hw = Hardware("small", 1.0, 1.0, memory_bytes=2000.0, gpus_per_node=1)
    mem = memory(TINY, w, hw, learner_gpus=2)
    # KV: 16 B per token; a sequence holds its 4 completion tokens and, shared, 8 / (2·2) prompt tokens
    per_seq = 16 * 4 + 16 * 8 / 4
    assert mem.kv_cache == 5 * per_seq and mem.rollout == 2 * 240 + 5 * per_seq
    # learner: 16 B per parameter over 2 GPUs, the largest FSDP unit whole (the block: attention 2·16 + 2·16,
    # MLP 3·32 = 160 params, 8 B each), activations 34 · 2 sequences · 12 tokens · 4 hidden · 1 layer
    assert TINY.largest_unit_params == 160
    assert mem.activations == 34 * 2 * 12 * 4 and mem.learner == 16 * 240 / 2 + 8 * 160 + 34 * 2 * 12 * 4
    assert mem.max_decode_batch == int((2000 - 480) // per_seq) and not mem.fits  # 1920 + 3264 > 2000
    unshared = memory(
        TINY, Workload(context=8, thought=3, answer=1, share_prefix=False, decode_batch=5), hw, 1
    )
    assert unshared.kv_cache == 5 * 16 * (4 + 8)
    # checkpointing: each layer keeps its 2-byte input, one layer's 34 bytes are alive at a time
    kept = memory(TINY, Workload(context=8, thought=3, answer=1, micro_batch=2), hw, 1)
    assert kept.activations == (2 * 1 + 34) * 2 * 12 * 4


def test_prefix_sharing_saves_prefill_and_training_flops():
    on = step_cost(model("qwen3-0.6b"), Workload(), hardware("h100"), 8)
    off = step_cost(model("qwen3-0.6b"), Workload(share_prefix=False), hardware("h100"), 8)
    assert off.flops["prefill"] > 8 * on.flops["prefill"]  # G samples x positions per prefix
    assert off.flops["loss_forward"] > on.flops["loss_forward"] and off.flops["decode"] == on.flops["decode"]


def test_the_simulation_on_toy_pipelines():
    # synchronous: every step is generation then training
    assert pipeline_seconds(10, 2.0, 1.0, staleness=0) == pytest.approx(30.0)
    # balanced stages overlap fully once the pipeline is full
    assert pipeline_seconds(100, 1.0, 1.0, staleness=1) == pytest.approx(101.0)
    # an unbalanced pipeline is bounded by its slowest stage
    assert pipeline_seconds(100, 2.0, 1.0, staleness=1) == pytest.approx(201.0)
    assert pipeline_seconds(100, 1.0, 3.0, staleness=2) == pytest.approx(301.0)
    # the closed form of the steady state is the simulation's slope
    for gen, train, d, sync in [
        (1.0, 1.0, 1, 0.5),
        (2.0, 1.0, 1, 0.0),
        (1.0, 1.0, 3, 2.0),
        (3.0, 1.0, 0, 0.1),
    ]:
        slope = pipeline_seconds(400, gen, train, d, sync) - pipeline_seconds(300, gen, train, d, sync)
        assert slope / 100 == pytest.approx(steady_period(gen, train, d, sync))


def test_plan_is_consistent():
    p = make_plan(1e24, model("qwen3-1.7b"), hardware("h100"), 4)
    assert p["gpus"] == 32 and p["total_flops"] >= 1e24
    assert p["async"]["seconds"] <= p["sync"]["seconds"]  # overlap never loses
    assert sum(p["flops_share"].values()) == pytest.approx(1.0)
    assert p["without_prefix_sharing"]["slowdown"] > 1.0
    deadline = 0.6 * min(p["sync"]["seconds"], p["async"]["seconds"])  # faster than 4 nodes can do
    n = nodes_for_deadline(1e24, model("qwen3-1.7b"), hardware("h100"), deadline, max_nodes=256)
    assert n is not None and n > 4
    at = make_plan(1e24, model("qwen3-1.7b"), hardware("h100"), n, advise=False)
    assert min(at["sync"]["seconds"], at["async"]["seconds"]) <= deadline
    before = make_plan(1e24, model("qwen3-1.7b"), hardware("h100"), n - 1, advise=False)
    assert min(before["sync"]["seconds"], before["async"]["seconds"]) > deadline


def test_cli_prints_and_writes_the_plan(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", "--flops", "1e25", "--nodes", "8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "days" in result.output
        and "bottleneck" in result.output
        and "without prefix sharing" in result.output
    )
    plan = json.loads(out.read_text())
    assert plan["nodes"] == 8 and plan["memory"]["fits"] and "memory per GPU" in result.output
    bad = CliRunner().invoke(app, ["plan", "--model", "gpt-9"])
    assert bad.exit_code == 2 and "unknown model 'gpt-9'" in bad.output


def synthetic_runs(hw, truth):
    """Runs whose seconds the cost model itself gives under known numbers `truth` (log scale)."""
    import dataclasses

    from nextrl.plan.calibrate import MeasuredRun, predict, profile_with

    shape = ModelShape("tiny", 256, 4, 4, 4, 64, 688, 4096, tied=True)
    base = Workload(positions=16, group_size=8, context=128, thought=16, answer=1, per_prefix=4,
                    decode_batch=128, micro_batch=64, mean_thought=4.0)  # fmt: skip
    variants = [{}, {"context": 64}, {"context": 256}, {"group_size": 4}, {"group_size": 16},
                {"thought": 48, "mean_thought": 10.0}, {"per_prefix": 1}, {"share_prefix": False},
                {"lm_term": False}, {"model_scored": False}, {"trained_fraction": 0.3},
                {"share_prefix": False, "context": 256}]  # fmt: skip
    # (with prefix sharing the next-token term rides in the loss: only runs without sharing time an lm pass,
    # and leaving one out must leave another)
    h, e = profile_with(hw, truth)
    runs = []
    for i, v in enumerate(variants):
        run = MeasuredRun(f"r{i}", shape, dataclasses.replace(base, **v), 8, 1.0, "float32")
        runs.append(dataclasses.replace(run, seconds=predict(run, h, e)))
    return runs


def test_calibration_recovers_known_numbers_and_predicts_left_out_runs():
    """On runs made by the cost model with known efficiencies and overheads, the fit finds them again and every
    left-out run is predicted to within a fraction of a percent."""
    import numpy as np

    from nextrl.plan.calibrate import calibrate, render

    hw = Hardware("cpu", 90e9, 20e9, 24e9, gpus_per_node=1, link_bytes_per_s=20e9, layer_overhead_s=3e-4)
    truth = np.log([0.2, 0.05, 0.3, 0.5, 2e-3, 0.05])
    result = calibrate(synthetic_runs(hw, truth), hw)
    assert result["worst_error"] < 0.01
    fitted = result["fitted"]
    assert fitted["forward"] == pytest.approx(0.2, rel=0.05)
    assert fitted["train"] == pytest.approx(0.3, rel=0.05) and fitted["lm"] == pytest.approx(0.5, rel=0.05)
    assert fitted["step_overhead_s"] == pytest.approx(0.05, rel=0.05)
    assert "worst error" in render(result) and len(render(result).splitlines()) == 1 + 12 + 1


def test_calibration_reads_run_folders_and_names_bad_ones(tmp_path):
    from nextrl.config import dump_config, load_config
    from nextrl.plan.calibrate import read_run

    folder = tmp_path / "run"
    folder.mkdir()
    cfg = load_config("micro", ["sampling.group_size=4", "env.thought_tokens=6"])
    (folder / "config.yaml").write_text(dump_config(cfg))
    rows = [{"stage": "rl", "step": s, "step_seconds": 0.5, "thought/len_mean": 2.0 + s} for s in (1, 2, 3)]
    rows.append(
        {"stage": "rl", "step": 3, "step_seconds": 0.25, "thought/len_mean": 3.0}
    )  # resumed: last wins
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = read_run(folder)
    assert run.steps == 3 and run.seconds == pytest.approx(1.25)
    assert (
        run.workload.group_size == 4
        and run.workload.thought == 6
        and run.workload.mean_thought == pytest.approx(10 / 3)
    )
    assert run.shape.hidden == cfg.model.hidden_size and run.shape.layers == cfg.model.num_layers
    result = CliRunner().invoke(app, ["plan", "--calibrate", str(folder), str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder (no config.yaml)" in result.output
    result = CliRunner().invoke(app, ["plan", "--calibrate", str(folder)])
    assert result.exit_code == 2 and "at least 7 runs" in result.output


def test_prompt_geometry_of_an_index_by_hand():
    """Context 8 (starts on strides of 4): positions 10 and 12 of a document share the start 4, position 13
    starts at 8. Prompts 6, 8 and 5 tokens; units [10, 12] and [13]; shared prompts 8 and 5 tokens."""
    import numpy as np

    from nextrl.positions.index import PositionIndex

    index = PositionIndex(
        doc_tokens={"a": np.arange(20)}, doc_split={"a": "train"}, doc_id=["a", "a", "a"],
        position=[13, 10, 12], entropy=[1.0] * 3, bucket=["hard"] * 3, split=["train"] * 3,
    )  # fmt: skip
    g = index.prompt_geometry("train", context=8, per_unit=4)
    assert g == pytest.approx({"prompt_fill": (6 + 8 + 5) / 3 / 8, "unit_size": 1.5, "unit_fill": 6.5 / 8})
    # the planner's work: 3 positions in 2 units of 6.5 tokens on average, prompts of 19/3 tokens
    w = Workload(positions=3, group_size=1, context=8, thought=0, answer=1, per_prefix=4, model_scored=False,
                 lm_term=True, **g)  # fmt: skip
    from nextrl.plan.cost import step_work

    work = step_work(w)
    assert work["prefill"].tokens == pytest.approx(2 * 6.5)
    # the next-token term rides in the loss's forwards: the units' text once, every token projected
    assert work["lm"].tokens == 0 and work["loss"].logits == pytest.approx(2 * 6.5 + 3)
    assert work["loss"].tokens == pytest.approx(
        2 * 6.5 + 3 * 1
    )  # the prefix once, one answer token per sample
    import dataclasses

    plain = step_work(dataclasses.replace(w, share_prefix=False))
    assert plain["lm"].tokens == pytest.approx(2 * 6.5)  # a pass of its own over the units' text
    assert work["decode"].attended == pytest.approx(3 * (19 / 3 + 1))  # one answer token after each prompt


def test_empty_thought_samples_add_their_passes_by_hand():
    """k = 1 empty thought per group: the thought is sampled G − 1 times. An engine that takes lead tokens (ours)
    decodes </think> and the answer from the prompt's cache; one that does not (vLLM) prefills the closed prompts
    again for the answers and once more for the close token's log-prob. The next-token term adds each
    position's context + <think></think> + its token."""
    from nextrl.plan.cost import step_work

    base = dict(positions=2, group_size=3, context=8, thought=2, answer=1, per_prefix=1, model_scored=False)
    plain = step_work(Workload(**base, lm_term=False))
    empty = step_work(Workload(**base, lm_term=True, empty_thought_samples=1))
    apart = step_work(Workload(**base, lm_term=True, empty_thought_samples=1, engine_lead=False))
    assert plain["decode"].tokens == 2 * 3 * 3
    assert empty["decode"].tokens == apart["decode"].tokens == 2 * 2 * 3 + 2 * 1 * 1
    # each of 2 prompts of 8 tokens once; apart: then prompt + </think> twice (answers, log-prob)
    assert plain["prefill"].tokens == empty["prefill"].tokens == 2 * 8
    assert apart["prefill"].tokens == 2 * 8 + 2 * (2 * 8 + 2)
    # the LM term rides in the loss's forward (shared): each unit's text is the prefix the loss encodes (every
    # token projected), each position's </think> a node of the tree after its <think>, one target
    assert empty["lm"].tokens == 0
    assert empty["loss"].tokens == 2 * 8 + 2 * 1 + 2 * 3 * 3 and empty["loss"].logits == 2 * 8 + 2 + 2 * 3 * 3
    alone = step_work(Workload(**base, lm_term=True, share_prefix=False))  # or a sequence of its own
    assert alone["lm"].tokens == 2 * 8 + 2 * (8 + 2) and alone["lm"].logits == 2 * 8 + 2


def test_a_mixing_format_adds_the_policys_bare_pass_by_hand():
    """With the aside format's mixing (`env.mix_weight`) a model-scored reward reads the policy's bare context
    too (`ModelScoredRewards._mixed`): one more pass over each unit's prefix, one logit per position."""
    from nextrl.plan.cost import step_work

    base = dict(positions=2, group_size=3, context=8, thought=2, answer=1, per_prefix=1, lm_term=False)
    plain = step_work(Workload(**base))
    mixed = step_work(Workload(**base, mixed=True))
    assert plain["scoring"].tokens == 2 * 8 and plain["scoring"].logits == 2  # the EMA's bare pass
    assert mixed["scoring"].tokens == 2 * 2 * 8 and mixed["scoring"].logits == 2 * 2
    assert mixed["scoring"].attended == 2 * plain["scoring"].attended
    assert all(mixed[k] == plain[k] for k in ("prefill", "decode", "loss", "lm"))
    unscored = dict(base, model_scored=False)
    assert (
        step_work(Workload(**unscored, mixed=True))["scoring"] == step_work(Workload(**unscored))["scoring"]
    )


def test_this_machine_is_measured_and_one_device_has_no_async_mode():
    result = CliRunner().invoke(app, ["plan", "--hardware", "this-machine", "--model", "qwen3-0.6b",
                                      "--flops", "1e17", "--nodes", "1", "--positions", "16"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "this-machine (cpu, " in result.output and "async: needs at least 2 GPUs" in result.output
    from nextrl.plan.machine import measure_bandwidth, measure_layer_overhead

    assert measure_bandwidth(torch.device("cpu"), megabytes=16) > 1e8  # bytes/s: any machine copies faster
    assert 0 <= measure_layer_overhead(torch.device("cpu"), repeats=5) < 0.1
