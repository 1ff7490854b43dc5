"""Rollout engines: prompts in, sampled completions with behaviour log-probs out."""

from nextrl.engine.base import Phase, Rollout, RolloutEngine, SamplingParams
from nextrl.engine.sampler import TorchSampler

__all__ = ["Phase", "Rollout", "RolloutEngine", "SamplingParams", "TorchSampler"]
