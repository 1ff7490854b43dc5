"""An exponential moving average (EMA) of the policy: RLP's no-thought baseline model.

RLP (arXiv 2510.01265) scores the next token without a thought under an EMA copy φ of the policy θ, updated
after every optimizer step as φ ← τ·φ + (1−τ)·θ with τ = 0.999 and φ = θ at the start. The lag is the point: a
baseline equal to the policy makes the reward vanish, a frozen one drifts away from it.

The copy never trains (eval mode, no gradients) and is checkpointed with the trainer state, so a resumed run
continues from the same baseline instead of restarting it from the current policy.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not (math.isfinite(tau) and 0.0 <= tau <= 1.0):
        raise ValueError(f"reward.ema_tau must be in [0, 1] (1 = frozen, 0 = copy the policy), got {tau}")
    return tau


class EMAModel:
    """EMA copy of a model. `update(policy)` after every optimizer step; score with `.model`.

    `dtype` (default: the policy's) sets the copy's parameter dtype. With τ = 0.999 each update moves φ by 0.1%
    of θ − φ, below bf16's resolution (8 bits of mantissa): a bf16 copy barely moves, so keep a bf16 policy's
    EMA in float32 (and score it under autocast).
    """

    def __init__(self, model: nn.Module, tau: float = 0.999, dtype: torch.dtype | None = None):
        self.tau = _check_tau(tau)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype)
        self.updates = 0

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(EMA params, policy params) matched by name; a different architecture is an error, not a no-op."""
        mine = dict(self.model.named_parameters())
        theirs = dict(model.named_parameters())
        if mine.keys() != theirs.keys():
            diff = sorted(mine.keys() ^ theirs.keys())[:5]
            raise ValueError(f"EMA update from a model with different parameters: {diff}")
        names = list(mine)
        return [mine[n] for n in names], [theirs[n] for n in names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """φ ← τ·φ + (1−τ)·θ for every parameter, in place; buffers are copied from the policy."""
        ema, src = self._pairs(model)
        src = [
            s.detach().to(e.device, e.dtype) for e, s in zip(ema, src, strict=True)
        ]  # no-op when they match
        # lerp(φ, θ, w) = φ + w·(θ − φ) = (1 − w)·φ + w·θ, so w = 1 − τ; one fused kernel over all tensors.
        torch._foreach_lerp_(ema, src, 1.0 - self.tau)
        theirs = dict(model.named_buffers())
        for name, buf in self.model.named_buffers():
            if name in theirs:
                buf.copy_(theirs[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "tau": self.tau, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.tau = _check_tau(state["tau"])
        self.updates = int(state["updates"])
