"""Regenerate tests/golden/rl_micro.json: per-step RL metrics and weight checksums of short micro runs.

    python tests/golden/make_rl_golden.py

Run it only when a change is *meant* to alter what the trainer computes, and say why in the commit. The file
was first written by the trainer before the producer/learner split, and the split reproduced it exactly."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from nextrl.config import load_config
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import rl_stage, select_stage
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.seed import seed_everything

HERE = Path(__file__).parent
CASES = {
    # the default preset's RL step: dense reward, empty-thought samples, next-token term
    "tinylike": [
        "reward=prefix_match+0.1*info_gain",
        "rl.empty_thought_samples=1",
        "rl.lm_coef=1.0",
        "sampling.temperature=1.0",
    ],
    # dynamic sampling, the curriculum's feedback and retirement, the high-entropy token mask
    "dyn": [
        "rl.dynamic_sampling=true",
        "curriculum.prefer=uncertain",
        "curriculum.retire_after=2",
        "rl.entropy_mask_rho=0.5",
    ],
}
TIMING = ("second", "mfu", "time", "wall")


def run_case(overrides: list[str], out: Path) -> dict:
    cfg = load_config("micro", ["model.dtype=float32", *overrides])
    seed_everything(cfg.seed)
    base = prepare_base(cfg)
    device = torch.device("cpu")
    index = select_stage(cfg, base, out, device, None)
    logger = MetricsLogger(out)
    policy, _ = rl_stage(cfg, base, index, out, device, None, logger, False)
    logger.close()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [
        {k: v for k, v in r.items() if isinstance(v, int | float) and not any(t in k for t in TIMING)}
        for r in rows
        if r.get("stage") == "rl"
    ]
    sd = policy.state_dict()
    return {
        "steps": steps,
        "weight_sum": float(sum(v.double().sum() for v in sd.values())),
        "weight_abs_sum": float(sum(v.double().abs().sum() for v in sd.values())),
    }


def main() -> None:
    out = {}
    for name, overrides in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = {"overrides": overrides, **run_case(overrides, Path(tmp))}
    path = HERE / "rl_micro.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
