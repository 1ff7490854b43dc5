"""Optimizer, learning-rate schedule and gradient clipping shared by the RL trainer and the baselines."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

Schedule = Literal["constant", "cosine", "linear"]


def build_optimizer(
    params: nn.Module | Iterable,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW over a module, (name, param) pairs or bare params; frozen params are skipped.

    Weight decay goes only to matrices: biases and norm gains (1-D) and embeddings (named *embed*, or
    nn.Embedding weights when a module is given) are not decayed, since pulling them to 0 only hurts.
    Group 0 is the decayed one, group 1 the undecayed one (an empty group is left out).
    """
    if isinstance(params, nn.Module):
        # nn.Embedding weights count as embeddings whatever they are called (GPT-2's `wte`).
        embed_ids = {id(m.weight) for m in params.modules() if isinstance(m, nn.Embedding)}
        named = list(params.named_parameters())
    else:
        embed_ids = set()
        items = list(params)
        named = items if items and isinstance(items[0], tuple) else [("", p) for p in items]
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        is_embed = id(p) in embed_ids or "embed" in name.lower()
        (no_decay if p.ndim < 2 or is_embed else decay).append(p)
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]
    # The fused kernel is the fast path on GPU; on CPU keep torch's default (single-tensor) implementation.
    fused = (bool(groups) and all(p.is_cuda for g in groups for p in g["params"])) or None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float
) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    Warm-up: (step + 1) / (warmup_steps + 1), so the first step already moves (nanoGPT's form) and step
    `warmup_steps` is the first at the peak. Then the decay runs over progress p = (step - warmup) /
    (total - warmup) from 1 down to `min_lr_ratio`, reached at step `total_steps` and held after it.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    schedule: Schedule,
    min_lr_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_factor`; call `.step()` after each optimizer step.

    Resume by rebuilding with the same arguments and loading both the optimizer's and the scheduler's
    state_dict (the scheduler saves its step count; the closure itself is rebuilt, not pickled).
    """
    if schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"unknown schedule {schedule!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps, total_steps, schedule, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_grad(params: nn.Module | Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip the global grad norm to `max_norm`; return the norm before clipping (inf/NaN are returned as
    they are, so the caller can skip the step and log it)."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP-sharded gradients: the global norm as a replicated DTensor
        norm = norm.full_tensor()
    return float(norm)
