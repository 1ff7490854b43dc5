"""Prefix trees: many token sequences that share prefixes, packed into one row of nodes.

In next-token RL all G samples of a position share its prompt, and the positions of one document stripe share
nested prefixes of the document. Packing the sequences of a group as a trie (one node per distinct prefix) and
letting each node attend only to its ancestors computes every shared token once: the prefix's forward pass is
done once and, in training, its gradient accumulates from every branch. The result equals running each sequence
on its own (same tokens, same positions, same visible keys); tests check this against the plain path.

Nodes are numbered in depth-first order, the deepest subtree first, so a parent always precedes its children
and the tree's longest root-to-leaf path is nodes 0..trunk-1 with the plain causal mask among themselves.
Attention can then run the trunk through a causal kernel, which skips the key blocks above the diagonal that a
kernel given an explicit mask computes and throws away (`branch_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PackedTree:
    tokens: list[int]  # token of each node
    parent: list[int]  # parent node index, -1 for a root
    depth: list[int]  # index of the node's token in its sequences = its position id
    seq_nodes: list[list[int]]  # per input sequence (input order): the node of each of its tokens

    @property
    def trunk(self) -> int:
        """Length of the leading chain: nodes 0..trunk-1 are a root and its line of descendants, so each of
        them sees exactly the nodes before it (ancestors precede, so none sees a node past the chain)."""
        n = 0
        while n < len(self.parent) and self.parent[n] == n - 1:
            n += 1
        return n

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestor_mask(self) -> np.ndarray:
        """Bool [N, N]: node i may attend to node j iff j is i or an ancestor of i."""
        n = len(self.tokens)
        mask = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parent):
            if p >= 0:
                mask[i, :i] = mask[p, :i]  # a parent precedes its child: its row is complete below i
            mask[i, i] = True
        return mask


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def build_tree(seqs: Sequence[Sequence[int]]) -> PackedTree:
    """The trie of `seqs`, numbered deepest subtree first. Sorting makes the longest common prefix with the
    previous sequence the longest with any earlier one, so each sequence adds exactly its unshared suffix."""
    order = sorted(range(len(seqs)), key=lambda i: list(seqs[i]))
    tokens: list[int] = []
    parent: list[int] = []
    depth: list[int] = []
    seq_nodes: list[list[int]] = [[] for _ in seqs]
    prev: list[int] = []
    prev_nodes: list[int] = []
    for i in order:
        s = [int(t) for t in seqs[i]]
        k = _lcp(prev, s)
        nodes = prev_nodes[:k]
        for d in range(k, len(s)):
            tokens.append(s[d])
            parent.append(nodes[-1] if nodes else -1)
            depth.append(d)
            nodes.append(len(tokens) - 1)
        seq_nodes[i] = nodes
        prev, prev_nodes = s, nodes
    return _deepest_first(PackedTree(tokens, parent, depth, seq_nodes))


def _deepest_first(t: PackedTree) -> PackedTree:
    """`t` renumbered in depth-first order visiting the child with the deepest subtree first (ties: the
    lexicographic order), so the longest path comes first. Parents still precede children."""
    n = len(t)
    height = [1] * n  # nodes on the longest path down from each node; children come after their parent
    children: list[list[int]] = [[] for _ in range(n)]
    roots = []
    for i in range(n - 1, -1, -1):
        p = t.parent[i]
        if p >= 0:
            height[p] = max(height[p], height[i] + 1)
    for i, p in enumerate(t.parent):
        (children[p] if p >= 0 else roots).append(i)
    new_of = [0] * n
    stack = sorted(roots, key=lambda c: -height[c])[::-1]
    k = 0
    while stack:
        i = stack.pop()
        new_of[i] = k
        k += 1
        stack.extend(sorted(children[i], key=lambda c: -height[c])[::-1])
    old_of = sorted(range(n), key=new_of.__getitem__)
    return PackedTree(
        tokens=[t.tokens[i] for i in old_of],
        parent=[new_of[t.parent[i]] if t.parent[i] >= 0 else -1 for i in old_of],
        depth=[t.depth[i] for i in old_of],
        seq_nodes=[[new_of[i] for i in nodes] for nodes in t.seq_nodes],
    )


MIN_SHARED = 16  # leading tokens two sequences must share to be packed into one tree


def group_by_prefix(
    seqs: Sequence[Sequence[int]], max_nodes: int, min_shared: int = MIN_SHARED
) -> list[list[int]]:
    """Split sequence indices into groups, each packed as one tree of at most `max_nodes` nodes (a single longer
    sequence gets a group of its own). Neighbours in sorted order sharing fewer than `min_shared` leading
    tokens start a new group (an identical or nested sequence always joins): unrelated documents that merely
    start alike gain a few tokens from one tree but grow its dense mask, and every tree of a batch is padded
    to the largest, so attention cost grows with the square of the biggest tree."""
    order = sorted(range(len(seqs)), key=lambda i: list(seqs[i]))
    groups: list[list[int]] = []
    size, prev = 0, None
    for i in order:
        s = seqs[i]
        shared = _lcp(prev, s) if prev is not None else 0
        new = len(s) - shared
        nested = prev is not None and shared == min(len(prev), len(s))
        if prev is None or (shared < min_shared and not nested) or size + new > max_nodes:
            groups.append([i])
            size = len(s)
        else:
            groups[-1].append(i)
            size += new
        prev = s
    return groups


def tree_batch(trees: Sequence[PackedTree], pad_id: int, device: torch.device):
    """Right-padded batch of packed trees: (input_ids [B, N], position_ids [B, N], mask bool [B, 1, N, N]).
    Padding nodes see only themselves (a fully masked row would make attention NaN) and nobody sees them."""
    n = max(len(t) for t in trees)
    ids = torch.full((len(trees), n), pad_id, dtype=torch.long)
    pos = torch.zeros((len(trees), n), dtype=torch.long)
    mask = np.zeros((len(trees), 1, n, n), dtype=bool)
    idx = np.arange(n)
    for b, t in enumerate(trees):
        k = len(t)
        ids[b, :k] = torch.tensor(t.tokens)
        pos[b, :k] = torch.tensor(t.depth)
        mask[b, 0, :k, :k] = t.ancestor_mask()
        mask[b, 0, idx[k:], idx[k:]] = True
    return ids.to(device), pos.to(device), torch.from_numpy(mask).to(device)


def attention_mask_for(model, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask in the form the model's attention implementation takes: bool for SDPA, additive for eager.
    Kernels that only know causal/padding masks (flash-attention) cannot run a tree."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return mask
    if impl == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    raise ValueError(
        f"prefix sharing needs an attention implementation that takes a custom mask (sdpa or eager), "
        f"the model uses {impl!r}; set sharing.enabled=false or load the model with attn_implementation='sdpa'"
    )
