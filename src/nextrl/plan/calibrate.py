"""Calibration: does the planner predict the wall-clock of runs that really happened?

Each measured run folder (config.yaml and metrics.jsonl; `nextrl run` or `bench/calibration_runs.py` write
them) gives a model shape and a workload, read from its config, and the RL stage's measured seconds (the sum of
its steps' `step_seconds`). The workload's mean thought length is the one the run's policy really generated
(`thought/len_mean`), and so is the share of groups the loss trained on (`groups/kept`): a plan's thought
length and signal are inputs, and a policy that closes its thoughts early decodes fewer tokens than its budget.

The work of each stage is what the run's own counters recorded (`flops/<stage>` in metrics.jsonl, the numbers
MFU comes from), so the calibration tests the planner's *time* model; the table's last column repeats the
prediction (also left-out) with the work the planner's model derives from the config and the run's prompt
geometry, which is what a plan has. The planner's cost model
(`nextrl.plan.cost.step_cost`) on "this machine" (`nextrl.plan.machine`: measured
peak, bandwidth and per-layer call overhead) leaves six numbers open: the share of the peak reached by
forward passes (prefill and scoring), by decode, by the RL loss (prefix trees and branches) and by the
next-token term (plain sequences), and the fixed seconds of a decode iteration and of a step. They are fitted by least squares on log(predicted / measured). Each run's prediction is made
*leave-one-out*, with the numbers fitted on the other runs only, so the table says how well the model
predicts a run it has not seen; the numbers fitted on all runs are returned for planning on this machine."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nextrl.config import load_config
from nextrl.errors import UsageError
from nextrl.plan.cost import Efficiency, Workload, step_cost
from nextrl.plan.profiles import Hardware, ModelShape

MODEL_SCORED = ("info_gain", "likelihood")
COUNTED = ("prefill", "decode", "scoring", "loss_forward", "loss_backward", "lm")  # stages runs log FLOPs of
PARAMS = ("forward", "decode", "train", "lm", "iteration_overhead_s", "step_overhead_s")
START = np.log([0.3, 0.3, 0.3, 0.3, 1e-3, 1e-2])
LOWER = np.log([1e-4, 1e-4, 1e-4, 1e-4, 1e-7, 1e-6])
UPPER = np.log([1.0, 1.0, 1.0, 1.0, 1.0, 100.0])
MIN_RUNS = len(PARAMS) + 1  # each run is predicted from the others: those must determine every number


@dataclass(frozen=True)
class MeasuredRun:
    name: str
    shape: ModelShape
    workload: Workload
    steps: int
    seconds: float  # the RL stage's steps, measured
    dtype: str  # the run's matmul dtype (bfloat16 or float32)
    flops: dict[str, float] | None = None  # FLOPs per step and stage the run's counters recorded (mean)


def _rl_rows(path: Path) -> list[dict]:
    rows: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and r.get("stage") == "rl" and isinstance(r.get("step"), int):
            rows[r["step"]] = r  # a resumed run logs some steps twice: the later line wins
    return [rows[k] for k in sorted(rows)]


def _shape(name: str, m, vocab: int) -> ModelShape:
    """The planner's shape of a run's model (`model` section of its config; embeddings tied)."""
    return ModelShape(
        name=name,
        hidden=m.hidden_size,
        layers=m.num_layers,
        heads=m.num_heads,
        kv_heads=m.num_kv_heads,
        head_dim=m.hidden_size // m.num_heads,
        intermediate=m.intermediate_size,
        vocab=vocab,
        tied=True,
    )


def read_run(
    folder: str | Path, vocab: int | None = None, geometry: dict[str, float] | None = None
) -> MeasuredRun:
    """A run folder as the planner sees it: shape and workload from its config, seconds from its metrics,
    and the prompts' geometry (`PositionIndex.prompt_geometry` of its index) when given."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise UsageError(f"--calibrate {folder}: not a run folder (no config.yaml)")
    if not (folder / "metrics.jsonl").is_file():
        raise UsageError(f"--calibrate {folder}: no metrics.jsonl (the run never started)")
    cfg = load_config(str(folder / "config.yaml"))
    rows = [r for r in _rl_rows(folder / "metrics.jsonl") if "step_seconds" in r]
    if not rows:
        raise UsageError(f"--calibrate {folder}: no RL step with step_seconds in metrics.jsonl")
    m = cfg.model
    shape = _shape(folder.name, m, vocab or cfg.tokenizer.vocab_size)
    thought = [r["thought/len_mean"] for r in rows if "thought/len_mean" in r]
    trained = [r["groups/kept"] / r["groups/drawn"] for r in rows if r.get("groups/drawn")]
    terms = str(cfg.reward.spec)
    # every model-scored term reads one true token: the engine scores it (`NextTokenEnv.score_plan`)
    one_token = all(
        (cfg.reward.info_gain_tokens if t == "info_gain" else cfg.reward.likelihood_tokens) == 1
        for t in MODEL_SCORED
        if t in terms
    )
    w = Workload(
        positions=cfg.positions.per_step,
        group_size=cfg.sampling.group_size,
        context=cfg.selection.context,
        thought=cfg.env.thought_tokens,
        answer=cfg.env.answer_tokens,
        per_prefix=cfg.positions.per_prefix,
        share_prefix=cfg.sharing.enabled,
        model_scored=any(t in terms for t in MODEL_SCORED),
        mixed=cfg.env.mix_weight is not None,
        lm_term=cfg.rl.lm_coef > 0,
        updates_per_batch=cfg.rl.updates_per_batch,
        decode_batch=cfg.sampling.batch_size,
        micro_batch=cfg.rl.micro_batch_size,
        mean_thought=float(np.mean(thought)) if thought else None,
        trained_fraction=float(np.mean(trained)) if trained else 1.0,
        empty_thought_samples=cfg.rl.empty_thought_samples,
        engine_lead=cfg.sampling.engine == "torch",
        engine_scores=cfg.sampling.engine == "torch" and one_token,
        **(geometry or {}),
    )
    dtype = "bfloat16" if m.dtype == "bfloat16" else "float32" if m.dtype == "float32" else "auto"
    counted = {
        k: float(np.mean([r.get(f"flops/{k}", 0.0) for r in rows]))
        for k in COUNTED
        if f"flops/{k}" in rows[0]
    }
    seconds = sum(r["step_seconds"] for r in rows)
    return MeasuredRun(folder.name, shape, w, len(rows), seconds, dtype, counted or None)


