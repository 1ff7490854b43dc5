"""Build the configured in-process rollout engine (the one place that reads `sampling.share_prefix`)."""

from __future__ import annotations

import torch

from nextrl.config.schema import SamplingConfig
from nextrl.engine.sampler import TorchSampler
from nextrl.engine.tree_sampler import PrefixSharingSampler


def build_engine(
    cfg: SamplingConfig,
    model,
    pad_token_id: int,
    autocast: torch.dtype | None,
    seed: int | None,
    batch_size: int | None = None,
) -> TorchSampler:
    batch = batch_size or cfg.batch_size
    if cfg.share_prefix:
        return PrefixSharingSampler(
            model, pad_token_id, batch, autocast, seed=seed, max_nodes=cfg.max_tree_nodes
        )
    return TorchSampler(model, pad_token_id, batch, autocast, seed=seed)
