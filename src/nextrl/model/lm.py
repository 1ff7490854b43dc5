"""Plain next-token training, shared by from-scratch pretraining and the FLOP-matched baseline."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from nextrl.model.fsdp import base_forward
from nextrl.model.head import head_weight, next_token_nll
from nextrl.model.optim import clip_grad
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.progress import progress

BatchFn = Callable[
    [int], tuple[torch.Tensor, torch.Tensor | None]
]  # step -> (tokens [B, L+1], loss mask [B, L])


def lm_loss(
    model, tokens: torch.Tensor, mask: torch.Tensor | None, autocast: torch.dtype | None
) -> torch.Tensor:
    """Mean next-token cross-entropy of `tokens[:, 1:]` given `tokens[:, :-1]` over the positions `mask`
    selects (all without one), fp32 with gradient. Only those positions are projected to the vocabulary, and
    in chunks (`nextrl.model.head`): 4 x 256 tokens of a 262k vocabulary would otherwise be a 1 GB logits
    tensor, and F.cross_entropy's log-softmax and backward a few more of it."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    ctx = torch.autocast(inputs.device.type, dtype=autocast) if autocast else nullcontext()
    with ctx:
        hidden = base_forward(model)(input_ids=inputs).last_hidden_state  # sharded: through the root's hooks
    rows, tgts = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        rows, tgts = rows[keep], tgts[keep]
    with ctx:
        nll = next_token_nll(rows, head_weight(model), tgts)
    return nll.sum() / max(len(nll), 1)


def train_lm(
    model,
    batch_fn: BatchFn,
    *,
    steps: int,
    start_step: int,
    optimizer,
    scheduler,
    grad_clip: float,
    autocast: torch.dtype | None,
    device: torch.device,
    flops_per_step: float,
    stage: str,
    logger: MetricsLogger | None = None,
    on_step: Callable[[int], None] | None = None,
    log_every: int = 10,
) -> dict[str, float]:
    """Train for steps [start_step, steps). `on_step(step_done)` runs after each step (checkpoints).

    One piece on purpose: it is the whole plain-LM training loop (pretraining and the FLOP-matched baseline
    share it), read top to bottom; most of its length is its keyword arguments."""
    model.train()
    t_start = time.time()
    tokens_seen, last_loss = 0, float("nan")
    bar = progress(total=steps, desc=stage, unit="step", initial=start_step)
    for step in range(start_step, steps):
        tokens, mask = batch_fn(step)
        tokens = tokens.to(device)
        mask = mask.to(device) if mask is not None else None
        loss = lm_loss(model, tokens, mask, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = clip_grad(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        tokens_seen += tokens[:, :-1].numel()
        last_loss = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}")
        done = step + 1
        if logger is not None and (done % log_every == 0 or done == steps):
            elapsed = max(time.time() - t_start, 1e-9)
            logger.log(
                stage,
                done,
                {
                    "loss": last_loss,
                    "grad_norm": gnorm,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_second": tokens_seen / elapsed,
                    "flops/total": flops_per_step * done,
                },
            )
        if on_step is not None:
            on_step(done)
    bar.close()
    elapsed = time.time() - t_start
    return {
        "loss": last_loss,
        "seconds": elapsed,
        "tokens_per_second": tokens_seen / max(elapsed, 1e-9),
        "steps": steps,
        "flops": flops_per_step * steps,
    }
