"""Prefix + branch attention: the loss-side layout that spends attention only where a token can look.

A row holds two regions:

    [ prompt trie: Np nodes (tree mask) | branch tokens, packed end to end: Nb ]

where each completion (without its last token, which is only ever a target) is a branch from its prompt's last
node. Branches are packed without padding: a group's thoughts are mostly far shorter than the budget (a mean of
4 of 17 tokens in the default job), and padding every branch to the longest made the loss process 3x the
tokens it trains on. Attention runs in two SDPA calls: the prompt trie against itself (Np², its ancestor mask),
and the branch tokens against the whole row (Nb × (Np + Nb)), each seeing its prompt's ancestors and its own
branch's earlier tokens. Prompt nodes never see branch tokens, so those Np × Nb scores are never computed; the
prefix keys are shared by every branch (never copied per branch) and their gradient sums over the branches by
autograd.

The function is registered as a Hugging Face attention implementation and selected for the duration of one
forward (`branch_attention`); the layout travels as a keyword argument to every attention layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

NAME = "nextrl_prefix_branches"


@dataclass
class BranchLayout:
    prefix_nodes: int  # Np (padded, the same for every row)
    prefix_mask: torch.Tensor  # bool [B, 1, Np, Np]
    branch_mask: torch.Tensor  # bool [B, 1, Nb, Np + Nb]: what each packed branch token sees in its row


def prefix_branch_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, layout=None, **kwargs
):
    """q [B, H, N, D], k/v [B, Hkv, N, D] -> (out [B, N, H, D], None), as Hugging Face attention functions."""
    if layout is None:  # a forward that is not ours (e.g. generation): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    Np = layout.prefix_nodes
    gqa = key.shape[1] != query.shape[1]
    out = F.scaled_dot_product_attention(
        query[:, :, :Np],
        key[:, :, :Np],
        value[:, :, :Np],
        attn_mask=layout.prefix_mask,
        scale=scaling,
        enable_gqa=gqa,
    )
    if query.shape[2] > Np:
        branches = F.scaled_dot_product_attention(
            query[:, :, Np:], key, value, attn_mask=layout.branch_mask, scale=scaling, enable_gqa=gqa
        )
        out = torch.cat([out, branches], dim=2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, prefix_branch_attention)


@contextmanager
def branch_attention(model) -> Iterator[None]:
    """Run the model's attention through `prefix_branch_attention` inside the block."""
    cfg = model.config
    old = cfg._attn_implementation
    if old not in ("sdpa", "eager", NAME):
        raise ValueError(
            f"prefix sharing needs attention with custom masks (the model uses {old!r}); load the model with "
            "attn_implementation='sdpa' or set sharing.enabled=false"
        )
    cfg._attn_implementation = NAME
    try:
        yield
    finally:
        cfg._attn_implementation = old
