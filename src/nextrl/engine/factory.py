"""Build the configured in-process rollout engine (the one place that picks the sampler from `sharing`)."""

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
) -> TorchSampler:
    batch = batch_size or cfg.batch_size
    if sharing.enabled:
        return PrefixSharingSampler(
            model, pad_token_id, batch, autocast, seed=seed, max_nodes=sharing.max_tree_nodes
        )
    return TorchSampler(model, pad_token_id, batch, autocast, seed=seed)
