"""Analytic FLOP counts (Kaplan/Chinchilla accounting) used to match the baseline's compute to the RL run's.

Forward FLOPs per token = 2 * N (all matmul weights, the unembedding included) + 2 * n_layers * ctx * d for
attention scores and values (ctx = tokens attended to). Backward = 2 x forward, so training = 3 x forward.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopModel:
    matmul_params: int  # non-embedding weights + the unembedding matrix
    num_layers: int
    hidden_size: int

    @classmethod
    def from_model(cls, model) -> FlopModel:
        cfg = model.config
        body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and p.dim() > 1)
        unembed = cfg.vocab_size * cfg.hidden_size
        return cls(body + unembed, cfg.num_hidden_layers, cfg.hidden_size)

    def forward(self, tokens: int, mean_context: float) -> float:
        """Forward FLOPs for `tokens` new tokens each attending to `mean_context` tokens on average."""
        return tokens * (2.0 * self.matmul_params + 2.0 * self.num_layers * mean_context * self.hidden_size)

    def forward_sequence(self, length: int, batch: int = 1) -> float:
        # Causal attention over a full sequence: token i attends to i+1 tokens, mean (L+1)/2.
        return self.forward(length * batch, (length + 1) / 2)

    def train_sequence(self, length: int, batch: int = 1) -> float:
        return 3.0 * self.forward_sequence(length, batch)
