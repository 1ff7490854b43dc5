"""Score positions with a proxy model, keep the hard ones, label buckets, split by document, and write the
position index (Parquet) that training and evaluation read."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nextrl.config import DataConfig, SelectionConfig
from nextrl.data import Document, split_of
from nextrl.data.shown_thoughts import tokenize_document
from nextrl.model.head import head_weight, topk_entropy_of_hidden
from nextrl.model.tokenizer import has_think_tokens, think_ids
from nextrl.positions.context import context_start
from nextrl.positions.entropy import bucket_of
from nextrl.utils.io import atomic_write_with
from nextrl.utils.progress import progress

COMPUTED = "computed"  # the bucket of positions whose next token is the result of a computation (synthetic)


@dataclass
class PositionIndex:
    """Tokenized documents and the selected positions (`position` t: predict token t from tokens[:t])."""

    doc_tokens: dict[str, np.ndarray]
    doc_split: dict[str, str]
    doc_id: list[str] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    bucket: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # inputs the document stream skipped, by reason

    def __len__(self) -> int:
        return len(self.position)

    def rows(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.split) if s == split]

    def units(self, split: str, context: int, per_unit: int, by_bucket: bool = False) -> list[list[int]]:
        """Rows of `split` grouped by shared prompt prefix: same document and same context stripe (see
        `context_start`) and, with `by_bucket`, same bucket; at most `per_unit` rows per group, each group in
        position order."""
        groups: dict[tuple[str, int, str], list[int]] = {}
        for r in self.rows(split):
            key = (
                self.doc_id[r],
                context_start(self.position[r], context),
                self.bucket[r] if by_bucket else "",
            )
            groups.setdefault(key, []).append(r)
        out = []
        for rows in groups.values():
            rows.sort(key=lambda r: self.position[r])
            out += [rows[i : i + per_unit] for i in range(0, len(rows), per_unit)]
        return out

    def prompt_geometry(self, split: str, context: int, per_unit: int) -> dict[str, float]:
        """How the prompts of `split` share prefixes, for the planner (`nextrl.plan`): `prompt_fill`, the mean
        prompt length over `context`; `unit_size`, the mean positions per prefix unit (`units`: at most
        `per_unit`, fewer where a document's positions fall in different context stripes); `unit_fill`, the
        mean length of a unit's shared prompt (to its last position) over `context`."""
        units = self.units(split, context, per_unit)
        if not units:
            return {"prompt_fill": 1.0, "unit_size": float(per_unit), "unit_fill": 1.0}
        starts = {r: context_start(self.position[r], context) for u in units for r in u}
        prompts = [self.position[r] - starts[r] for r in starts]
        return {
            "prompt_fill": float(np.mean(prompts)) / context,
            "unit_size": float(np.mean([len(u) for u in units])),
            "unit_fill": float(np.mean([self.position[u[-1]] - starts[u[-1]] for u in units])) / context,
        }

    def tasks(self, make_task, rows: list[int], context: int) -> list:
        """`make_task(doc_id, tokens, position, context, bucket)` for these rows (an environment's `make_task`)."""
        return [
            make_task(
                self.doc_id[r], self.doc_tokens[self.doc_id[r]], self.position[r], context, self.bucket[r]
            )
            for r in rows
        ]

    def stats(self) -> dict:
        return {
            "documents": len(self.doc_tokens),
            "positions": dict(Counter(self.split)),
            "buckets": dict(Counter(self.bucket)),
            "mean_entropy": _mean_scored(self.entropy),
            "skipped": dict(self.skipped),
        }

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        positions = pa.table(
            {
                "doc_id": self.doc_id,
                "position": pa.array(self.position, pa.int32()),
                "entropy": pa.array(self.entropy, pa.float32()),
                "bucket": self.bucket,
                "split": self.split,
            }
        ).replace_schema_metadata({"nextrl.skipped": json.dumps(self.skipped)})
        ids = list(self.doc_tokens)
        docs = pa.table(
            {
                "doc_id": ids,
                "split": [self.doc_split[i] for i in ids],
                "tokens": pa.array([self.doc_tokens[i].tolist() for i in ids], pa.list_(pa.int32())),
            }
        )
        atomic_write_with(folder / "positions.parquet", lambda p: pq.write_table(positions, p))
        atomic_write_with(folder / "documents.parquet", lambda p: pq.write_table(docs, p))

    @classmethod
    def load(cls, folder: str | Path) -> PositionIndex:
        folder = Path(folder)
        docs = pq.read_table(folder / "documents.parquet").to_pydict()
        table = pq.read_table(folder / "positions.parquet")
        meta = table.schema.metadata or {}
        pos = table.to_pydict()
        return cls(
            doc_tokens={
                d: np.asarray(t, dtype=np.int64) for d, t in zip(docs["doc_id"], docs["tokens"], strict=True)
            },
            doc_split=dict(zip(docs["doc_id"], docs["split"], strict=True)),
            doc_id=pos["doc_id"],
            position=pos["position"],
            entropy=pos["entropy"],
            bucket=pos["bucket"],
            split=pos["split"],
            skipped=json.loads(meta.get(b"nextrl.skipped", b"{}")),
        )


@torch.no_grad()
def score_document(
    model,
    tokens: np.ndarray,
    context: int,
    top_k: int,
    autocast: torch.dtype | None,
    device: torch.device,
    batch_size: int = 16,
) -> np.ndarray:
    """Proxy entropy before every token t >= 1 (index t: predicting tokens[t]); NaN where not scored.

    Windows of `context` tokens with stride context/2; a position is scored in the window where it has the
    most left context (at least context/2 tokens, except in the first window), close to what the policy sees."""
    n = len(tokens)
    ent = np.full(n, np.nan, dtype=np.float32)
    half = max(context // 2, 1)
    starts = list(range(0, max(n - context, 0) + 1, half))
    if starts[-1] + context < n:
        starts.append(n - context)
    x = torch.as_tensor(tokens, dtype=torch.long, device=device)
    windows = torch.stack([x[s : s + context] for s in starts]) if n >= context else x.unsqueeze(0)
    # The positions each window scores: i + 1 tokens of left context (all in the first window, the second
    # half after it) and a next token inside the document. Only their rows go through the vocabulary head.
    width = windows.size(1)
    w_of, i_of = [], []
    for w, s in enumerate(starts):
        i = np.arange(0 if s == 0 else half - 1, width)
        i = i[s + i + 1 < n]
        w_of.append(np.full(len(i), w))
        i_of.append(i)
    w_all, i_all = np.concatenate(w_of), np.concatenate(i_of)
    weight = head_weight(model)
    ctx = torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()
    for b in range(0, len(windows), batch_size):  # all windows of a document have one length: batch them
        sel = (w_all >= b) & (w_all < b + batch_size)
        with ctx:
            hidden = model.base_model(input_ids=windows[b : b + batch_size]).last_hidden_state
            rows = hidden[
                torch.as_tensor(w_all[sel] - b, device=device), torch.as_tensor(i_all[sel], device=device)
            ]
            ents = topk_entropy_of_hidden(rows, weight, top_k).cpu().numpy()
        ent[np.asarray(starts)[w_all[sel]] + i_all[sel] + 1] = ents  # entropy before tokens[s_w + i + 1]
    return ent


def select_positions(
    docs: list[Document],
    tokenizer,
    proxy,
    cfg: SelectionConfig,
    data: DataConfig,
    autocast: torch.dtype | None,
    device: torch.device,
    seed: int = 0,
    thought_ids: tuple[int, int] | None = None,
) -> PositionIndex:
    """Score each document with the proxy and keep its positions. `thought_ids` (the format's delimiters)
    write the thoughts a document shows beside its text into its tokens (`nextrl.data.shown_thoughts`).
    Without a proxy (`selection.proxy: none`) nothing is scored: only the `computed` positions are kept, with a
    NaN entropy (a corpus of marked spans needs no model pass, which on a real model is minutes)."""
    index = PositionIndex(doc_tokens={}, doc_split={})
    rng = np.random.default_rng(seed)
    if proxy is not None:
        proxy.eval()
    special = set(tokenizer.all_special_ids)
    for doc in progress(desc="select", unit="doc", total=len(docs), iterable=docs):
        tokens, computed_list = tokenize_document(doc, tokenizer, thought_ids, cfg.max_doc_tokens)
        if len(tokens) < cfg.skip_first + 2:
            continue
        split = split_of(doc.doc_id, data.heldout_fraction, data.seed)
        index.doc_tokens[doc.doc_id] = tokens
        index.doc_split[doc.doc_id] = split
        computed = set(computed_list)
        if proxy is None:
            ent = np.full(len(tokens), np.nan)  # no candidates: only the computed rows below
        else:
            ent = score_document(proxy, tokens, cfg.context, cfg.top_k, autocast, device, cfg.batch_size)
        # a thought shown beside the text is in the format's delimiters (which ordinary text uses too, for the
        # aside format), one written inline is in <think> … </think>
        inside = inside_thoughts(tokens, tokenizer, thought_ids if doc.thoughts else None)
        cand = [
            t
            for t in range(max(cfg.skip_first, 1), len(tokens))
            if not np.isnan(ent[t])
            and ent[t] > cfg.min_entropy
            and bucket_of(float(ent[t]), cfg.buckets)
            and int(tokens[t]) not in special  # a special token is not a next token of the text
            and not inside[t]  # a position inside a shown thought would nest thoughts in its prompt
            and t not in computed
        ]
        if len(cand) > cfg.max_positions_per_doc:
            cand = sorted(rng.choice(cand, cfg.max_positions_per_doc, replace=False).tolist())
        rows = [(t, bucket_of(float(ent[t]), cfg.buckets)) for t in cand]
        rows += [(t, COMPUTED) for t in computed]  # always kept, whatever the proxy's entropy
        for t, bucket in sorted(rows):
            index.doc_id.append(doc.doc_id)
            index.position.append(int(t))
            index.entropy.append(float(ent[t]))
            index.bucket.append(bucket)
            index.split.append(split)
    return index


def _mean_scored(entropy: list[float]) -> float | None:
    """Mean proxy entropy over the scored positions; None when none was scored (`selection.proxy: none`)."""
    scored = [e for e in entropy if not np.isnan(e)]
    return float(np.mean(scored)) if scored else None


def inside_thoughts(tokens: np.ndarray, tokenizer, thought_ids: tuple[int, int] | None = None) -> np.ndarray:
    """Bool per token: True from an opening delimiter up to and including its closing one (a shown thought).
    The delimiters are `thought_ids` when given, else `<think>` / `</think>` (thoughts written inline)."""
    out = np.zeros(len(tokens), dtype=bool)
    if thought_ids is None and not has_think_tokens(tokenizer):  # no <think>: no thought written inline
        return out
    open_id, close_id = thought_ids or think_ids(tokenizer)
    depth = 0
    for t, tok in enumerate(tokens.tolist()):
        if tok == open_id:
            depth = 1
        out[t] = depth > 0
        if tok == close_id:
            depth = 0
    return out
