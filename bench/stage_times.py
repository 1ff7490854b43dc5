"""Where an RL step's time goes: seconds per step and model-FLOP utilisation of each stage, from a run folder's
metrics (`time/<stage>_s` and `flops/<stage>`, logged every RL step).

    python bench/stage_times.py RUN_DIR [--no-write]
    python bench/calibration_runs.py --out runs/stages --only default && python bench/stage_times.py runs/stages/default

`other` is what no stage claims: Python between the stages, bookkeeping, the task source. MFU is against the
measured matmul peak of the run's dtype on this machine (the denominator every run's MFU uses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from nextrl.accounting.peak import matmul_peak
from nextrl.config import load_config
from nextrl.model.build import autocast_dtype
from publish import publish  # bench/publish.py, beside this script

ORDER = ["prefill", "decode", "scoring", "loss_forward", "loss_backward", "lm", "optimizer", "gradient_sync",
         "generation", "other"]  # fmt: skip
FLOPS = {"prefill": ["prefill"], "decode": ["decode"], "scoring": ["scoring"],
         "loss_forward": ["loss_forward", "reference"], "loss_backward": ["loss_backward"], "lm": ["lm"]}  # fmt: skip


def stage_table(steps: list[dict], peak: float) -> list[str]:
    """Markdown rows: seconds per step, share of the step and MFU of each stage, means over `steps` (RL step
    metrics with `time/<stage>_s`, `flops/<stage>` and `step_seconds`)."""
    step_s = float(np.mean([r["step_seconds"] for r in steps]))
    lines = ["| stage | seconds / step | share | MFU |", "|---|---|---|---|"]
    for stage in ORDER:
        key = f"time/{stage}_s"
        if not any(key in r for r in steps):
            continue
        sec = float(np.mean([r.get(key, 0.0) for r in steps]))
        flops = sum(float(np.mean([r.get(f"flops/{k}", 0.0) for r in steps])) for k in FLOPS.get(stage, []))
        mfu = f"{flops / sec / peak:.1%}" if flops and sec > 0 else "–"
        lines.append(f"| {stage} | {sec:.3f} | {sec / step_s:.0%} | {mfu} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows: dict[int, dict] = {}
    for line in (args.run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("stage") == "rl":
            rows[r["step"]] = r
    steps = [rows[k] for k in sorted(rows)][1:]  # the first step pays one-time costs (allocation, caches)
    if not steps:
        raise SystemExit(f"{args.run}: fewer than two RL steps with per-stage times")
    cfg = load_config(str(args.run / "config.yaml"))
    bf16 = autocast_dtype(cfg.model, torch.device("cpu")) == torch.bfloat16  # the run's own rule
    peak = matmul_peak(torch.device("cpu"), torch.bfloat16 if bf16 else torch.float32)
    step_s = float(np.mean([r["step_seconds"] for r in steps]))
    lines = [
        f"### Where an RL step's time goes: `{args.run.name}` ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `python bench/stage_times.py {args.run}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {'bf16' if bf16 else 'fp32'} matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s; {len(steps)} steps after the first, {step_s:.2f} s per step",
        "",
    ]
    lines += stage_table(steps, peak)
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
