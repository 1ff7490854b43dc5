"""Analytic FLOP counts (Kaplan/Chinchilla accounting) used to match the baseline's compute to the RL run's.

Forward FLOPs per token = 2 * N (all matmul weights, the unembedding included) + 2 * n_layers * ctx * d for
attention scores and values (ctx = tokens attended to). Backward = 2 x forward, so training = 3 x forward.

RL passes project to the vocabulary only where a token is predicted (not at prompt positions), so their work
(`TokenWork`) counts those positions separately and the unembedding is charged only there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopModel:
    matmul_params: int  # non-embedding weights + the unembedding matrix
    num_layers: int
    hidden_size: int
    unembed_params: int = 0  # the unembedding matrix (part of matmul_params)

    @classmethod
    def from_model(cls, model) -> FlopModel:
        cfg = model.config
        body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and p.dim() > 1)
        unembed = cfg.vocab_size * cfg.hidden_size
        return cls(body + unembed, cfg.num_hidden_layers, cfg.hidden_size, unembed)

    def forward(self, tokens: int, mean_context: float) -> float:
        """Forward FLOPs for `tokens` new tokens each attending to `mean_context` tokens on average."""
        return tokens * (2.0 * self.matmul_params + 2.0 * self.num_layers * mean_context * self.hidden_size)

    def forward_work(self, work: TokenWork) -> float:
        """Forward FLOPs of the tokens counted in `work`: the body for every token, attention for the keys each
        attended to, the unembedding only at the positions that were projected to logits."""
        return (
            2.0 * (self.matmul_params - self.unembed_params) * work.tokens
            + 2.0 * self.unembed_params * work.logits
            + 2.0 * self.num_layers * self.hidden_size * work.attended
        )

    def forward_sequence(self, length: int, batch: int = 1) -> float:
        # Causal attention over a full sequence: token i attends to i+1 tokens, mean (L+1)/2.
        return self.forward(length * batch, (length + 1) / 2)

    def train_sequence(self, length: int, batch: int = 1) -> float:
        return 3.0 * self.forward_sequence(length, batch)


@dataclass
class TokenWork:
    """Tokens a forward really processed, and the keys they attended to (each token counts itself).

    Engines and loss paths record this as they run, so FLOPs follow what was computed: a prompt shared by G
    samples counts once on the prefix-sharing paths and G times on the plain ones. Padding is not counted
    (model FLOPs, the MFU convention); the dense tree masks do spend more attention than this."""

    tokens: int = 0
    attended: int = 0
    logits: int = 0  # positions projected to the vocabulary

    def add(self, tokens: int, attended: int, logits: int = 0) -> None:
        self.tokens += int(tokens)
        self.attended += int(attended)
        self.logits += int(logits)

    def add_sequence(self, length: int, past: int = 0, logits: int = 0) -> None:
        """`length` tokens appended causally after `past` cached ones: token i attends to past + i + 1 keys."""
        self.add(length, length * past + length * (length + 1) // 2, logits)
