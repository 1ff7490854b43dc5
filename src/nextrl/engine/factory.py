"""Build the configured rollout engine (the one place that picks the sampler from `sampling.engine` and
`sharing`)."""

from __future__ import annotations

import torch

from nextrl.config.schema import SamplingConfig, SharingConfig
from nextrl.engine.sampler import TorchSampler
from nextrl.engine.tree_sampler import PrefixSharingSampler


def build_engine(
    cfg: SamplingConfig,
    sharing: SharingConfig,
    model,
    pad_token_id: int,
    autocast: torch.dtype | None,
    seed: int | None,
    batch_size: int | None = None,
    model_path=None,
):
    """The engine for `model`; vLLM loads `model_path` (the folder `model` was loaded from) and is synced from
    the learner afterwards."""
    if cfg.engine == "vllm":
        from nextrl.engine.vllm_engine import VLLMEngine
        from nextrl.errors import ConfigError

        if model_path is None:
            raise ConfigError("config key 'sampling.engine': vllm needs the model on disk (a folder to load)")
        return VLLMEngine.from_pretrained(
            model_path,
            seed,
            dtype="bfloat16" if autocast == torch.bfloat16 else "float32",
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            block_size=cfg.vllm_block_size,
        )
    batch = batch_size or cfg.batch_size
    if sharing.enabled:
        return PrefixSharingSampler(
            model,
            pad_token_id,
            batch,
            autocast,
            seed=seed,
            max_nodes=sharing.max_tree_nodes,
            decode=cfg.decode,
        )
    return TorchSampler(model, pad_token_id, batch, autocast, seed=seed)
