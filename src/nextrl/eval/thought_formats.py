"""What a thought format costs a pretrained model before any RL: the log-prob of the true next token read after
an empty thought (open + close delimiter) or after the model's own sampled thought, against the bare context.

Several formats are measured side by side at one position: the context's KV cache is computed once and
repeated over a batch with one row per format. A format's delimiters are single tokens, either ids of the
model's vocabulary or new tokens (ids V, V+1, ... of a model with V tokens) given by their embedding rows. New
tokens are fed as input embeddings (scaled like the model's own, e.g. Gemma's sqrt(hidden)) and, the
embeddings being tied, their rows also extend the output softmax, as `resize_token_embeddings` would: a model
need not be resized, so one model serves every format. The vocabulary head is projected only at the rows that
are read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DelimiterFormat:
    """A thought written `open thought close` before the answer; ids >= V name the rows of `new_rows`."""

    name: str
    open_id: int
    close_id: int
    new_rows: torch.Tensor | None = field(default=None, compare=False)  # [n_new, hidden], unscaled


def new_token_format(name: str, vocab_size: int, open_row: torch.Tensor, close_row: torch.Tensor):
    """Two new tokens, `<think>` = id V and `</think>` = id V + 1, with these (unscaled) embedding rows."""
    return DelimiterFormat(name, vocab_size, vocab_size + 1, torch.stack([open_row, close_row]))


def mean_embedding(model) -> torch.Tensor:
    """The mean input embedding. transformers' `resize_token_embeddings` (mean_resizing=True) draws new rows
    from N(mean, 1e-9 * covariance), i.e. the mean to within ~3e-5 standard deviations."""
    return model.get_input_embeddings().weight.detach().mean(0)


def embedding_of(model, ids: list[int]) -> torch.Tensor:
    """The mean (unscaled) embedding row of some tokens: Quiet-STaR initialises its thought tokens from '---'."""
    return model.get_input_embeddings().weight.detach()[ids].mean(0)


@dataclass
class FormatBatch:
    """The formats of one measurement, padded to the same number of new rows (absent rows are masked out)."""

    formats: list[DelimiterFormat]
    vocab_size: int
    hidden_size: int
    new_rows: torch.Tensor = field(init=False)  # [B, E, hidden]
    new_mask: torch.Tensor = field(init=False)  # [B, E] bool: the row exists
    open_ids: torch.Tensor = field(init=False)  # [B]
    close_ids: torch.Tensor = field(init=False)  # [B]

    def __post_init__(self):
        n_new = max([0] + [len(f.new_rows) for f in self.formats if f.new_rows is not None])
        self.new_rows = torch.zeros(len(self.formats), n_new, self.hidden_size)
        self.new_mask = torch.zeros(len(self.formats), n_new, dtype=torch.bool)
        for b, f in enumerate(self.formats):
            if f.new_rows is not None:
                self.new_rows[b, : len(f.new_rows)] = f.new_rows
                self.new_mask[b, : len(f.new_rows)] = True
            for i in (f.open_id, f.close_id):
                if not 0 <= i < self.vocab_size + (0 if f.new_rows is None else len(f.new_rows)):
                    raise ValueError(
                        f"format {f.name!r}: delimiter id {i} is neither a vocabulary id nor new"
                    )
        self.open_ids = torch.tensor([f.open_id for f in self.formats])
        self.close_ids = torch.tensor([f.close_id for f in self.formats])


def embed(model, ids: torch.Tensor, fb: FormatBatch) -> torch.Tensor:
    """Input embeddings [B, L, hidden] of ids [B, L] (row b in format b's vocabulary)."""
    emb = model.get_input_embeddings()
    scale = getattr(emb, "embed_scale", None)  # Gemma multiplies its embeddings by sqrt(hidden) in the lookup
    is_new = ids >= fb.vocab_size
    out = emb(ids.clamp(max=fb.vocab_size - 1))
    if is_new.any():
        rows = fb.new_rows[torch.arange(len(ids))[:, None].expand_as(ids), (ids - fb.vocab_size).clamp(min=0)]
        rows = rows * scale.to(rows.dtype) if scale is not None else rows
        out = torch.where(is_new[..., None], rows.to(out.dtype), out)
    return out


def log_probs(model, hidden: torch.Tensor, fb: FormatBatch) -> torch.Tensor:
    """Next-token log-probs [B, V + E] from final hidden states [B, hidden] (or one state [hidden] that every
    format reads, projected on the vocabulary once): the model's head plus the new rows (tied embeddings), with
    the model's final logit soft-capping if it has one."""
    if hidden.dim() == 1:
        hidden = hidden[None]
        logits = model.get_output_embeddings()(hidden).expand(len(fb.formats), -1)
        hidden = hidden.expand(len(fb.formats), -1)
    else:
        logits = model.get_output_embeddings()(hidden)
    if fb.new_rows.shape[1]:
        extra = torch.einsum("bd,bed->be", hidden, fb.new_rows.to(hidden.dtype))
        logits = torch.cat([logits, extra.masked_fill(~fb.new_mask, float("-inf"))], dim=-1)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits.float(), dim=-1)


