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

import numpy as np
import torch

from nextrl.accounting.flops import TokenWork
from nextrl.model.fsdp import base_forward
from nextrl.model.head import head_weight, picked_logprobs
from nextrl.sharing.branch_attention import BranchLayout, branch_attention
from nextrl.sharing.prefix_tree import build_tree, group_by_prefix


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def _picked_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(target) at `temperature` (0 = greedy, read at 1) per row of `hidden`, fp32, with gradient: the
    chunked head (`nextrl.model.head`), no [rows x vocabulary] logits tensor and its log-softmax copies."""
    return picked_logprobs(hidden, head_weight(model), targets, temperature)


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
        hidden = base_forward(model)(input_ids=ids, attention_mask=attn).last_hidden_state
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
    """Same result as `completion_logprobs`, computed with each shared prompt prefix encoded once: the prompts
    of a group (at most `max_nodes` prompt tokens) form a prefix tree, and every completion is a branch from
    its prompt's last node (`branch_attention`). All groups of the call go through one batched forward."""
    logp, _ = tree_logprobs_and_nll(
        model, prompts, completions, temperature, pad_id, autocast, max_nodes, work
    )
    return logp


def tree_logprobs_and_nll(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    temperature: float,
    pad_id: int,
    autocast: torch.dtype | None = None,
    max_nodes: int = 4096,
    work: TokenWork | None = None,
    lm_seqs: Sequence[Sequence[int]] = (),
    lm_starts: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """`tree_completion_logprobs` of the completions, and in the same forward the summed next-token NLL (at
    temperature 1) of each of `lm_seqs`' targets `lm_seqs[i][j + 1]` for `j >= lm_starts[i]` -> ([N, max
    completion len], [len(lm_seqs)] fp32), both with gradient.

    The RL step's next-token term reads the text its positions read, and "context <think></think> x_t": these
    nest in the same prompt trees as the rollouts' prompts. Put into those trees (each sequence without its
    last token, a target only), they cost the trie a few nodes per position and the vocabulary projection of
    their targets, instead of a forward and backward of their own over the same prefix."""
    device = next(model.parameters()).device
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: there is no token to condition the first completion token on")
    N = len(prompts)
    lm_live = [i for i, s in enumerate(lm_seqs) if len(s) - 1 > lm_starts[i]]
    inputs = [list(p) for p in prompts] + [list(lm_seqs[i][:-1]) for i in lm_live]
    groups = group_by_prefix(inputs, max_nodes)
    trees = [build_tree([inputs[i] for i in g]) for g in groups]
    # branch inputs: each completion without its last token (a target only), packed end to end per row
    blen = [max(len(c) - 1, 0) for c in completions]
    B, Np = len(groups), max(len(t) for t in trees)
    Nb = max(sum(blen[i] for i in g if i < N) for g in groups)
    ids = torch.full((B, Np + Nb), pad_id, dtype=torch.long)
    pos = torch.zeros((B, Np + Nb), dtype=torch.long)
    prefix_mask = np.zeros((B, 1, Np, Np), dtype=bool)
    branch_mask = np.zeros((B, 1, Nb, Np + Nb), dtype=bool)
    causal = np.tril(np.ones((max(blen, default=0),) * 2, dtype=bool))
    diag = np.arange(max(Np, Nb))
    # For each (sequence, completion token): the row of the hidden state that predicts it. A prompt's last node
    # predicts the first token of each of its samples and is projected to the vocabulary once for all of them.
    # The lm targets have rows of their own (another temperature); a node both need is projected twice.
    row_of: dict[tuple[int, int], int] = {}
    rows, cols, where, slot, tgts = [], [], [], [], []
    lm_row_of: dict[tuple[int, int], int] = {}
    lm_rows, lm_cols, lm_slot, lm_tgts, lm_owner = [], [], [], [], []
    for b, (g, t) in enumerate(zip(groups, trees, strict=True)):
        n = len(t)
        ids[b, :n] = torch.tensor(t.tokens)
        pos[b, :n] = torch.tensor(t.depth)
        anc = t.ancestor_mask()
        prefix_mask[b, 0, :n, :n] = anc
        prefix_mask[b, 0, diag[n:Np], diag[n:Np]] = True  # padding nodes see themselves only
        if work is not None:
            work.add(n, sum(t.depth) + n)
        off = 0  # where the next branch starts in the packed region
        for k, i in enumerate(g):
            if i >= N:  # an lm sequence: its targets are predicted by its own trie nodes
                q = lm_live[i - N]
                s, nodes = lm_seqs[q], t.seq_nodes[k]
                for j in range(lm_starts[q], len(s) - 1):
                    key = (b, nodes[j])
                    if key not in lm_row_of:
                        lm_row_of[key] = len(lm_rows)
                        lm_rows.append(b)
                        lm_cols.append(nodes[j])
                    lm_slot.append(lm_row_of[key])
                    lm_tgts.append(int(s[j + 1]))
                    lm_owner.append(q)
                continue
            last, plen, comp, m = t.seq_nodes[k][-1], len(prompts[i]), list(completions[i]), blen[i]
            if m:
                ids[b, Np + off : Np + off + m] = torch.tensor(comp[:m])
                pos[b, Np + off : Np + off + m] = torch.arange(plen, plen + m)
                bm = branch_mask[b, 0, off : off + m]
                bm[:, :n] = anc[last]
                bm[:, Np + off : Np + off + m] = causal[:m, :m]
            if work is not None:
                work.add(m, m * plen + m * (m + 1) // 2)
            for j, tok in enumerate(comp):
                key = (b, last if j == 0 else Np + off + j - 1)
                if key not in row_of:
                    row_of[key] = len(rows)
                    rows.append(b)
                    cols.append(key[1])
                where.append((i, j))
                slot.append(row_of[key])
                tgts.append(tok)
            off += m
        # padding at the end of the packed region sees its own column only (a fully masked row would be NaN)
        branch_mask[b, 0, diag[off:Nb], Np + diag[off:Nb]] = True
    if work is not None:
        work.add(0, 0, logits=len(rows) + len(lm_rows))
    layout = BranchLayout(
        Np,
        torch.from_numpy(prefix_mask).to(device),
        torch.from_numpy(branch_mask).to(device),
        trunk=min(t.trunk for t in trees),
        positions=pos.to(device),
    )
    with _autocast(device, autocast), branch_attention(model):
        hidden = base_forward(model)(
            input_ids=ids.to(device),
            position_ids=pos.to(device),
            attention_mask=layout.prefix_mask,
            layout=layout,
        ).last_hidden_state
        r = torch.tensor(rows + lm_rows, device=device, dtype=torch.long)
        c = torch.tensor(cols + lm_cols, device=device, dtype=torch.long)
        projected = hidden[r, c]  # the distinct rows; the chunked head never holds their full logits
        # one pass of the chunked head for both terms: the rollouts' rows at the sampling temperature, the
        # next-token term's at 1 (one weight gradient of [V x H], not one per term)
        row_t = torch.tensor([float(temperature)] * len(rows) + [1.0] * len(lm_rows), device=device)
        both = picked_logprobs(
            projected,
            head_weight(model),
            torch.tensor(tgts + lm_tgts, device=device, dtype=torch.long),
            row_t,
            row_of=torch.tensor(slot + [len(rows) + k for k in lm_slot], device=device, dtype=torch.long),
        )
        picked, lm_picked = both[: len(tgts)], both[len(tgts) :]
    Tc = max((len(c) for c in completions), default=0)
    out = torch.zeros((N, Tc), dtype=torch.float32, device=device)
    if where:
        wi = torch.tensor([w[0] for w in where], device=device)
        wj = torch.tensor([w[1] for w in where], device=device)
        out = out.index_put((wi, wj), picked)
    nll = torch.zeros(len(lm_seqs), dtype=torch.float32, device=device)
    if lm_slot:
        nll = nll.index_add(0, torch.tensor(lm_owner, device=device), -lm_picked)
    return out, nll
