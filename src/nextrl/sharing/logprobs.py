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


class _Picks:
    """Target tokens and the hidden-state row (batch row, column) that predicts each. A row several targets
    share (a prompt's last node predicts the first token of each of its samples) is listed once, so it is
    projected to the vocabulary once."""

    def __init__(self):
        self.row_of: dict[tuple[int, int], int] = {}
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.slot: list[int] = []  # per target: its row's index in rows/cols
        self.tgts: list[int] = []

    def add(self, b: int, col: int, token: int) -> None:
        key = (b, col)
        if key not in self.row_of:
            self.row_of[key] = len(self.rows)
            self.rows.append(b)
            self.cols.append(col)
        self.slot.append(self.row_of[key])
        self.tgts.append(token)


class _TreeBatch:
    """The input of one branch-attention forward: per batch row, a prompt trie (`Np` columns, padded) followed
    by the completions that branch from it, packed end to end (`Nb` columns), with their position ids and the
    two masks of `BranchLayout`. The tokens each piece processes are added to `work`."""

    def __init__(self, trees, n_branch: int, pad_id: int, max_branch: int, work: TokenWork | None):
        B, self.Np, self.Nb = len(trees), max(len(t) for t in trees), n_branch
        self.ids = torch.full((B, self.Np + self.Nb), pad_id, dtype=torch.long)
        self.pos = torch.zeros((B, self.Np + self.Nb), dtype=torch.long)
        self.prefix_mask = np.zeros((B, 1, self.Np, self.Np), dtype=bool)
        self.branch_mask = np.zeros((B, 1, self.Nb, self.Np + self.Nb), dtype=bool)
        self.causal = np.tril(np.ones((max_branch,) * 2, dtype=bool))
        self.diag = np.arange(max(self.Np, self.Nb))
        self.trunk = min(t.trunk for t in trees)
        self.work = work

    def add_trie(self, b: int, t) -> np.ndarray:
        """Row b's prompt trie; returns its ancestor mask (a branch sees its prompt's ancestors)."""
        n, Np, diag = len(t), self.Np, self.diag
        self.ids[b, :n] = torch.tensor(t.tokens)
        self.pos[b, :n] = torch.tensor(t.depth)
        anc = t.ancestor_mask()
        self.prefix_mask[b, 0, :n, :n] = anc
        self.prefix_mask[b, 0, diag[n:Np], diag[n:Np]] = True  # padding nodes see themselves only
        if self.work is not None:
            self.work.add(n, sum(t.depth) + n)
        return anc

    def add_branch(self, b: int, off: int, tokens: list[int], plen: int, sees: np.ndarray) -> None:
        """A completion's inputs (without its last token) at offset `off` of row b's packed region, seeing the
        trie nodes `sees` (its prompt's last node and ancestors) and its own earlier tokens."""
        m, Np = len(tokens), self.Np
        if m:
            self.ids[b, Np + off : Np + off + m] = torch.tensor(tokens)
            self.pos[b, Np + off : Np + off + m] = torch.arange(plen, plen + m)
            bm = self.branch_mask[b, 0, off : off + m]
            bm[:, : len(sees)] = sees
            bm[:, Np + off : Np + off + m] = self.causal[:m, :m]
        if self.work is not None:
            self.work.add(m, m * plen + m * (m + 1) // 2)

    def close_row(self, b: int, off: int) -> None:
        # padding at the end of the packed region sees its own column only (a fully masked row would be NaN)
        self.branch_mask[b, 0, self.diag[off : self.Nb], self.Np + self.diag[off : self.Nb]] = True

    def layout(self, device) -> BranchLayout:
        return BranchLayout(
            self.Np,
            torch.from_numpy(self.prefix_mask).to(device),
            torch.from_numpy(self.branch_mask).to(device),
            trunk=self.trunk,
            positions=self.pos.to(device),
        )


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
    batch, picks, lm_picks, where, lm_owner = _pack(
        prompts, completions, lm_seqs, lm_starts, pad_id, max_nodes, work
    )
    if work is not None:
        work.add(0, 0, logits=len(picks.rows) + len(lm_picks.rows))
    picked, lm_picked = _forward_picks(model, batch, picks, lm_picks, temperature, autocast, device)
    Tc = max((len(c) for c in completions), default=0)
    out = torch.zeros((len(prompts), Tc), dtype=torch.float32, device=device)
    if where:
        wi = torch.tensor([w[0] for w in where], device=device)
        wj = torch.tensor([w[1] for w in where], device=device)
        out = out.index_put((wi, wj), picked)
    nll = torch.zeros(len(lm_seqs), dtype=torch.float32, device=device)
    if lm_picks.slot:
        nll = nll.index_add(0, torch.tensor(lm_owner, device=device), -lm_picked)
    return out, nll


@torch.no_grad()
def tree_next_token_log_probs(
    model,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    autocast: torch.dtype | None = None,
    max_nodes: int = 4096,
) -> torch.Tensor:
    """The whole next-token distribution after each prompt, log-softmax at temperature 1 -> [N, V] fp32, without
    gradient: the prompts packed as prefix trees (a shared document prefix encoded once), and only each
    prompt's last row projected to the vocabulary. For reading an answer from two distributions at once (the
    aside format's mixing); [N, V] is held, so callers pass prompts in slices."""
    if not prompts:
        return torch.zeros((0, head_weight(model).size(0)))
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: there is no token to condition the next token on")
    device = next(model.parameters()).device
    # one dummy completion token per prompt: its pick is the prompt's last node (a completion of one token
    # adds no branch input)
    batch, picks, _, where, _ = _pack(prompts, [[0]] * len(prompts), (), (), pad_id, max_nodes, None)
    layout = batch.layout(device)
    with _autocast(device, autocast), branch_attention(model):
        hidden = base_forward(model)(
            input_ids=batch.ids.to(device),
            position_ids=batch.pos.to(device),
            attention_mask=layout.prefix_mask,
            layout=layout,
        ).last_hidden_state
    rows = hidden[torch.tensor(picks.rows, device=device), torch.tensor(picks.cols, device=device)]
    logp = torch.log_softmax(rows.float() @ head_weight(model).float().T, dim=-1)
    slot = [0] * len(prompts)
    for k, (i, _) in enumerate(where):
        slot[i] = picks.slot[k]
    return logp[torch.tensor(slot, device=device)]


def _pack(prompts, completions, lm_seqs, lm_starts, pad_id: int, max_nodes: int, work: TokenWork | None):
    """The prompts and the lm sequences with a target (each without its last token) grouped into prompt
    tries, the completions branching from them, and the targets each hidden-state row predicts: (batch, the
    completions' picks, the lm picks, (sequence, token) of each completion pick, lm sequence of each lm pick)."""
    N = len(prompts)
    lm_live = [i for i, s in enumerate(lm_seqs) if len(s) - 1 > lm_starts[i]]
    inputs = [list(p) for p in prompts] + [list(lm_seqs[i][:-1]) for i in lm_live]
    groups = group_by_prefix(inputs, max_nodes)
    trees = [build_tree([inputs[i] for i in g]) for g in groups]
    # branch inputs: each completion without its last token (a target only), packed end to end per row
    blen = [max(len(c) - 1, 0) for c in completions]
    Nb = max(sum(blen[i] for i in g if i < N) for g in groups)
    batch = _TreeBatch(trees, Nb, pad_id, max(blen, default=0), work)
    # For each (sequence, completion token): the row of the hidden state that predicts it. The lm targets have
    # rows of their own (another temperature); a node both need is projected twice.
    picks, lm_picks = _Picks(), _Picks()
    where, lm_owner = [], []
    for b, (g, t) in enumerate(zip(groups, trees, strict=True)):
        anc = batch.add_trie(b, t)
        off = 0  # where the next branch starts in the packed region
        for k, i in enumerate(g):
            nodes = t.seq_nodes[k]
            if i >= N:  # an lm sequence: its targets are predicted by its own trie nodes
                q = lm_live[i - N]
                for j in range(lm_starts[q], len(lm_seqs[q]) - 1):
                    lm_picks.add(b, nodes[j], int(lm_seqs[q][j + 1]))
                    lm_owner.append(q)
                continue
            last, comp = nodes[-1], list(completions[i])
            batch.add_branch(b, off, comp[: blen[i]], len(prompts[i]), anc[last])
            # completion token j is predicted by the prompt's last node (j = 0) or by branch token j - 1
            for j, tok in enumerate(comp):
                picks.add(b, last if j == 0 else batch.Np + off + j - 1, tok)
                where.append((i, j))
            off += blen[i]
        batch.close_row(b, off)
    return batch, picks, lm_picks, where, lm_owner


def _forward_picks(
    model, batch: _TreeBatch, picks: _Picks, lm_picks: _Picks, temperature: float, autocast, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One branch-attention forward of `batch`, and the log-probs of both kinds of targets: the rollouts' at
    the sampling temperature, the next-token term's at 1, in one pass of the chunked head (one weight gradient
    of [V x H], not one per term). The distinct rows are projected; no full logits are held."""
    layout = batch.layout(device)
    with _autocast(device, autocast), branch_attention(model):
        pos = batch.pos.to(device)
        hidden = base_forward(model)(
            input_ids=batch.ids.to(device), position_ids=pos, attention_mask=layout.prefix_mask, layout=layout
        ).last_hidden_state
        r = torch.tensor(picks.rows + lm_picks.rows, device=device, dtype=torch.long)
        c = torch.tensor(picks.cols + lm_picks.cols, device=device, dtype=torch.long)
        n = len(picks.rows)
        row_t = torch.tensor([float(temperature)] * n + [1.0] * len(lm_picks.rows), device=device)
        both = picked_logprobs(
            hidden[r, c],
            head_weight(model),
            torch.tensor(picks.tgts + lm_picks.tgts, device=device, dtype=torch.long),
            row_t,
            row_of=torch.tensor(picks.slot + [n + k for k in lm_picks.slot], device=device, dtype=torch.long),
        )
    return both[: len(picks.tgts)], both[len(picks.tgts) :]
