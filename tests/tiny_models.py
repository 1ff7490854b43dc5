"""Tiny random models for exactness tests (imported by several test files): no download."""

from __future__ import annotations

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM


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


def tiny_gemma3(
    vocab_size: int, attn: str = "sdpa", seed: int = 0, max_positions: int = 256, sliding_window: int = 6
) -> Gemma3ForCausalLM:
    """A tiny random Gemma 3 text model with everything that sets it apart from Llama switched on: sliding
    (`sliding_window` tokens, far shorter than the test sequences, so the window decides what a token sees) and
    global layers mixed, each with its own RoPE base; q/k norms; the four norms per layer with (1 + w) weights
    made random (Hugging Face initialises them to 0, where a missing `1 +` or a swapped norm would not show);
    embeddings scaled by sqrt(hidden); the gelu-tanh gated MLP; an attention scale from
    query_pre_attn_scalar that is not head_dim; one key/value head for four query heads (as gemma-3-270m);
    the tied head."""
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=12,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_theta=10_000.0,
        rope_local_base_freq=100.0,
        max_position_embeddings=max_positions,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    cfg._attn_implementation = attn
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    return model


def parens_tokenizer():
    """A small BPE tokenizer over sentences with parenthesised asides, so that " (" and ")" are single tokens
    (the aside format's default delimiters)."""
    from nextrl.model.tokenizer import train_bpe_tokenizer

    subj = ["the cat", "the dog (a small one)", "a bird", "my friend (an old one)", "the old man"]
    verbs = ["sat on", "ran to", "looked at", "walked past"]
    objs = ["the mat", "the door (twice)", "a tree", "the river", "the big house"]
    return train_bpe_tokenizer([f"{s} {v} {o}." for s in subj for v in verbs for o in objs], vocab_size=300)
