"""The planner: the cost model against FLOPs and bytes computed by hand for a tiny model, the pipeline
simulation on toy pipelines with known answers, and `nextrl plan` end to end."""

from __future__ import annotations

import json

import pytest
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
    assert json.loads(out.read_text())["nodes"] == 8
    bad = CliRunner().invoke(app, ["plan", "--model", "gpt-9"])
    assert bad.exit_code == 2 and "unknown model 'gpt-9'" in bad.output
