"""Policy log-probs of completion tokens, with gradient: the trainer's side of the ratio p_θ / p_old.

The vocabulary projection is applied only at completion positions (prompt positions need hidden states for
attention, not logits), which saves most of the unembedding cost when prompts are long."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch


def completion_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    temperature: float,
    pad_id: int,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """log p(completion[i][j] | prompt[i] + completion[i][:j]) at `temperature` -> [B, max completion len],
    zero-padded on the right. One right-padded forward over prompt + completion."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    ids, attn = ids.to(device), attn.to(device)
    Tc = max((len(c) for c in completions), default=0)
    # Hidden state at position p predicts token p + 1: completion token j sits at len(prompt) + j.
    rows, cols, valid = [], [], torch.zeros((len(seqs), Tc), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        for j in range(len(c)):
            rows.append(i)
            cols.append(len(p) + j - 1)
            valid[i, j] = True
    ctx = torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()
    with ctx:
        hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        h = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        logits = model.get_output_embeddings()(h)
    logp = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
    targets = ids[torch.tensor(rows, device=device), torch.tensor(cols, device=device) + 1]
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = torch.zeros((len(seqs), Tc), dtype=picked.dtype, device=device)
    out[valid.to(device)] = picked
    return out
