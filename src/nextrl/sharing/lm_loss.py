"""The next-token loss of many sequences that share prefixes, computed on their prefix tree.

The RL step's next-token term (`rl.lm_coef`) trains on the text its positions read (one chain per document
stripe) and on "context <think></think> x_t" for every position (an empty thought changes nothing). All of
these nest in the stripe's text: eight positions of a 512-token stripe are eight copies of nearly the same
512 tokens. Packed as a trie (`prefix_tree`), each shared token is encoded once and its gradient accumulates
from every sequence that reads it; the result equals one forward per sequence (tests check it against the plain
path, `nextrl.model.lm.lm_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nextrl.accounting.flops import TokenWork
from nextrl.sharing.logprobs import _autocast
from nextrl.sharing.prefix_tree import attention_mask_for, build_tree, group_by_prefix, tree_batch


def tree_token_nll(
    model,
    seqs: Sequence[Sequence[int]],
    starts: Sequence[int],
    pad_id: int,
    autocast: torch.dtype | None = None,
    max_nodes: int = 4096,
    work: TokenWork | None = None,
) -> torch.Tensor:
    """Per sequence, the summed next-token NLL of its targets `seqs[i][j + 1]` for `j >= starts[i]` -> [len(seqs)]
    fp32, with gradient. A sequence's last token is only a target, so the trie holds every sequence without it;
    a (node, target) pair read by several sequences is projected to the vocabulary once."""
    device = next(model.parameters()).device
    out = torch.zeros(len(seqs), dtype=torch.float32, device=device)
    live = [i for i, s in enumerate(seqs) if len(s) - 1 > starts[i]]
    if not live:
        return out
    inputs = [list(seqs[i][:-1]) for i in live]
    groups = group_by_prefix(inputs, max_nodes)
    trees = [build_tree([inputs[k] for k in g]) for g in groups]
    ids, pos, mask = tree_batch(trees, pad_id, device)
    row_of: dict[tuple[int, int], int] = {}
    rows, cols, slot, target, owner = [], [], [], [], []
    for b, (g, t) in enumerate(zip(groups, trees, strict=True)):
        if work is not None:
            work.add(len(t), sum(t.depth) + len(t))
        for k, q in enumerate(g):
            i = live[q]
            nodes, s = t.seq_nodes[k], seqs[i]
            for j in range(starts[i], len(s) - 1):
                key = (b, nodes[j])
                if key not in row_of:
                    row_of[key] = len(rows)
                    rows.append(b)
                    cols.append(nodes[j])
                slot.append(row_of[key])
                target.append(int(s[j + 1]))
                owner.append(i)
    if work is not None:
        work.add(0, 0, logits=len(rows))
    dtype = autocast or next(model.parameters()).dtype
    with _autocast(device, autocast):
        hidden = model.base_model(
            input_ids=ids, position_ids=pos, attention_mask=attention_mask_for(model, mask, dtype)
        ).last_hidden_state
        logits = model.get_output_embeddings()(
            hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        )
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp[torch.tensor(slot, device=device), torch.tensor(target, device=device)]
    return out.index_add(0, torch.tensor(owner, device=device), nll)
