"""Perplexity of a model on held-out documents (non-overlapping windows, plain next-token loss)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from nextrl.model.lm import lm_loss


@torch.no_grad()
def perplexity(
    model,
    docs: Sequence[np.ndarray],
    window: int,
    max_tokens: int,
    autocast: torch.dtype | None,
    batch_size: int = 16,
    prefix_ids: Sequence[int] = (),
) -> float:
    """exp(mean NLL) of the tokens of non-overlapping windows; each window is read after `prefix_ids` (the
    tokenizer's `<bos>`, `document_prefix`), whose own targets are not counted, so the same tokens are scored
    with or without a prefix."""
    device = next(model.parameters()).device
    chunks = []
    total = 0
    for d in docs:
        for s in range(0, len(d) - 1, window):
            piece = d[s : s + window + 1]
            if len(piece) == window + 1 and total < max_tokens:
                chunks.append(piece)
                total += window
    if not chunks:
        return float("nan")
    was_training = model.training
    model.eval()
    nll = 0.0
    k = len(prefix_ids)
    for s in range(0, len(chunks), batch_size):
        x = torch.from_numpy(np.stack(chunks[s : s + batch_size])).to(device)
        mask = None
        if k:  # targets: the prefix's own (masked), then the window's first token (masked: scored as before)
            x = torch.cat([torch.tensor(prefix_ids, device=device).expand(len(x), k), x], dim=1)
            mask = torch.ones((len(x), x.shape[1] - 1), dtype=torch.bool, device=device)
            mask[:, :k] = False
        nll += lm_loss(model, x, mask, autocast).item() * len(x)
    model.train(was_training)
    return math.exp(nll / len(chunks))
