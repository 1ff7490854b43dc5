"""Prefix + branch attention: the loss-side layout that spends attention only where a token can look.

A dense tree mask over prompt and completion nodes costs N² attention per tree, although a completion token
only sees its prompt's ancestors and its own branch: with 64 branches of 18 tokens on a 512-token prefix,
three quarters of the dense work is masked out. Here a row holds two regions:

    [ prompt trie: Np nodes (tree mask) | branch 0: Tb tokens | branch 1: Tb tokens | ... ]

and attention runs in two parts: the prompt trie against itself (SDPA, Np² with its ancestor mask), and the
branch tokens against their prompt's prefix keys plus their own earlier tokens, one softmax over two score
blocks (all branches × the shared prefix, and each branch × itself), so the prefix keys are never copied per
branch and their gradient sums over the branches by autograd. A branch holds the
completion without its last token: the last token is only ever a target, never an input.

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
    branches: int  # branches per row (padded)
    branch_len: int  # Tb (padded)
    prefix_mask: torch.Tensor  # bool [B, 1, Np, Np]
    branch_mask: torch.Tensor  # bool [B * branches, 1, Tb, Np + Tb]


def prefix_branch_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, layout=None, **kwargs
):
    """q [B, H, N, D], k/v [B, Hkv, N, D] -> (out [B, N, H, D], None), as Hugging Face attention functions."""
    if layout is None:  # a forward that is not ours (e.g. generation): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    B, H, _, D = query.shape
    Np, nb, Tb = layout.prefix_nodes, layout.branches, layout.branch_len
    gqa = key.shape[1] != H
    out = F.scaled_dot_product_attention(
        query[:, :, :Np],
        key[:, :, :Np],
        value[:, :, :Np],
        attn_mask=layout.prefix_mask,
        scale=scaling,
        enable_gqa=gqa,
    )
    if nb * Tb:
        out = torch.cat([out, _branches(query, key, value, layout, scaling)], dim=2)
    return out.transpose(1, 2).contiguous(), None


def _branches(query, key, value, layout: BranchLayout, scaling) -> torch.Tensor:
    """Attention of the branch tokens over [their prompt's prefix keys | their own branch], as one softmax split
    in two score blocks: [B, H, nb·Tb, Np] against the shared prefix (no per-branch copy of the prefix) and
    [B, H, nb, Tb, Tb] within each branch. Scores and the softmax are fp32."""
    B, H, _, D = query.shape
    Np, nb, Tb = layout.prefix_nodes, layout.branches, layout.branch_len
    if key.shape[1] != H:  # grouped-query attention: share each key/value head with its query heads
        key = key.repeat_interleave(H // key.shape[1], dim=1)
        value = value.repeat_interleave(H // value.shape[1], dim=1)
    scale = scaling if scaling is not None else D**-0.5
    qb = query[:, :, Np:]
    kp, vp, kb, vb = key[:, :, :Np], value[:, :, :Np], key[:, :, Np:], value[:, :, Np:]
    sp = (qb @ kp.transpose(-1, -2)).float() * scale  # [B, H, nb*Tb, Np]
    sp = sp.masked_fill(~layout.branch_mask[..., :Np].reshape(B, 1, nb * Tb, Np), float("-inf"))
    q5, k5, v5 = (x.reshape(B, H, nb, Tb, D) for x in (qb, kb, vb))
    sb = (q5 @ k5.transpose(-1, -2)).float() * scale  # [B, H, nb, Tb, Tb]
    sb = sb.masked_fill(~layout.branch_mask[..., Np:].reshape(B, 1, nb, Tb, Tb), float("-inf"))
    top = torch.maximum(sp.amax(-1), sb.amax(-1).reshape(B, H, nb * Tb)).detach()
    ep = torch.exp(sp - top[..., None])
    eb = torch.exp(sb - top.reshape(B, H, nb, Tb)[..., None])
    denom = ep.sum(-1) + eb.sum(-1).reshape(B, H, nb * Tb)
    num = ep.to(vp.dtype) @ vp + (eb.to(v5.dtype) @ v5).reshape(B, H, nb * Tb, D)
    return (num.float() / denom[..., None]).to(query.dtype)


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
