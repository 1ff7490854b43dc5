"""Prefix + branch attention: the loss-side layout that spends attention only where a token can look.

A row holds two regions:

    [ prompt trie: Np nodes (tree mask) | branch tokens, packed end to end: Nb ]
      [ trunk: T nodes (causal) | rest of the trie ]

where each completion (without its last token, which is only ever a target) is a branch from its prompt's last
node. Branches are packed without padding: a group's thoughts are mostly far shorter than the budget (a mean of
4 of 17 tokens in the default job), and padding every branch to the longest made the loss process 3x the
tokens it trains on. Attention runs in up to three SDPA calls: the trie's trunk (its longest path, the first T
nodes of every row: `prefix_tree` numbers it first) against itself with a causal kernel; the rest of the trie
against the whole trie (its ancestor mask); and the branch tokens against the whole row (Nb × (Np + Nb)), each
seeing its prompt's ancestors and its own branch's earlier tokens. The trunk of a document stripe is nearly
the whole trie, and the causal kernel skips the key blocks above the diagonal that a kernel given a mask
computes and throws away (25–35% of the trie's attention forward and backward on CPU at 512–1024 nodes; on a
GPU it is the kernel family, FlashAttention, that takes no arbitrary mask at all). Prompt nodes never see branch tokens, so those Np × Nb scores are never computed; the
prefix keys are shared by every branch (never copied per branch) and their gradient sums over the branches by
autograd.

The function is registered as a Hugging Face attention implementation and selected for the duration of one
forward (`branch_attention`); the layout travels as a keyword argument to every attention layer.

A sliding-window layer (Gemma 3's local layers; the model hands the attention function its `sliding_window`)
gets the same masks restricted to keys whose position id is above the query's minus the window (the keys a
mask allows are the query's ancestors, so that is the distance along its own sequence), and keeps the causal
trunk only while the trunk is no longer than the window.
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
    trunk: int = 0  # T: in every row, nodes 0..T-1 are a chain (each sees exactly the nodes before it)
    positions: torch.Tensor | None = None  # [B, Np + Nb] position ids of the row (for sliding windows)

    def __post_init__(self):
        # the trie's rows past the trunk, contiguous once rather than sliced in every layer
        self.rest_mask = self.prefix_mask[:, :, self.trunk :].contiguous()
        self._windowed: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def masks(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(the trie's rows past the trunk, the branch mask, the trunk) for a layer with this sliding window
        (None: full attention), built once per window and forward."""
        if window is None:
            return self.rest_mask, self.branch_mask, self.trunk
        if window not in self._windowed:
            if self.positions is None:
                raise ValueError(
                    "a sliding-window layer needs the layout's position ids (BranchLayout.positions)"
                )
            Np, pos = self.prefix_nodes, self.positions
            prefix = window_mask(self.prefix_mask, pos[:, :Np], pos[:, :Np], window)
            branch = window_mask(self.branch_mask, pos[:, Np:], pos, window)
            trunk = self.trunk if self.trunk <= window else 0  # a longer chain's tokens lose their first keys
            self._windowed[window] = (prefix[:, :, trunk:].contiguous(), branch, trunk)
        return self._windowed[window]


def window_mask(mask: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """`mask` ([R, 1, W, L] bool) restricted to a sliding window: query w (position q_pos[r, w]) keeps key c
    (position k_pos[r, c]) when q_pos - k_pos < window, as Hugging Face's sliding mask does (a token and the
    window - 1 before it). The keys a tree mask allows are the query's ancestors, so the difference is the
    distance along the query's own sequence, whatever the columns' order."""
    return mask & ((q_pos[:, None, :, None] - k_pos[:, None, None, :]) < window)


def prefix_branch_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    layout=None,
    sliding_window=None,
    **kwargs,
):
    """q [B, H, N, D], k/v [B, Hkv, N, D] -> (out [B, N, H, D], None), as Hugging Face attention functions."""
    if layout is None:  # a forward that is not ours (e.g. generation): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            scaling=scaling,
            dropout=dropout,
            sliding_window=sliding_window,
            **kwargs,
        )
    Np = layout.prefix_nodes
    rest_mask, branch_mask, trunk = layout.masks(sliding_window)
    gqa = key.shape[1] != query.shape[1]
    parts = [
        trunk_attention(query[:, :, :Np], key[:, :, :Np], value[:, :, :Np], rest_mask, trunk, scaling, gqa)
    ]
    if query.shape[2] > Np:
        parts.append(
            F.scaled_dot_product_attention(
                query[:, :, Np:], key, value, attn_mask=branch_mask, scale=scaling, enable_gqa=gqa
            )
        )
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def trunk_attention(q, k, v, rest_mask, trunk: int, scale, gqa: bool = False) -> torch.Tensor:
    """Attention of N tree nodes (q [B, H, N, D], k/v [B, Hkv, N, D]) whose first `trunk` nodes are a chain in
    every row: those through the causal kernel, the others against all N keys under `rest_mask` ([B, 1,
    N - trunk, N], bool) -> [B, H, N, D]. With trunk 0 this is one masked SDPA call."""
    T = trunk
    if not T:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=rest_mask, scale=scale, enable_gqa=gqa)
    head = F.scaled_dot_product_attention(
        q[:, :, :T], k[:, :, :T], v[:, :, :T], is_causal=True, scale=scale, enable_gqa=gqa
    )
    if q.shape[2] == T:
        return head
    rest = F.scaled_dot_product_attention(q[:, :, T:], k, v, attn_mask=rest_mask, scale=scale, enable_gqa=gqa)
    return torch.cat([head, rest], dim=2)


AttentionInterface.register(NAME, prefix_branch_attention)


@contextmanager
def branch_attention(model) -> Iterator[None]:
    """Run the model's attention through `prefix_branch_attention` inside the block."""
    cfg = model.config
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, key, None) is not None:
            raise ValueError(
                f"the model's config sets {key}, which the prefix-sharing loss path does not apply (its "
                "attention is SDPA, its head the bare output embeddings); set sharing.enabled=false"
            )
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
