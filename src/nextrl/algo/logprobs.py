"""Policy log-probs of completion tokens, with gradient: the trainer's side of the ratio p_θ / p_old.

Two paths give the same numbers:
- `completion_logprobs` (plain): one right-padded row per sequence; every sample re-encodes its prompt.
- `tree_completion_logprobs` (shared): the sequences are packed as prefix trees (`prefix_tree`), so a prompt
  shared by G samples, and a document prefix shared by several positions, is encoded once per forward and its
  gradient accumulates from every branch.
In both, the vocabulary projection runs only where a completion token is predicted (prompt positions need hidden
states for attention, not logits), and once per distinct node in the tree path.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from nextrl.algo.prefix_tree import attention_mask_for, build_tree, group_by_prefix, tree_batch
from nextrl.model.flops import TokenWork


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def _picked_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    logp = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def completion_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    temperature: float,
    pad_id: int,
    autocast: torch.dtype | None = None,
    work: TokenWork | None = None,
) -> torch.Tensor:
    """log p(completion[i][j] | prompt[i] + completion[i][:j]) at `temperature` -> [B, max completion len],
    zero-padded on the right. One right-padded forward over prompt + completion; the tokens it processes are
    added to `work`."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    if work is not None:
        for s, c in zip(seqs, completions, strict=True):
            work.add_sequence(len(s), logits=len(c))
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
    r, c = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    with _autocast(device, autocast):
        hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        picked = _picked_logprobs(model, hidden[r, c], ids[r, c + 1], temperature)
    out = torch.zeros((len(seqs), Tc), dtype=picked.dtype, device=device)
    out[valid.to(device)] = picked
    return out


def tree_completion_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    temperature: float,
    pad_id: int,
    autocast: torch.dtype | None = None,
    max_nodes: int = 4096,
    work: TokenWork | None = None,
) -> torch.Tensor:
    """Same result as `completion_logprobs`, computed over prefix trees of at most `max_nodes` nodes each
    (all trees of the call go through one batched forward). A node attends to its ancestors only."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: there is no token to condition the first completion token on")
    groups = group_by_prefix(seqs, max_nodes)
    trees = [build_tree([seqs[i] for i in g]) for g in groups]
    ids, pos, mask = tree_batch(trees, pad_id, device)
    # For each (sequence, completion token) the predicting node is the node of the token before it. Each distinct
    # node is projected to the vocabulary once: the G samples of a prompt share the node of its last token.
    Tc = max((len(c) for c in completions), default=0)
    row_of: dict[tuple[int, int], int] = {}
    rows, cols, where, slot, tgts = [], [], [], [], []
    for b, (g, t) in enumerate(zip(groups, trees, strict=True)):
        for k, i in enumerate(g):
            nodes, p = t.seq_nodes[k], len(prompts[i])
            for j in range(len(completions[i])):
                key = (b, nodes[p + j - 1])
                if key not in row_of:
                    row_of[key] = len(rows)
                    rows.append(b)
                    cols.append(key[1])
                where.append((i, j))
                slot.append(row_of[key])
                tgts.append(seqs[i][p + j])
    if work is not None:
        for t in trees:
            work.add(len(t), sum(t.depth) + len(t))
        work.add(0, 0, logits=len(rows))
    with _autocast(device, autocast):
        dtype = autocast or next(model.parameters()).dtype
        hidden = model.base_model(
            input_ids=ids, attention_mask=attention_mask_for(model, mask, dtype), position_ids=pos
        ).last_hidden_state
        r, c = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        logits = model.get_output_embeddings()(hidden[r, c])
    logp = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
    out = torch.zeros((len(seqs), Tc), dtype=logp.dtype, device=device)
    if where:
        picked = logp[torch.tensor(slot, device=device), torch.tensor(tgts, device=device)]
        wi = torch.tensor([w[0] for w in where], device=device)
        wj = torch.tensor([w[1] for w in where], device=device)
        out = out.index_put((wi, wj), picked)
    return out
