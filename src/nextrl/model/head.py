"""The vocabulary head without a [rows x vocabulary] tensor: picked log-probs, next-token NLL and top-k entropy
computed from hidden states and the head weight in chunks.

With a 262k vocabulary (Gemma 3) the logits of 1,024 rows are a 1 GB fp32 tensor, and log_softmax, the
temperature, gather and their backward each read and write one more copy of it. Here:

- `picked_logprobs` (and `next_token_nll`, its negative at temperature 1) walks the vocabulary in column
  chunks, one custom autograd function (fused linear cross-entropy, as in Liger-Kernel, but chunked over the
  vocabulary rather than the rows so that every matmul keeps all rows: on a CPU a weight gradient accumulated
  over row chunks would read and write the whole [V, H] gradient once per chunk). The forward keeps each
  row's log-sum-exp and, up to `KEEP_BYTES`, the chunks' logits; the backward turns each chunk into its
  gradient in place (or recomputes it first, one more [rows x H x V] matmul) and writes that chunk's rows of
  the weight gradient once. No log-softmax, temperature or gather copy of the logits is ever made.
- `topk_entropy_of_hidden` (selection's difficulty signal) walks the rows, forward only.

`bench/head_chunks.py` measures these against the plain head on Gemma-shaped sizes.
"""

from __future__ import annotations

import torch

# fp32 logits per vocabulary chunk: few large ops (each op has a fixed cost), bounded memory
CHUNK_BYTES = 64 * 2**20
# hold the logits for the backward up to this size, else recompute: 1.5 GiB takes 1,024 rows of Gemma's vocabulary
# with the two thought tokens (262,146), the baseline's 4 x 256 batch; held is 1.1-1.2x faster than the plain
# head there, recomputed 0.8-0.9x (bench/head_chunks.py)
KEEP_BYTES = 3 * 2**29
ROW_CHUNK = 128  # rows per chunk where a whole vocabulary row is needed (top-k entropy)


def head_weight(model) -> torch.Tensor:
    """The [V, H] weight of `model`'s vocabulary head (tied to the embeddings or not), after checking that the
    head is a plain projection: a bias or a logit soft-cap would be left out of the chunked paths."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: the vocabulary head has a bias; the chunked head has none")
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        raise ValueError(
            f"{type(model).__name__}: config.final_logit_softcapping={cap} (a soft-capped head) is not "
            "supported by the chunked vocabulary head"
        )
    return head.weight


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The matmul dtype an `F.linear` here would run in: autocast's where it is on, else the input's."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def _inverse_temperature(temperature: float | torch.Tensor, rows: int, device) -> torch.Tensor | None:
    """1 / temperature per row, fp32 (None where every row is at 1); greedy (0) is read at 1, like the
    samplers' behaviour log-probs."""
    t = torch.as_tensor(temperature, dtype=torch.float32, device=device).expand(rows)
    t = torch.where(t > 0, t, torch.ones_like(t))
    return None if bool((t == 1).all()) else 1.0 / t


