"""Base models: a small Llama-style model built from config, or any Hugging Face causal LM from a path."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from nextrl.config import ModelConfig
from nextrl.errors import ConfigError
from nextrl.model.gguf import resolve_model_path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def autocast_dtype(cfg: ModelConfig, device: torch.device | None = None) -> torch.dtype | None:
    """The matmul autocast dtype: bf16, or None for plain fp32.

    'auto' decides by the hardware: on a GPU, bf16 where it is supported; on a CPU, bf16 only where its
    measured matmul peak beats fp32 by 20% (≈2.5x on CPUs with native bf16, AVX512-BF16 or AMX; ~100x
    *slower* on AVX2-only CPUs, where it is emulated). The peaks are measured once and cached."""
    if cfg.dtype != "auto":
        return torch.bfloat16 if cfg.dtype == "bfloat16" else None
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    from nextrl.accounting.peak import cpu_prefers_bf16

    return torch.bfloat16 if cpu_prefers_bf16(device) else None


def build_llama(
    cfg: ModelConfig, vocab_size: int, pad_token_id: int, eos_token_id: int, seed: int = 0
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_model(
    path: str | Path,
    vocab_size: int | None = None,
    key: str = "model.path",
    cache_dir: str | Path | None = None,
) -> PreTrainedModel:
    """Load a causal LM in fp32 (masters stay fp32; autocast gives bf16 matmuls). Resizes the embeddings when the
    tokenizer gained the thought tokens. A `.gguf` file or a packaged model name (`nextrl.model.gguf.KNOWN`)
    loads from its converted folder in the model cache."""
    path = resolve_model_path(path, cache_dir, key)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as e:  # not found, offline, not a model folder, unknown architecture
        raise ConfigError(f"config key '{key}': cannot load a causal LM from {path}: {e}") from None
    if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


def count_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        emb = model.get_input_embeddings().weight
        n -= emb.numel()
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            n -= out.weight.numel()
    return n
