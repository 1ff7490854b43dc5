"""EMAModel: φ = θ at start, the update φ ← τ·φ + (1−τ)·θ against a hand formula, buffers, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nextrl.model.ema import EMAModel


class Tiny(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=True, dtype=dtype)
        self.register_buffer("count", torch.zeros(1))


def set_params(model: Tiny, value: float) -> None:
    with torch.no_grad():
        model.lin.weight.fill_(value)
        model.lin.bias.fill_(-value)


def test_starts_equal_to_the_policy_and_is_frozen():
    policy = Tiny()
    ema = EMAModel(policy)
    for (n1, p), (n2, q) in zip(policy.named_parameters(), ema.model.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p, q)
        assert not q.requires_grad
    assert not ema.model.training and ema.updates == 0
    set_params(policy, 5.0)  # a deep copy: changing the policy does not move the EMA until update()
    assert not torch.equal(ema.model.lin.weight, policy.lin.weight)


def test_update_matches_hand_formula_after_one_and_two_steps():
    tau = 0.9
    policy = Tiny()
    set_params(policy, 1.0)
    ema = EMAModel(policy, tau=tau)
    set_params(policy, 3.0)
    ema.update(policy)
    # φ1 = 0.9 * 1 + 0.1 * 3 = 1.2
    assert torch.allclose(ema.model.lin.weight, torch.full((2, 2), 1.2))
    assert torch.allclose(ema.model.lin.bias, torch.full((2,), -1.2))
    set_params(policy, -2.0)
    ema.update(policy)
    # φ2 = 0.9 * 1.2 + 0.1 * (-2) = 0.88
    assert torch.allclose(ema.model.lin.weight, torch.full((2, 2), 0.88))
    assert torch.allclose(ema.model.lin.bias, torch.full((2,), -0.88))
    assert ema.updates == 2
    assert torch.equal(policy.lin.weight, torch.full((2, 2), -2.0))  # the policy is untouched


def test_buffers_are_copied():
    policy = Tiny()
    ema = EMAModel(policy, tau=0.999)
    policy.count.fill_(7.0)
    ema.update(policy)
    assert ema.model.count.item() == 7.0


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_extreme_taus(tau):
    policy = Tiny()
    set_params(policy, 1.0)
    ema = EMAModel(policy, tau=tau)
    set_params(policy, 4.0)
    ema.update(policy)
    assert ema.model.lin.weight[0, 0].item() == (1.0 if tau == 1.0 else 4.0)


@pytest.mark.parametrize("tau", [-0.1, 1.5, math.nan])
def test_bad_tau_names_the_config_key(tau):
    with pytest.raises(ValueError, match=r"reward\.ema_tau"):
        EMAModel(Tiny(), tau=tau)


def test_float32_copy_of_a_bf16_policy_keeps_small_updates():
    policy = Tiny(torch.bfloat16)
    set_params(policy, 1.0)
    ema32 = EMAModel(policy, tau=0.999, dtype=torch.float32)
    ema16 = EMAModel(policy, tau=0.999)
    set_params(policy, 2.0)
    ema32.update(policy)
    ema16.update(policy)
    assert ema32.model.lin.weight.dtype == torch.float32
    assert ema32.model.lin.weight[0, 0].item() == pytest.approx(1.001, abs=1e-6)
    # why the dtype option exists: 1.001 is not representable in bf16, the bf16 EMA does not move at all
    assert ema16.model.lin.weight[0, 0].item() == 1.0


def test_state_dict_round_trip():
    policy = Tiny()
    set_params(policy, 1.0)
    ema = EMAModel(policy, tau=0.8)
    set_params(policy, 2.0)
    ema.update(policy)
    other = EMAModel(Tiny(), tau=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.tau == 0.8 and other.updates == 1
    assert torch.equal(other.model.lin.weight, ema.model.lin.weight)
    set_params(policy, 3.0)
    ema.update(policy)
    other.update(policy)
    assert torch.equal(other.model.lin.weight, ema.model.lin.weight)


def test_update_from_a_different_architecture_fails():
    ema = EMAModel(Tiny())
    with pytest.raises(ValueError, match="different parameters"):
        ema.update(nn.Linear(2, 2))
