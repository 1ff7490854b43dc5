"""`PrefixSharingSampler`: sampling where prompts that share a prefix are encoded once and branch from it.

Prompts are grouped into prefix trees (`nextrl.sharing.prefix_tree`): the G samples of a position share its whole
prompt, and positions of one document stripe share the document prefix. Each tree is one row of the KV cache:
the prefill encodes every distinct prompt token once, and the decode steps append one key/value per live
branch to its row. A branch's query sees the ancestors of its prompt's last node plus its own generated tokens,
through an explicit 4D attention mask, so every sample sees exactly what it would see alone (same tokens,
same positions). No prompt key/value is ever copied per sample.

Decoding mechanics (phases, forced tokens, EOS, log-probs before top-p) are the sampling core's
(`engine/core.py`), as in the plain sampler. The forward is nextrl's lean one (`lean_forward`: fused
projections, a KV buffer written in place) where the model is a Llama/Mistral/Qwen-style decoder or Gemma 3,
else the Hugging Face module with its `DynamicCache` (`decode="hf"` forces it: the reference the lean forward
is tested against). Hugging Face applies no sliding window to a custom 4D mask, so for a model with
sliding-window layers (Gemma 3) the module path keeps the position of every cache column and hands the model
one mask per layer type, the sliding one windowed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache

from nextrl.engine.base import Rollout, SamplingParams
from nextrl.engine.core import (
    SequenceState,
    autocast_to,
    check_call,
    decode_step,
    device_of,
    new_states,
    to_rollouts,
)
from nextrl.engine.lean_forward import SLIDING, LeanForward, sliding_window_of, supports
from nextrl.engine.sampler import TorchSampler
from nextrl.errors import ConfigError
from nextrl.sharing.branch_attention import window_mask
from nextrl.sharing.prefix_tree import PackedTree, attention_mask_for, build_tree, group_by_prefix, tree_batch


class PrefixSharingSampler(TorchSampler):
    """A `RolloutEngine` with the same contract and RNG handling as `TorchSampler`; `batch_size` bounds the
    samples decoded together, `max_nodes` the prompt tokens packed into one tree; `decode` picks the forward
    ("auto": lean where `lean_forward.supports` the model, "lean", or "hf")."""

    def __init__(self, *args, max_nodes: int = 4096, decode: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.max_nodes = max_nodes
        if getattr(self.model.config, "final_logit_softcapping", None) is not None:
            raise ConfigError(
                "the model's config sets final_logit_softcapping, which the prefix-sharing sampler's head (the "
                "bare output embeddings) does not apply; set sharing.enabled=false"
            )
        reason = supports(self.model)
        if decode == "lean" and reason is not None:
            raise ConfigError(
                f"config key 'sampling.decode': lean needs a Llama-style decoder or Gemma 3, not {reason}"
            )
        if decode not in ("auto", "lean", "hf"):
            raise ConfigError(f"config key 'sampling.decode': {decode!r} is not auto, lean or hf")
        self.lean = LeanForward(self.model) if decode != "hf" and reason is None else None
        if decode == "auto" and reason is not None:  # said once per sampler: the module path is slower
            warnings.warn(
                f"sampling.decode=auto: the lean forward does not cover this model ({reason}); the prefix-sharing "
                "sampler decodes through the Hugging Face module",
                stacklevel=2,
            )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Rollout]]:
        check_call(prompts, params)
        groups = group_by_prefix(prompts, self.max_nodes)
        seqs = [new_states(p, params, i) for i, p in enumerate(prompts)]
        with self._inference():
            if self.lean is not None:
                self.lean.refresh()  # the learner changed the weights in place since the last call
            chunk: list[list[int]] = []
            for g in groups:  # whole trees per chunk, about batch_size samples per chunk
                if chunk and (sum(map(len, chunk)) + len(g)) * params.n > self.batch_size:
                    self._run_trees(chunk, prompts, seqs, params)
                    chunk = []
                chunk.append(g)
            if chunk:
                self._run_trees(chunk, prompts, seqs, params)
        return to_rollouts(seqs, params, self.policy_version)

    def _run_trees(
        self,
        groups: list[list[int]],
        prompts: Sequence[Sequence[int]],
        seqs: list[list[SequenceState]],
        params: SamplingParams,
    ) -> None:
        t_start = time.perf_counter()
        model, device = self.model, device_of(self.model)
        gen = self._generator(device)
        trees: list[PackedTree] = [build_tree([prompts[i] for i in g]) for g in groups]
        for t in trees:
            self.last_work["prefill"].add(len(t), sum(t.depth) + len(t))
        # logits: once per distinct prompt (its samples share the first distribution; projected below)
        self.last_work["prefill"].add(0, 0, logits=sum(len({s[-1] for s in t.seq_nodes}) for t in trees))
        ids, pos, mask = tree_batch(trees, self.pad_token_id, device)
        dtype = self.autocast_dtype or next(model.parameters()).dtype
        cache = self.lean.new_cache() if self.lean is not None else _PositionedCache()
        # Branch slots per row: (sequence, prompt's last node, prompt length). Slot q of row b is query q.
        slots = [
            [
                (seqs[i][k], t.seq_nodes[j][-1], len(prompts[i]))
                for j, i in enumerate(g)
                for k in range(params.n)
            ]
            for g, t in zip(groups, trees, strict=True)
        ]
        q_max = max(len(s) for s in slots)
        # vis[b, q, c]: slot q of row b may attend to cache column c. It starts as its prompt node's ancestors.
        vis = torch.zeros((len(trees), q_max, ids.shape[1]), dtype=torch.bool, device=device)
        for b, row in enumerate(slots):
            nodes = torch.tensor([node for _, node, _ in row], device=device)
            vis[b, : len(row)] = mask[b, 0, nodes]
        with autocast_to(device, self.autocast_dtype):
            hidden = self._forward(ids, pos, mask, cache, dtype, trunk=min(t.trunk for t in trees))
        rows_alive = list(range(len(trees)))  # cache row r holds tree rows_alive[r]
        # The first token of every sample of a prompt comes from the same logits: project each node once.
        live = [(b, q) for b, row in enumerate(slots) for q in range(len(row)) if row[q][0].finish is None]
        nodes = [(b, slots[b][q][1]) for b, q in live]
        distinct = sorted(set(nodes))
        slot_of = {n: k for k, n in enumerate(distinct)}
        which = torch.tensor([slot_of[n] for n in nodes], device=device, dtype=torch.long)
        with autocast_to(device, self.autocast_dtype):
            logits = model.get_output_embeddings()(
                hidden[[b for b, _ in distinct], [n for _, n in distinct]]
            )[which]
        t_decode = time.perf_counter()
        self.last_seconds["prefill"] += t_decode - t_start
        try:
            self._decode_trees(trees, slots, live, logits, cache, vis, rows_alive, params, gen, dtype)
        finally:
            self.last_seconds["decode"] += time.perf_counter() - t_decode

    def _decode_trees(self, trees, slots, live, logits, cache, vis, rows_alive, params, gen, dtype) -> None:
        """Sample every live branch one token per step from the trees' shared cache until all have ended."""
        model, device = self.model, device_of(self.model)
        while True:
            if live:
                decode_step([slots[b][q][0] for b, q in live], logits, params, gen, device)
            live = [
                (b, q) for b, row in enumerate(slots) for q in range(len(row)) if row[q][0].finish is None
            ]
            if not live:
                return
            # Drop cache rows whose branches all finished, so they stop costing compute.
            keep = sorted({b for b, _ in live})
            if len(keep) < len(rows_alive):
                r_sel = [rows_alive.index(b) for b in keep]
                sel = torch.tensor(r_sel, device=device)
                cache.batch_select_indices(sel)
                vis = vis[sel]
                rows_alive = keep
            step = self._step_queries(slots, live, rows_alive, vis, device)
            vis = step.vis
            with autocast_to(device, self.autocast_dtype):
                h = self._forward(step.ids, step.pos, step.mask, cache, dtype)
                logits = model.get_output_embeddings()(h[step.rows, step.cols])
            # rows of `logits` follow (row, column) order = live order (per_row lists are in slot order)
            live = [
                (rows_alive[r], step.per_row[rows_alive[r]][c])
                for r, c in zip(step.rows.tolist(), step.cols.tolist(), strict=True)
            ]

    def _step_queries(self, slots, live, rows_alive, vis, device) -> _StepQueries:
        """One decode step's queries: the live slots of each alive cache row, padded with dummy queries that see
        only their own new column (a fully masked row would be NaN) and that nobody else sees; their mask, and
        `vis` grown by the step's new columns. Counts the step's decode work."""
        per_row: dict[int, list[int]] = {b: [] for b in rows_alive}
        for b, q in live:
            per_row[b].append(q)
        width = max(len(qs) for qs in per_row.values())
        n_rows = len(rows_alive)
        # built as lists and converted once: element-wise tensor writes cost ~1 ms per iteration
        ids_l, pos_l, slot_l, real_l = [], [], [], []
        for b in rows_alive:
            qs = per_row[b]
            pad = width - len(qs)
            seqs_ = [slots[b][q] for q in qs]
            ids_l.append([s.ids[-1] for s, _, _ in seqs_] + [self.pad_token_id] * pad)
            pos_l.append([plen + len(s.ids) - 1 for s, _, plen in seqs_] + [0] * pad)
            slot_l.append(qs + [0] * pad)
            real_l.append([True] * len(qs) + [False] * pad)
        n_real = len(live)
        # dummy queries have position 0 and are not counted
        self.last_work["decode"].add(n_real, sum(map(sum, pos_l)) + n_real, logits=n_real)
        inp, qpos = torch.tensor(ids_l, device=device), torch.tensor(pos_l, device=device)
        qslot, real = torch.tensor(slot_l, device=device), torch.tensor(real_l, device=device)
        old = torch.gather(vis, 1, qslot[:, :, None].expand(-1, -1, vis.shape[2]))
        old = old & real[:, :, None]  # dummy queries see no old column
        eye = torch.eye(width, dtype=torch.bool, device=device).expand(n_rows, -1, -1)
        step_mask = torch.cat([old, eye], dim=2)[:, None]
        # New column c holds the token of slot qslot[r, c]: only that slot sees it from now on.
        new_cols = torch.zeros((n_rows, vis.shape[1], width), dtype=torch.bool, device=device)
        rr, cc = real.nonzero(as_tuple=True)
        new_cols[rr, qslot[rr, cc], cc] = True
        return _StepQueries(inp, qpos, step_mask, torch.cat([vis, new_cols], dim=2), rr, cc, per_row)

    def _forward(self, ids, pos, mask, cache, dtype, trunk: int = 0) -> torch.Tensor:
        """Hidden states of new tokens `ids` at `pos` that see what the bool `mask` allows, appended to `cache`
        (`trunk`: the leading tokens of every row that see exactly the ones before them; lean forward only)."""
        if self.lean is not None:
            return self.lean(ids, pos, mask, cache, trunk)
        attn = attention_mask_for(self.model, mask, dtype)
        window = sliding_window_of(self.model)
        if window is not None:  # one mask per layer type: the module would apply the full mask everywhere
            cache.key_pos = pos if cache.key_pos is None else torch.cat([cache.key_pos, pos], dim=1)
            slide = attention_mask_for(self.model, window_mask(mask, pos, cache.key_pos, window), dtype)
            attn = {"full_attention": attn, SLIDING: slide}
        return self.model.base_model(
            input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True
        ).last_hidden_state


class _StepQueries(NamedTuple):
    """A decode step's queries, [rows, width] with dummy queries padding rows of fewer live branches."""

    ids: torch.Tensor  # each query's input token (the branch's last token)
    pos: torch.Tensor  # its position id
    mask: torch.Tensor  # [rows, 1, width, columns + width]: the cache columns and new columns it sees
    vis: torch.Tensor  # which slot sees which column, grown by the step's new columns
    rows: torch.Tensor  # (rows, cols): the real queries, in live order
    cols: torch.Tensor
    per_row: dict[int, list[int]]  # tree row -> the slots it queries this step, in column order


class _PositionedCache(DynamicCache):
    """The module path's cache, which also keeps the position id of every column ([R, length]; a sliding
    window is measured in positions, and a tree's columns are not in position order)."""

    key_pos: torch.Tensor | None = None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.key_pos is not None:
            self.key_pos = self.key_pos[indices]
