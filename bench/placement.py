"""The RL stage in one process and on Ray: samples/s and where the time goes, for local, Ray with 1 and 2 rollout
workers (synchronous), and 2 workers generating one step ahead (asynchronous, rl.max_off_policy_steps=1).

    python bench/placement.py                    # tiny preset, 12 steps each (base model from the cache)
    python bench/placement.py --steps 6 --no-write

Ray's start-up (cluster and actors) is timed apart from the steps. Appends a table to docs/benchmarks-history.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nextrl.config import load_config
from nextrl.model.build import autocast_dtype
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import build_rl_trainer, select_stage
from publish import publish  # bench/publish.py, beside this script

PLACEMENTS = {
    "local": [],
    "ray, 1 worker": ["placement.kind=ray", "placement.workers=1", "placement.cpus_per_worker=2"],
    "ray, 2 workers": ["placement.kind=ray", "placement.workers=2"],
    "ray, 2 workers, async (1 step ahead)": [
        "placement.kind=ray",
        "placement.workers=2",
        "rl.max_off_policy_steps=1",
    ],
}


def measure(base, index, preset: str, overrides: list[str], steps: int, out: Path) -> dict:
    cfg = load_config(preset, [*overrides, f"rl.steps={steps}", "placement.num_cpus=2"])
    t0 = time.time()
    trainer = build_rl_trainer(
        cfg,
        copy.deepcopy(base.model),
        base.tokenizer,
        index,
        out,
        torch.device("cpu"),
        autocast_dtype(cfg.model),
    )
    startup = time.time() - t0
    rows = []
    try:
        for _ in range(steps):
            t = time.time()
            m = trainer.step()
            m["wall"] = time.time() - t
            rows.append(m)
    finally:
        trainer.close()
    rows = rows[1:]  # the first step warms caches (and, asynchronously, has nothing generated ahead)
    samples = sum(m["groups/drawn"] for m in rows) * cfg.sampling.group_size
    wall = sum(m["wall"] for m in rows)
    return {
        "startup_s": startup,
        "samples_per_s": samples / wall,
        "step_s": wall / len(rows),
        "wait_s": float(np.mean([m["generation_seconds"] for m in rows])),
        "train_s": float(np.mean([m["training_seconds"] for m in rows])),
        "staleness": float(np.mean([m.get("staleness/mean", 0.0) for m in rows])),
        "reward": float(np.mean([m["reward/mean"] for m in rows])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.preset)
    base = prepare_base(cfg)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        index = select_stage(cfg, base, Path(tmp) / "index", torch.device("cpu"), autocast_dtype(cfg.model))
        results = {
            name: measure(base, index, args.preset, ov, args.steps, Path(tmp) / f"p{i}")
            for i, (name, ov) in enumerate(PLACEMENTS.items())
        }
    lines = [
        f"### RL placement: one process vs Ray rollout workers ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `python bench/placement.py --preset {args.preset} --steps {args.steps}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; the Ray cluster "
        "has 2 CPUs (workers and learner share them)",
        "",
        "| placement | start-up s | samples/s | s/step | learner waits s | training s | staleness | reward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['startup_s']:.1f} | {r['samples_per_s']:.1f} | {r['step_s']:.2f} | {r['wait_s']:.2f} | "
            f"{r['train_s']:.2f} | {r['staleness']:.2f} | {r['reward']:.3f} |"
        )
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