def profile_with(hw: Hardware, x: np.ndarray) -> tuple[Hardware, Efficiency]:
    """The hardware and efficiencies the fitted numbers `x` (log scale, in `PARAMS` order) say."""
    fwd, dec, train, lm, it, step = np.exp(x)
    eff = Efficiency(prefill=fwd, scoring=fwd, train=train, lm=lm, decode_compute=dec, decode_memory=1.0)
    return dataclasses.replace(hw, iteration_overhead_s=it, step_overhead_s=step), eff


def predict(run: MeasuredRun, hw: Hardware, eff: Efficiency, counted: bool = True) -> float:
    """The planner's seconds for the run's RL steps on one device of `hw`: of the work its counters recorded
    (`counted`), or of the work the planner's model of the config says."""
    c = step_cost(run.shape, run.workload, hw, 1, eff, run.flops if counted else None)
    return run.steps * (c.generation_seconds() + c.training_seconds())


def fit(runs: list[MeasuredRun], hw: Hardware) -> np.ndarray:
    """The numbers of `PARAMS` (log scale) that best predict `runs` (least squares on log ratios)."""
    from scipy.optimize import least_squares

    def residuals(x: np.ndarray) -> np.ndarray:
        h, e = profile_with(hw, x)
        return np.array([math.log(predict(r, h, e) / r.seconds) for r in runs])

    return least_squares(residuals, START, bounds=(LOWER, UPPER)).x


def check_count(n: int) -> None:
    if n < MIN_RUNS:
        raise UsageError(
            f"--calibrate needs at least {MIN_RUNS} runs to predict each from the others "
            f"({len(PARAMS)} numbers are fitted); got {n}"
        )


def calibrate(runs: list[MeasuredRun], hw: Hardware) -> dict[str, Any]:
    """Leave-one-out predictions of every run, and the numbers fitted on all of them."""
    check_count(len(runs))
    rows = []
    for i, run in enumerate(runs):
        h, e = profile_with(hw, fit(runs[:i] + runs[i + 1 :], hw))
        pred = predict(run, h, e)
        from_config = predict(run, h, e, counted=False)
        rows.append(
            {
                "run": run.name,
                "context": run.workload.context,
                "group_size": run.workload.group_size,
                "thought": run.workload.thought,
                "mean_thought": run.workload.mean_thought,
                "per_prefix": run.workload.per_prefix,
                "share_prefix": run.workload.share_prefix,
                "steps": run.steps,
                "measured_s": run.seconds,
                "predicted_s": pred,
                "error": pred / run.seconds - 1.0,
                "config_only_s": from_config,
                "config_only_error": from_config / run.seconds - 1.0,
            }
        )
    x = fit(runs, hw)
    h, e = profile_with(hw, x)
    return {
        "hardware": dataclasses.asdict(h),
        "efficiency": dataclasses.asdict(e),
        "fitted": dict(zip(PARAMS, np.exp(x).tolist(), strict=True)),
        "runs": rows,
        "worst_error": max(abs(r["error"]) for r in rows),
        "worst_config_only_error": max(abs(r["config_only_error"]) for r in rows),
        "in_sample_worst_error": max(abs(predict(r, h, e) / r.seconds - 1.0) for r in runs),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{'run':<20}{'ctx':>5}{'G':>4}{'thought':>9}{'stripe':>7}{'share':>6}{'steps':>6}"
        f"{'measured s':>12}{'predicted s':>13}{'error':>8}{'config only':>13}"
    ]
    for r in result["runs"]:
        mean = (
            f"{r['mean_thought']:.1f}/{r['thought']}" if r["mean_thought"] is not None else str(r["thought"])
        )
        lines.append(
            f"{r['run'][:19]:<20}{r['context']:>5}{r['group_size']:>4}{mean:>9}{r['per_prefix']:>7}"
            f"{'on' if r['share_prefix'] else 'off':>6}{r['steps']:>6}{r['measured_s']:>12.2f}"
            f"{r['predicted_s']:>13.2f}{r['error']:>+8.1%}{r['config_only_error']:>+13.1%}"
        )
    f = result["fitted"]
    lines.append(
        f"worst error {result['worst_error']:.1%} (each run predicted from the others; fitted on all: "
        f"{result['in_sample_worst_error']:.1%}). Fitted: forward {f['forward']:.1%}, decode {f['decode']:.1%}, "
        f"loss {f['train']:.1%}, lm term {f['lm']:.1%} of the peak; {f['iteration_overhead_s'] * 1e3:.2f} ms per decode iteration, "
        f"{f['step_overhead_s'] * 1e3:.0f} ms per step; measured {result['hardware']['layer_overhead_s'] * 1e6:.0f}"
        f" µs per layer call. 'config only' (worst {result['worst_config_only_error']:.1%}): the same "
        "left-out prediction on the work the planner's model derives from the config and the run's prompt "
        "geometry, instead of the run's counted FLOPs"
    )
    return "\n".join(lines)
