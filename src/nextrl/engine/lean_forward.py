"""A lean forward for the prefix-sharing sampler: the model's own weights over a preallocated KV cache.

A decode iteration of a small model is dominated by fixed costs, not by its matmuls: the Hugging Face module
runs ~15 calls per layer, grows its `DynamicCache` by concatenation (a copy of every key and value each
token), and builds masks it is then handed anyway. `LeanForward` runs the same arithmetic in fewer, larger
calls: query/key/value and gate/up projections fused into one matmul each (the fused weights are rebuilt from
the live module at every `refresh`, so the learner's in-place updates are seen), keys and values written in
place into a buffer that grows by doubling, and one SDPA call per layer with the tree mask the sampler already
has. It covers the decoder family nextrl's presets and the common open models use (Llama, Mistral, Qwen2,
Qwen3: RMSNorm, rotary positions through the model's own rotary module, optional q/k norms and q/k/v biases,
gated MLP) and Gemma 3's text model (below); anything else runs through the Hugging Face module (`supports`
says why). Tests check it against that module: hidden states 1e-5, samples identical.

Gemma 3 differs in ways the forward follows through the model's own modules (scaled embeddings, (1 + w)
norms, the gelu-tanh MLP, query_pre_attn_scalar in `scaling`) and in three it must arrange itself: a norm
after attention and around the MLP (four per layer, "sandwich"), a RoPE base per layer type (the rotary
module takes the type), and sliding-window layers. A sliding layer's query at position p sees the keys its
tree mask allows whose position is above p - window, positions measured along the query's own sequence (the
cache keeps every column's position id), which is what the model computes on that sequence alone; a full
layer sees the whole mask. Hugging Face applies no window to a custom 4D mask, so the Hugging Face decode
path gets the windowed mask from `window_mask` too (`tree_sampler`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextrl.sharing.branch_attention import trunk_attention, window_mask

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
SLIDING, FULL = "sliding_attention", "full_attention"


def supports(model) -> str | None:
    """None when `LeanForward` computes exactly what `model` computes, else the reason it does not."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in FAMILIES:
        return f"model type {kind!r} (the lean forward covers {', '.join(FAMILIES)})"
    if (
        kind != "gemma3_text"
        and getattr(cfg, "sliding_window", None)
        and getattr(cfg, "use_sliding_window", kind == "mistral")
    ):
        return "sliding-window attention outside Gemma 3"
    if kind == "gemma3_text":
        reason = _gemma3_unsupported(cfg)
        if reason is not None:
            return reason
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or not hasattr(base, "rotary_emb"):
        return "no decoder layers or rotary module where a Llama-style model has them"
    for layer in layers:
        att, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if not all(hasattr(att, k) for k in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
            return "an attention layer without separate q/k/v/o projections"
        if not all(hasattr(mlp, k) for k in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return "an MLP that is not a gated (gate/up/down) MLP"
        if getattr(att.o_proj, "bias", None) is not None or getattr(mlp.down_proj, "bias", None) is not None:
            return "biases on the output projections"
    return None


def _gemma3_unsupported(cfg) -> str | None:
    """What of a Gemma 3 text config the lean forward does not compute (None: all of it)."""
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        return "Gemma 3 with attn_logit_softcapping set (SDPA has no score soft-capping)"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "Gemma 3 with use_bidirectional_attention (an encoder, not a decoder)"
    types = set(cfg.layer_types)
    if not types <= {SLIDING, FULL}:
        return f"Gemma 3 layer types {sorted(types - {SLIDING, FULL})}"
    if SLIDING in types and not cfg.sliding_window:
        return "Gemma 3 sliding layers without a sliding_window"
    return None


def sliding_window_of(model) -> int | None:
    """The window of the model's sliding-window layers (None: it has none)."""
    cfg = model.config
    if SLIDING in (getattr(cfg, "layer_types", None) or ()) and getattr(cfg, "sliding_window", None):
        return cfg.sliding_window
    return None


class KVBuffer:
    """Keys and values of every layer for `rows` cache rows, written in place; `length` columns are filled.
    Capacity grows by doubling, so a decode iteration appends without copying the cache."""

    def __init__(self, layers: int):
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers
        self.pos: torch.Tensor | None = None  # [R, capacity]: each column's position id (sliding windows)
        self.length = 0

    def write_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """Record the position ids ([R, W]) of the columns the next writes fill; return those of all filled
        and new columns [R, length + W]."""
        end = self.length + pos.shape[1]
        if self.pos is None or self.pos.shape[1] < end:
            grown = pos.new_empty(
                pos.shape[0], max(end, 2 * (0 if self.pos is None else self.pos.shape[1]), 64)
            )
            if self.pos is not None:
                grown[:, : self.length] = self.pos[:, : self.length]
            self.pos = grown
        self.pos[:, self.length : end] = pos
        return self.pos[:, :end]

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append layer i's new keys/values ([R, Hkv, W, D]) at `length`; return the filled keys and values."""
        end = self.length + k.shape[2]
        buf = self.k[i]
        if buf is None or buf.shape[2] < end:
            cap = max(end, 2 * (buf.shape[2] if buf is not None else 0), 64)
            for store, new in ((self.k, k), (self.v, v)):
                grown = new.new_empty(new.shape[0], new.shape[1], cap, new.shape[3])
                if store[i] is not None:
                    grown[:, :, : self.length] = store[i][:, :, : self.length]
                store[i] = grown
        self.k[i][:, :, self.length : end] = k
        self.v[i][:, :, self.length : end] = v
        return self.k[i][:, :, :end], self.v[i][:, :, :end]

    def advance(self, w: int) -> None:
        self.length += w

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        """Keep only these cache rows (finished trees stop costing compute)."""
        self.k = [None if t is None else t[rows] for t in self.k]
        self.v = [None if t is None else t[rows] for t in self.v]
        self.pos = None if self.pos is None else self.pos[rows]


class LeanForward:
    def __init__(self, model):
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"the lean forward does not cover this model: {reason}")
        self.model = model
        self.base = model.model
        self.layers = list(self.base.layers)
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        gemma = cfg.model_type == "gemma3_text"
        # Gemma 3: a type (and RoPE base) per layer; the other families refuse sliding windows, so all are full
        self.types = list(cfg.layer_types) if gemma else [FULL] * len(self.layers)
        self.rope_per_type = gemma
        self.window = cfg.sliding_window if SLIDING in self.types else None
        # Gemma's "sandwich": norms after attention and before/after the MLP; Llama's: one before the MLP
        self.sandwich = hasattr(self.layers[0], "pre_feedforward_layernorm")
        self.fused: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def refresh(self) -> None:
        """Fuse q/k/v and gate/up from the module's current weights (the learner updates them in place)."""
        self.fused = []
        with torch.no_grad():
            for layer in self.layers:
                a, m = layer.self_attn, layer.mlp
                qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                bias = None
                if a.q_proj.bias is not None:
                    bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
                self.fused.append((qkv, bias, torch.cat([m.gate_proj.weight, m.up_proj.weight])))

    def new_cache(self) -> KVBuffer:
        return KVBuffer(len(self.layers))

    def __call__(
        self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: KVBuffer, trunk: int = 0
    ) -> torch.Tensor:
        """Hidden states [R, W, d] (after the final norm) of W new tokens per cache row at positions `pos`,
        each seeing the cache columns and new tokens `mask` ([R, 1, W, length + W], bool) allows (sliding
        layers: those of them inside the window); their keys and values are appended to `cache`. `trunk` > 0
        (an empty cache only) says that the first `trunk` tokens of every row see exactly the tokens before
        them: they run through the causal kernel, which skips the masked key blocks (`prefix_tree` numbers a
        trie's longest path first)."""
        if trunk and cache.length:
            raise ValueError("a causal trunk is only defined for the first forward into an empty cache")
        if not self.fused:
            self.refresh()
        R, W = ids.shape
        H, Hkv, D = self.heads, self.kv_heads, self.head_dim
        x = self.base.embed_tokens(ids)
        rope = self._rope(x, pos)
        masks = {FULL: (mask[:, :, trunk:], trunk)}  # what the tokens past the trunk see, and the trunk
        if self.window is not None:
            slide = window_mask(mask, pos, cache.write_positions(pos), self.window)
            # a trunk no longer than the window is a chain whose every token sees all before it: still causal
            masks[SLIDING] = (slide[:, :, trunk:], trunk) if trunk <= self.window else (slide, 0)
        for i, layer in enumerate(self.layers):
            att, mlp = layer.self_attn, layer.mlp
            qkv_w, qkv_b, gate_up = self.fused[i]
            (cos, sin), (seen, causal) = rope[self.types[i]], masks[self.types[i]]
            h = layer.input_layernorm(x)
            q, k, v = F.linear(h, qkv_w, qkv_b).split([H * D, Hkv * D, Hkv * D], dim=-1)
            q, k, v = q.view(R, W, H, D), k.view(R, W, Hkv, D), v.view(R, W, Hkv, D)
            if hasattr(
                att, "q_norm"
            ):  # Qwen3, Gemma 3 normalise queries and keys per head before the rotation
                q, k = att.q_norm(q), att.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys, values = cache.write(i, k, v)
            out = trunk_attention(q, keys, values, seen, causal, att.scaling, Hkv != H)
            out = att.o_proj(out.transpose(1, 2).reshape(R, W, H * D))
            if self.sandwich:
                x = x + layer.post_attention_layernorm(out)
                g, u = F.linear(layer.pre_feedforward_layernorm(x), gate_up).chunk(2, dim=-1)
                x = x + layer.post_feedforward_layernorm(mlp.down_proj(mlp.act_fn(g) * u))
            else:
                x = x + out
                g, u = F.linear(layer.post_attention_layernorm(x), gate_up).chunk(2, dim=-1)
                x = x + mlp.down_proj(mlp.act_fn(g) * u)
        cache.advance(W)
        return self.base.norm(x)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos and sin per layer type, broadcast over heads (Gemma 3's rotary module takes the type)."""
        if not self.rope_per_type:
            cos, sin = self.base.rotary_emb(x, pos)
            return {FULL: (cos[:, None], sin[:, None])}
        out = {}
        for kind in set(self.types):
            cos, sin = self.base.rotary_emb(x, pos, kind)
            out[kind] = (cos[:, None], sin[:, None])
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