def _scaled_rows(hidden: torch.Tensor, inv_t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """hidden / T per row in `dtype`: 1/T folded into [rows x H] instead of a pass over [rows x V] logits."""
    return (hidden if inv_t is None else hidden.float() * inv_t[:, None]).to(dtype)


class _PickedLogprobs(torch.autograd.Function):
    """log softmax(h W^T / T)[target] per row, fp32, in vocabulary chunks. With `keep` the forward's chunk
    logits are held for the backward ([rows x V] in all, as the plain head holds, but one copy instead of the
    plain head's four); without it only the log-sum-exp is held and the backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, row_of, inv_t, chunk, dtype, keep):
        h = _scaled_rows(hidden, inv_t, dtype)
        kept, lse_parts = [], []
        for c0 in range(0, weight.size(0), chunk):
            logits = (h @ weight[c0 : c0 + chunk].to(dtype).T).float()
            lse_parts.append(torch.logsumexp(logits, dim=-1))
            if keep:
                kept.append(logits)
        lse = torch.logsumexp(torch.stack(lse_parts, dim=-1), dim=-1)
        # the target's logit from its own row of the weight: [rows x H], not a gather from [rows x V]
        target = (h[row_of] * weight[targets].to(dtype)).float().sum(-1)
        ctx.save_for_backward(hidden, weight, targets, row_of, lse, inv_t)
        ctx.chunk, ctx.dtype, ctx.kept = chunk, dtype, kept
        return target - lse[row_of]

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, row_of, lse, inv_t = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h = _scaled_rows(hidden, inv_t, dtype)
        # d picked / d (logit_j / T) = onehot_j - p_j, times the upstream gradient; a row's -p_j term gathers
        # the gradients of all the targets it predicts
        g = grad_out.float()
        g_row = torch.zeros(len(lse), dtype=torch.float32, device=g.device).index_add_(0, row_of, g)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        for i, c0 in enumerate(range(0, weight.size(0), chunk)):
            w = weight[c0 : c0 + chunk].to(dtype)
            if i < len(ctx.kept) and ctx.kept[i] is not None:
                logits, ctx.kept[i] = ctx.kept[i], None  # used up in place: a second backward recomputes
            else:
                logits = (h @ w.T).float()
            dlogits = logits.sub_(lse[:, None]).exp_().mul_(-g_row[:, None])  # -p_j g, in place
            inside = (targets >= c0) & (targets < c0 + w.size(0))
            dlogits.index_put_((row_of[inside], targets[inside] - c0), g[inside], accumulate=True)
            d = dlogits.to(dtype)
            if need_h:
                grad_h += (d @ w).float()
            if need_w and d.dtype == weight.dtype:
                torch.mm(d.T, h, out=grad_w[c0 : c0 + chunk])  # (1/T is in h) written in place, no copy
            elif need_w:
                grad_w[c0 : c0 + chunk] = d.T @ h
        if need_h and inv_t is not None:
            grad_h *= inv_t[:, None]  # d (h/T) / d h
        return (grad_h.to(hidden.dtype) if need_h else None), grad_w, None, None, None, None, None, None


def picked_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    row_of: torch.Tensor | None = None,
    chunk: int | None = None,
    keep_bytes: int = KEEP_BYTES,
) -> torch.Tensor:
    """log_softmax(hidden[row_of] @ weight.T / temperature)[targets] -> [len(targets)] fp32, with gradient to
    `hidden` and `weight` (tied or not); `temperature` is one or one per row of `hidden`, 0 (greedy) read at 1;
    `row_of` (default: target i is
    predicted by row i) lets one row predict several targets (a prompt's last node, the first token of each of
    its samples) and be projected once. Same values as the full-logits reference up to float summation order;
    the matmuls run in autocast's dtype where it is on.

    The vocabulary goes by `chunk` columns (default: `CHUNK_BYTES` of fp32 logits, so 64 rows take the whole
    vocabulary at once and 1,024 rows 16,384 columns). Where the fp32 logits of all rows fit in `keep_bytes`
    they are held from the forward to the backward (saves the recompute's matmul, a quarter of the head's
    FLOPs); above it the backward recomputes them chunk by chunk (`bench/head_chunks.py` measures both)."""
    if row_of is None:
        row_of = torch.arange(len(targets), device=targets.device)
    if (
        hidden.dim() != 2
        or targets.shape != row_of.shape
        or (len(row_of) and int(row_of.max()) >= len(hidden))
    ):
        raise ValueError(
            f"hidden [rows, H], targets [n] and row_of [n] (< rows) expected, got {tuple(hidden.shape)}, "
            f"{tuple(targets.shape)}, {tuple(row_of.shape)}"
        )
    if len(targets) == 0:
        return hidden[:0, 0].float() * 0  # no targets: an empty result that backward passes through
    dtype = _compute_dtype(hidden)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    keep = needs_grad and hidden.size(0) * weight.size(0) * 4 <= keep_bytes
    with torch.autocast(hidden.device.type, enabled=False):
        return _PickedLogprobs.apply(
            hidden,
            weight,
            targets,
            row_of,
            _inverse_temperature(temperature, len(hidden), hidden.device),
            max(int(chunk or CHUNK_BYTES // (4 * len(hidden))), 1),
            dtype,
            keep,
        )


def next_token_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int | None = None,
    keep_bytes: int = KEEP_BYTES,
) -> torch.Tensor:
    """Cross-entropy of `targets` under softmax(hidden @ weight.T) per row -> [rows] fp32, with gradient."""
    return -picked_logprobs(hidden, weight, targets, 1.0, None, chunk, keep_bytes)


def topk_entropy(logits: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Entropy (nats) of softmax over the k largest logits, for every position: [..., V] -> [...]."""
    top = logits.float().topk(min(k, logits.size(-1)), dim=-1).values
    logp = torch.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def topk_entropy_of_hidden(
    hidden: torch.Tensor, weight: torch.Tensor, k: int, chunk: int = ROW_CHUNK
) -> torch.Tensor:
    """`topk_entropy` of the logits `hidden @ weight.T`, `chunk` rows at a time (forward
    only) -> [rows] fp32."""
    dtype = _compute_dtype(hidden)
    out = []
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        for r0 in range(0, hidden.size(0), max(int(chunk), 1)):
            out.append(topk_entropy(hidden[r0 : r0 + chunk].to(dtype) @ w.T, k))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)
