"""Quiet-STaR's mixing head: a learned per-position weight between the prediction after a thought and the one
from the bare context, so that a useless thought costs (almost) nothing.

At a position with context x, a thought c and the true next token y, the model predicts

    p_mix(y) = w * p(y | x, c) + (1 - w) * p(y | x),      w = sigmoid(z),  z = head(h_after, h_bare)

where h_after is the final hidden state that reads the answer after the thought (at the close delimiter) and
h_bare the one at the last context token (Zelikman et al. 2024, arXiv 2403.09629, section 4.2). The head is a
two-layer MLP on the two states; its last layer starts at zero with bias logit(`init_weight`), so at
initialisation w = init_weight everywhere and the bare prediction dominates: the cost of any thought, useful or
not, is then at most -log(1 - init_weight) nats (0.030 for the default 0.03).

The estimator. The head's own parameters are trained by maximum likelihood of the true token under the mixture:
`mixing_nll` = mean over positions of -log p_mix(y), with the two log-probs and hidden states treated as data
(detached): the head learns to trust the thought where the thought's prediction is better. Trained with the
policy, this loss is added to the RL loss on the head's parameters only; the policy's reward for a thought may
then use log p_mix(y) in place of log p(y | x, c). The mixed log-prob is computed in log space
(logsumexp of log w + log p_after and log(1 - w) + log p_bare, with log w = logsigmoid(z) and
log(1 - w) = logsigmoid(-z)), exact for any z and any log-probs down to -inf on one side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MixingHead(nn.Module):
    """z = MLP(layer_norm(h_after) ++ layer_norm(h_bare)); w = sigmoid(z) is the weight of the thought's
    prediction. The inputs are normalised without parameters: final hidden states of different models live on
    very different scales (Gemma's are ~100x a tiny Llama's)."""

    def __init__(self, hidden_size: int, width: int = 32, init_weight: float = 0.03):
        super().__init__()
        if not 0.0 < init_weight < 1.0:
            raise ValueError(f"MixingHead init_weight must lie in (0, 1), got {init_weight}")
        self.hidden_size = hidden_size
        self.mlp = nn.Sequential(nn.Linear(2 * hidden_size, width), nn.ReLU(), nn.Linear(width, 1))
        with torch.no_grad():  # w = init_weight at every position until the head learns otherwise
            self.mlp[2].weight.zero_()
            self.mlp[2].bias.fill_(math.log(init_weight / (1.0 - init_weight)))

    def forward(self, h_after: torch.Tensor, h_bare: torch.Tensor) -> torch.Tensor:
        """The logit z of the thought's weight, shape h_after.shape[:-1]."""
        shape = (self.hidden_size,)
        x = torch.cat([F.layer_norm(h_after, shape), F.layer_norm(h_bare, shape)], dim=-1)
        return self.mlp(x).squeeze(-1)


def mixed_log_probs(z: torch.Tensor, logp_after: torch.Tensor, logp_bare: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(z) * exp(logp_after) + sigmoid(-z) * exp(logp_bare)), computed stably.

    `logp_after` and `logp_bare` are log-probs of the same tokens (one per position, shape z.shape, or a whole
    vocabulary, shape z.shape + (V,)); z broadcasts over the trailing vocabulary axis when there is one."""
    if logp_after.dim() == z.dim() + 1:
        z = z.unsqueeze(-1)
    return torch.logaddexp(F.logsigmoid(z) + logp_after, F.logsigmoid(-z) + logp_bare)


def mixing_nll(
    head: MixingHead,
    h_after: torch.Tensor,
    h_bare: torch.Tensor,
    logp_after_true: torch.Tensor,
    logp_bare_true: torch.Tensor,
) -> torch.Tensor:
    """The head's training loss: mean -log p_mix(true token) over positions; only the head gets gradients."""
    z = head(h_after.detach(), h_bare.detach())
    return -mixed_log_probs(z, logp_after_true.detach(), logp_bare_true.detach()).mean()


def fit_mixing_head(
    head: MixingHead,
    h_after: torch.Tensor,
    h_bare: torch.Tensor,
    logp_after_true: torch.Tensor,
    logp_bare_true: torch.Tensor,
    steps: int = 300,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
) -> list[float]:
    """Full-batch AdamW on `mixing_nll` over a fixed set of positions (the head alone, the model frozen).
    Returns the loss before each step."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        loss = mixing_nll(head, h_after, h_bare, logp_after_true, logp_bare_true)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
