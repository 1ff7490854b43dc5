"""A tiny random Llama for exactness tests (imported by several test files)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(
    vocab_size: int, attn: str = "sdpa", seed: int = 0, max_positions: int = 256
) -> LlamaForCausalLM:
    """2 layers, hidden 32, 4 query heads on 2 key/value heads (grouped-query attention). initializer_range 0.2
    (not 0.02) keeps logits far from uniform, so a conditioning error (a wrong key, position or mask) shows
    well above the tolerances of the tests."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.2,
    )
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg)
