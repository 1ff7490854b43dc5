"""Rollout engines: prompts in, sampled completions with behaviour log-probs out."""

from nextrl.engine.base import Phase, Rollout, RolloutEngine, SamplingParams
from nextrl.engine.factory import build_engine
from nextrl.engine.sampler import TorchSampler
from nextrl.engine.tree_sampler import PrefixSharingSampler

__all__ = [
    "Phase",
    "PrefixSharingSampler",
    "Rollout",
    "RolloutEngine",
    "SamplingParams",
    "TorchSampler",
    "build_engine",
]
