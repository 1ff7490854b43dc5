"""The plan of an RL run: how many steps a FLOP budget buys, how long they take on `nodes` nodes synchronously
(every GPU generates, then trains) and asynchronously (rollout and learner GPUs apart, generation running up
to `staleness` steps ahead), where the time goes, what limits it, the one change that would help most, and
what prefix sharing is worth. `nodes_for_deadline` answers the inverse question."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from nextrl.plan.cost import Efficiency, Workload, memory, step_cost
from nextrl.plan.profiles import Hardware, ModelShape
from nextrl.plan.simulate import pipeline_seconds

SIM_STEPS = 2000  # simulated exactly; longer runs continue at the simulated steady rate


def run_seconds(steps: int, gen: float, train: float, staleness: int, sync: float) -> float:
    if steps <= SIM_STEPS:
        return pipeline_seconds(steps, gen, train, staleness, sync)
    a = pipeline_seconds(SIM_STEPS // 2, gen, train, staleness, sync)
    b = pipeline_seconds(SIM_STEPS, gen, train, staleness, sync)
    return b + (steps - SIM_STEPS) * (b - a) / (SIM_STEPS - SIM_STEPS // 2)


def modes(m: ModelShape, w: Workload, hw: Hardware, gpus: int, steps: int, staleness: int, eff: Efficiency):
    """(sync seconds, async seconds, rollout GPUs of the best async split). The split is searched on the
    steady-state period (`steady_period`) over a grid of shares; the chosen one is then simulated."""
    full = step_cost(m, w, hw, gpus, eff)
    sync = steps * (full.generation_seconds() + full.training_seconds())
    if gpus < 2:
        return sync, math.inf, 0
    splits = sorted({min(gpus - 1, max(1, round(gpus * k / 64))) for k in range(1, 64)})
    best = (math.inf, 1, 0.0, 0.0, 0.0)
    for rollout in splits:  # the split of GPUs between rollouts and the learner
        gen = step_cost(m, w, hw, rollout, eff)
        train = step_cost(m, w, hw, gpus - rollout, eff)
        g, t, s = gen.generation_seconds(), train.training_seconds(), gen.seconds["weight_sync"]
        best = min(best, (steady_period(g, t, staleness, s), rollout, g, t, s))
    _, rollout, g, t, s = best
    return sync, run_seconds(steps, g, t, staleness, s), rollout


def steady_period(gen: float, train: float, staleness: int, sync: float = 0.0) -> float:
    """Seconds per step once the pipeline is full: generation and training each bound it, and a batch cannot
    start before the weights `staleness` updates back are out, so staleness + 1 steps hold at least one
    generation, one training and one sync."""
    if staleness == 0:
        return gen + train + sync
    return max(gen, train, (gen + train + sync) / (staleness + 1))


def make_plan(
    total_flops: float,
    m: ModelShape,
    hw: Hardware,
    nodes: int,
    w: Workload | None = None,
    staleness: int = 1,
    eff: Efficiency | None = None,
    advise: bool = True,
) -> dict[str, Any]:
    w, eff = w or Workload(), eff or Efficiency()
    gpus = nodes * hw.gpus_per_node
    per_gpu = step_cost(m, w, hw, gpus, eff)
    steps = max(1, math.ceil(total_flops / per_gpu.total_flops))
    sync, asyn, rollout = modes(m, w, hw, gpus, steps, staleness, eff)
    best = min(sync, asyn)
    stage_s = {k: v * steps for k, v in per_gpu.seconds.items()}
    plan: dict[str, Any] = {
        "model": m.name,
        "params": m.params,
        "hardware": hw.name,
        "nodes": nodes,
        "gpus": gpus,
        "workload": dataclasses.asdict(w),
        "total_flops": steps * per_gpu.total_flops,
        "flops_per_step": per_gpu.total_flops,
        "steps": steps,
        "flops_share": {k: v / per_gpu.total_flops for k, v in per_gpu.flops.items()},
        "seconds_share_sync": {k: v / max(sum(stage_s.values()), 1e-30) for k, v in stage_s.items()},
        "sync": {"seconds": sync, "days": sync / 86400, "gpu_hours": sync * gpus / 3600,
                 "utilization": steps * per_gpu.total_flops / (gpus * hw.peak_flops * sync)},
        "async": {"seconds": asyn, "days": asyn / 86400, "gpu_hours": asyn * gpus / 3600,
                  "utilization": steps * per_gpu.total_flops / (gpus * hw.peak_flops * asyn),
                  "rollout_gpus": rollout, "learner_gpus": gpus - rollout, "staleness": staleness},
        "bottleneck": max(per_gpu.seconds, key=per_gpu.seconds.get),
        "memory": dataclasses.asdict(mem := memory(m, w, hw, gpus - rollout if asyn < sync else gpus))
        | {"fits": mem.fits},
    }  # fmt: skip
    if advise:
        plan["advice"] = advice(total_flops, m, hw, nodes, w, staleness, eff, best)
        if w.share_prefix:  # the same number of steps (the same RL work) without prefix sharing
            off_w = dataclasses.replace(w, share_prefix=False)
            off_flops = steps * step_cost(m, off_w, hw, gpus, eff).total_flops
            off = make_plan(off_flops, m, hw, nodes, off_w, staleness, eff, False)
            off_best = min(off["sync"]["seconds"], off["async"]["seconds"])
            plan["without_prefix_sharing"] = {
                "flops": off["total_flops"],
                "days": off_best / 86400,
                "slowdown": off_best / best,
            }
    return plan


def advice(total_flops, m, hw, nodes, w, staleness, eff, best: float) -> dict[str, Any]:
    """The single change (of a few a user controls) that shortens the run most, and by how much."""
    candidates = {
        "double the decode batch (more live sequences per GPU)": dataclasses.replace(
            w, decode_batch=2 * w.decode_batch
        ),
        "share each prefix among twice as many positions": dataclasses.replace(
            w, per_prefix=2 * w.per_prefix
        ),
        "halve the thought budget": dataclasses.replace(w, thought=max(1, w.thought // 2)),
    }
    if not w.share_prefix:
        candidates["turn prefix sharing on"] = dataclasses.replace(w, share_prefix=True)
    results = {}
    for name, cand in candidates.items():
        p = make_plan(total_flops, m, hw, nodes, cand, staleness, eff, advise=False)
        # the same FLOP budget buys a different number of steps: compare seconds per unit of RL work (per sample)
        per_sample = min(p["sync"]["seconds"], p["async"]["seconds"]) / (
            p["steps"] * cand.positions * cand.group_size
        )
        results[name] = per_sample
    base = best / (
        math.ceil(total_flops / step_cost(m, w, hw, nodes * hw.gpus_per_node, eff).total_flops)
        * w.positions
        * w.group_size
    )
    name = min(results, key=results.get)
    return {"change": name, "time_per_sample": results[name] / base}


def nodes_for_deadline(
    total_flops: float,
    m: ModelShape,
    hw: Hardware,
    deadline_s: float,
    w: Workload | None = None,
    staleness: int = 1,
    eff: Efficiency | None = None,
    max_nodes: int = 100_000,
) -> int | None:
    """The fewest nodes that finish within `deadline_s` (the better of sync and async), or None."""

    def seconds(n: int) -> float:
        p = make_plan(total_flops, m, hw, n, w, staleness, eff, advise=False)
        return min(p["sync"]["seconds"], p["async"]["seconds"])

    if seconds(max_nodes) > deadline_s:
        return None
    lo, hi = 1, max_nodes
    while lo < hi:
        mid = (lo + hi) // 2
        if seconds(mid) <= deadline_s:
            hi = mid
        else:
            lo = mid + 1
    return lo


def render_plan(
    p: dict[str, Any],
    flops: float,
    m: ModelShape,
    hw: Hardware,
    nodes: int,
    w: Workload,
    deadline_days: float | None = None,
) -> str:
    """`make_plan`'s plan as the lines `nextrl plan` prints."""
    lines = [
        f"{m.name} ({m.params / 1e9:.1f}B) on {nodes} x {hw.name} ({p['gpus']} GPUs), {flops:.1e} FLOPs",
        f"steps {p['steps']:,} of {p['flops_per_step']:.2e} FLOPs ({w.positions} positions x {w.group_size})",
    ]
    for mode in ("sync", "async"):
        r = p[mode]
        if mode == "async" and r["seconds"] == float("inf"):
            lines.append("async: needs at least 2 GPUs (rollouts and the learner apart)")
            continue
        extra = f", {r['rollout_gpus']} rollout / {r['learner_gpus']} learner GPUs" if mode == "async" else ""
        lines.append(
            f"{mode:5s}: {r['days']:,.1f} days, {r['gpu_hours']:,.0f} GPU-hours, utilisation {r['utilization']:.1%}{extra}"
        )
    shares = ", ".join(f"{k} {v:.0%}" for k, v in p["seconds_share_sync"].items() if v >= 0.005)
    lines.append(f"time by stage (sync): {shares}; bottleneck: {p['bottleneck']}")
    lines.append(
        f"the change that helps most: {p['advice']['change']} (x{p['advice']['time_per_sample']:.2f} time per sample)"
    )
    if "without_prefix_sharing" in p:
        off = p["without_prefix_sharing"]
        lines.append(
            f"without prefix sharing: x{off['slowdown']:.2f} the time for the same steps ({off['days']:,.1f} days)"
        )
    mem = p["memory"]
    lines.append(
        f"memory per GPU: rollout {mem['rollout'] / 1e9:,.1f} GB (KV cache {mem['kv_cache'] / 1e9:,.1f} GB at "
        f"decode batch {w.decode_batch}), learner {mem['learner'] / 1e9:,.1f} GB, of {mem['capacity'] / 1e9:,.0f} GB: "
        + ("fits" if mem["fits"] else "DOES NOT FIT")
        + f"; the largest decode batch that fits: {mem['max_decode_batch']:,}"
    )
    if "nodes_for_deadline" in p:
        n = p["nodes_for_deadline"]
        lines.append(f"nodes to finish in {deadline_days:g} days: {n if n else 'more than 100,000'}")
    return "\n".join(lines)