def trunk(model):
    """The decoder without its vocabulary head (`model.model` for Hugging Face causal LMs)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def prefill(model, ids: torch.Tensor):
    """Final hidden states [T, hidden] and the KV cache of one token sequence ids [T]."""
    out = trunk(model)(input_ids=ids[None], use_cache=True)
    return out.last_hidden_state[0], out.past_key_values  # the output field kept its name


def prefix_cache(cache, length: int, batch: int):
    """A copy of `cache` cut to its first `length` tokens and repeated over `batch` rows."""
    c = copy.deepcopy(cache)
    extra = c.get_seq_length() - length
    if extra > 0:
        c.crop(-extra)  # transformers 5: a negative count removes that many tokens from the end
    c.batch_repeat_interleave(batch)
    return c


def _step(model, fb: FormatBatch, ids: torch.Tensor, cache) -> torch.Tensor:
    """Feed ids [B, L] after the cache (appending to it); the final hidden states [B, L, hidden]."""
    return trunk(model)(inputs_embeds=embed(model, ids, fb), cache=cache, use_cache=True).last_hidden_state


@dataclass
class Reading:
    """What each format [B] predicts for the true next token after its thought."""

    logp: torch.Tensor  # [B, V + E] log-probs at the read
    hidden: torch.Tensor  # [B, hidden] final hidden state that reads the answer (for a mixing head)
    thoughts: list[list[int]]  # the thought tokens between the delimiters (empty for the empty thought)


def read_empty(model, fb: FormatBatch, cache) -> Reading:
    """The answer after `open close` with nothing between."""
    h = _step(model, fb, torch.stack([fb.open_ids, fb.close_ids], dim=1), cache)[:, -1]
    return Reading(log_probs(model, h, fb), h, [[] for _ in fb.formats])


def read_after_thought(
    model, fb: FormatBatch, cache, max_tokens: int, greedy: bool, generator: torch.Generator | None = None
) -> Reading:
    """The model's own thought, sampled (temperature 1, or greedy) after `open` until it writes `close` or
    reaches `max_tokens`, when `close` is forced; then the answer after `close`. The open delimiter cannot be
    sampled inside a thought (where it differs from the close one)."""
    n = len(fb.formats)
    rows = torch.arange(n)
    h = _step(model, fb, fb.open_ids[:, None], cache)[:, -1]
    thoughts: list[list[int]] = [[] for _ in range(n)]
    read_h = torch.zeros_like(h)
    done = torch.zeros(n, dtype=torch.bool)
    for k in range(max_tokens + 1):
        if k < max_tokens:
            logp = log_probs(model, h, fb)
            logp[rows, fb.open_ids] = torch.where(
                fb.open_ids == fb.close_ids, logp[rows, fb.open_ids], torch.tensor(float("-inf"))
            )
            nxt = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
        else:
            nxt = fb.close_ids.clone()
        closing = ~done & (nxt == fb.close_ids)
        for b in torch.nonzero(~done & ~closing).flatten().tolist():
            thoughts[b].append(int(nxt[b]))
        feed = torch.where(done, fb.close_ids, nxt)  # finished rows are fed anything, and not read again
        h = _step(model, fb, feed[:, None], cache)[:, -1]
        read_h[closing] = h[closing]
        done |= closing
        if done.all():
            break
    return Reading(log_probs(model, read_h, fb), read_h, thoughts)


def read_reference(model, fb: FormatBatch, context: torch.Tensor, b: int, thought: list[int]) -> torch.Tensor:
    """Slow reference for tests: the log-probs after `context open thought close` in format b, one plain
    forward without a cache."""
    f = fb.formats[b]
    ids = torch.cat([context, torch.tensor([f.open_id, *thought, f.close_id])])
    one = FormatBatch([f], fb.vocab_size, fb.hidden_size)
    h = trunk(model)(inputs_embeds=embed(model, ids[None], one)).last_hidden_state[:, -1]
    return log_probs(model, h, one)[0]
