"""Measured RL runs for the planner's calibration (`nextrl plan --calibrate`): the tiny preset's RL stage under
workloads that differ in context, group size G, thought length, positions per document stripe and prefix
sharing, each in its own run folder (config.yaml, metrics.jsonl). The base model and each context's position
index are made once and shared.

    python bench/calibration_runs.py --out runs/calibration [--steps 8]
    nextrl plan --calibrate runs/calibration/*
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nextrl.config import dump_config, load_config
from nextrl.model.build import autocast_dtype, resolve_device
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import rl_stage, select_stage
from nextrl.utils.io import atomic_write_text
from nextrl.utils.metrics import MetricsLogger

VARIANTS = {  # name: overrides of the tiny preset (its own: context 128, G 8, thought 16, 4 positions/stripe)
    "default": [],
    "default_again": [],  # the same run twice: how much a measurement moves on its own
    "context64": ["selection.context=64"],
    "context256": ["selection.context=256"],
    "g4": ["sampling.group_size=4"],
    "g16": ["sampling.group_size=16"],
    "thought4": ["env.thought_tokens=4"],
    "thought48": ["env.thought_tokens=48"],
    "stripe1": ["positions.per_prefix=1"],
    "stripe16": ["positions.per_prefix=16"],
    "no_sharing": ["sharing.enabled=false"],
    # with sharing the next-token term rides in the loss: the runs without sharing are the ones that time its
    # pass of its own, and leaving one out must leave another
    "no_sharing_context256": ["sharing.enabled=false", "selection.context=256"],
    "positions32": ["positions.per_step=32"],
    "prefix_match_only": ["reward.spec=prefix_match", "rl.lm_coef=0"],
    "no_lm_term": ["rl.lm_coef=0"],
    "no_model_scoring": ["reward.spec=prefix_match"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/calibration"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=None, choices=list(VARIANTS))
    args = ap.parse_args()
    indexes = {}
    for name in args.only or VARIANTS:
        cfg = load_config("tiny", [*VARIANTS[name], f"rl.steps={args.steps}", "rl.checkpoint_every=1000"])
        out = args.out / name
        if (out / "metrics.jsonl").exists():
            print(f"{name}: exists, skipped")
            continue
        out.mkdir(parents=True, exist_ok=True)
        device = resolve_device(cfg.device)
        autocast = autocast_dtype(cfg.model, device)
        base = prepare_base(cfg)
        base.model.to(device)
        ctx = cfg.selection.context
        if ctx not in indexes:
            indexes[ctx] = select_stage(cfg, base, args.out / f".index{ctx}", device, autocast)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        indexes[ctx].save(out / "index")  # the prompts' geometry, which the planner reads
        logger = MetricsLogger(out)
        t = time.time()
        try:
            rl_stage(cfg, base, indexes[ctx], out, device, autocast, logger, resume=False)
        finally:
            logger.close()
        print(f"{name}: {time.time() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
