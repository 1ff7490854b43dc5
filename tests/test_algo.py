"""The algorithm stage against slow, obvious references (python loops, scalar math, hand-derived gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from nextrl.algo import PolicyBatch, group_advantages, grpo_loss, rlp_advantages, uniform_groups

# ---------------------------------------------------------------------------------------------- advantages


def _ref_group_advantages(rows: list[list[float]], scale: bool, eps: float) -> list[list[float]]:
    out = []
    for row in rows:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / len(row))  # population std
        out.append([(r - mean) / (std + eps) if scale else r - mean for r in row])
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_loop(scale):
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, -1.2, 2.5, 0.0], [1.0, 1.0, 1.0, 1.0]])
    want = torch.tensor(_ref_group_advantages(rewards.tolist(), scale, 1e-6))
    got = group_advantages(rewards, scale=scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.all(got[2] == 0)  # a uniform group has no signal
    torch.testing.assert_close(got.sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)


def test_group_advantages_binary_and_singleton():
    # 1 success in 4: mean 0.25, population std sqrt(3)/4 -> winner +sqrt(3), losers -1/sqrt(3).
    got = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), scale=True)
    torch.testing.assert_close(
        got, torch.tensor([[math.sqrt(3)] + [-1 / math.sqrt(3)] * 3]), rtol=1e-5, atol=1e-5
    )
    assert torch.all(group_advantages(torch.tensor([[0.7], [2.0]]), scale=True) == 0)


def test_rlp_advantages_are_leave_one_out():
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.25], [3.0, 3.0, 1.0, -2.0]])
    got = rlp_advantages(rewards)
    for i, row in enumerate(rewards.tolist()):
        g = len(row)
        for j, r in enumerate(row):
            others = (sum(row) - r) / (g - 1)
            assert got[i, j].item() == pytest.approx(r - others, abs=1e-6)
            assert got[i, j].item() == pytest.approx(g / (g - 1) * (r - sum(row) / g), abs=1e-6)
    assert torch.all(rlp_advantages(torch.tensor([[4.0], [-1.0]])) == 0)


def test_uniform_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5 + 1e-10], [0.0, 0.0, 0.0]])
    assert uniform_groups(rewards).tolist() == [True, False, True, True]
    assert uniform_groups(rewards, atol=2.0).tolist() == [True, True, True, True]


# ---------------------------------------------------------------------------------------------- grpo loss


def _ref_loss(logp, old, adv, mask, norm, eps_lo, eps_hi, kl_coef=0.0, ref=None, max_tokens=None):
    """Loss, d loss / d logp (hand-derived), and the token metrics, one scalar at a time."""
    bsz, seq_len = len(logp), len(logp[0])
    tok_loss = [[0.0] * seq_len for _ in range(bsz)]
    tok_grad = [[0.0] * seq_len for _ in range(bsz)]
    n_tok = n_clipped = ratio_sum = mismatch_sum = kl_sum = 0.0
    for b in range(bsz):
        for t in range(seq_len):
            if not mask[b][t]:
                continue
            a = adv[b]
            ratio = math.exp(logp[b][t] - old[b][t])
            unclipped = -ratio * a
            clipped = -min(max(ratio, 1 - eps_lo), 1 + eps_hi) * a
            if clipped > unclipped:  # clipped branch: constant in logp
                loss, grad = clipped, 0.0
                n_clipped += 1
            else:  # d/dlogp of -exp(logp - old) * a
                loss, grad = unclipped, -ratio * a
            k3 = 0.0
            if kl_coef:
                d = ref[b][t] - logp[b][t]
                k3 = math.exp(d) - d - 1
                loss += kl_coef * k3
                grad += kl_coef * (1 - math.exp(d))  # d/dlogp of exp(ref - logp) - (ref - logp) - 1
            tok_loss[b][t], tok_grad[b][t] = loss, grad
            n_tok += 1
            ratio_sum += ratio
            mismatch_sum += abs(logp[b][t] - old[b][t])
            kl_sum += k3

    weight = [0.0] * bsz  # each token's weight in the aggregate, per sequence
    for b in range(bsz):
        lengths = sum(mask[b])
        if norm == "grpo":
            n_seq = sum(1 for row in mask if sum(row) > 0)
            weight[b] = 1 / (n_seq * lengths) if lengths else 0.0
        elif norm == "dapo":
            weight[b] = 1 / sum(sum(row) for row in mask)
        else:
            weight[b] = 1 / (bsz * max_tokens)
    loss = sum(weight[b] * tok_loss[b][t] for b in range(bsz) for t in range(seq_len))
    grad = [[weight[b] * tok_grad[b][t] for t in range(seq_len)] for b in range(bsz)]
    metrics = {
        "clip_frac": n_clipped / n_tok,
        "ratio_mean": ratio_sum / n_tok,
        "logprob_mismatch": mismatch_sum / n_tok,
        "kl": kl_sum / n_tok,
    }
    return loss, grad, metrics


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    bsz, seq_len = 6, 7
    old = -torch.rand(bsz, seq_len, generator=g) * 3 - 0.1
    # Log-ratios up to +-1 put many tokens far outside any clip range and many inside it.
    logp = old + (torch.rand(bsz, seq_len, generator=g) * 2 - 1)
    ref = old + (torch.rand(bsz, seq_len, generator=g) - 0.5)
    adv = torch.tensor([1.5, -0.7, 0.0, 2.0, -1.3, 0.4])
    mask = torch.ones(bsz, seq_len)
    mask[0, 5:] = 0  # padding
    mask[1, 0] = 0  # a forced token in the middle of real ones
    mask[1, 4:] = 0
    mask[3, :] = 0  # a sequence with no loss tokens
    mask[5, 2] = 0
    # Padding holds values that would poison the loss if they were not masked before exp().
    old[mask == 0] = -1e4
    return logp, old, adv, mask, ref


@pytest.mark.parametrize("norm", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_grpo_loss_matches_reference(norm, kl_coef, eps):
    logp, old, adv, mask, ref = _batch()
    max_tokens = 9
    leaf = logp.clone().requires_grad_(True)
    batch = PolicyBatch(leaf, old, adv, mask, ref_logprobs=ref if kl_coef else None)
    loss, metrics = grpo_loss(batch, norm, eps[0], eps[1], kl_coef=kl_coef, max_tokens=max_tokens)
    loss.backward()

    want_loss, want_grad, want_metrics = _ref_loss(
        logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), norm, eps[0], eps[1],
        kl_coef=kl_coef, ref=ref.tolist(), max_tokens=max_tokens,
    )  # fmt: skip
    assert loss.item() == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(leaf.grad, torch.tensor(want_grad), rtol=1e-5, atol=1e-6)
    assert torch.all(leaf.grad[mask == 0] == 0)
    assert metrics["loss"] == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    for key, value in want_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # The data really exercises both branches of the clip.
    assert 0.1 < metrics["clip_frac"] < 0.9
    if not kl_coef:
        assert metrics["kl"] == 0.0 and metrics["pg_loss"] == metrics["loss"]


@pytest.mark.parametrize("norm", ["grpo", "dapo", "dr_grpo"])
def test_on_policy_gradient_is_reinforce(norm):
    logp, _, adv, mask, _ = _batch(seed=1)
    max_tokens = 10
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = grpo_loss(
        PolicyBatch(leaf, logp.clone(), adv, mask), norm, 0.2, 0.28, max_tokens=max_tokens
    )
    loss.backward()

    lengths = mask.sum(dim=1, keepdim=True)
    if norm == "grpo":
        normaliser = (lengths > 0).sum() * lengths.clamp(min=1)
    elif norm == "dapo":
        normaliser = mask.sum()
    else:
        normaliser = torch.tensor(mask.shape[0] * max_tokens)
    want = -adv[:, None] * mask / normaliser
    torch.testing.assert_close(leaf.grad, want)
    torch.testing.assert_close(loss, want.sum())  # ratio 1: loss = -sum A * w
    assert metrics["clip_frac"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["logprob_mismatch"] == 0.0


def test_all_masked_batch_gives_zero_loss_with_graph():
    logp = torch.randn(2, 3, requires_grad=True)
    batch = PolicyBatch(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.zeros(2, 3))
    for norm in ("grpo", "dapo", "dr_grpo"):
        loss, metrics = grpo_loss(batch, norm, 0.2, 0.2, max_tokens=4)
        loss.backward()
        assert loss.item() == 0.0 and metrics["clip_frac"] == 0.0
        assert torch.all(logp.grad == 0)


def test_bfloat16_logprobs_and_inf_padding():
    logp, old, adv, mask, _ = _batch()
    logp[mask == 0] = -float("inf")
    old[mask == 0] = -float("inf")
    leaf = logp.to(torch.bfloat16).requires_grad_(True)
    loss, metrics = grpo_loss(PolicyBatch(leaf, old, adv, mask), "dapo", 0.2, 0.28)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad.float()).all()
    assert all(math.isfinite(v) for v in metrics.values())
    assert leaf.grad.dtype == torch.bfloat16


def test_grpo_loss_errors():
    logp = torch.zeros(2, 3)
    batch = PolicyBatch(logp, logp, torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="max_tokens"):
        grpo_loss(batch, "dr_grpo", 0.2, 0.2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(batch, "dapo", 0.2, 0.2, kl_coef=0.1)
    with pytest.raises(ValueError, match="loss_norm"):
        grpo_loss(batch, "sum", 0.2, 0.2)
    with pytest.raises(ValueError, match="shapes"):
        grpo_loss(PolicyBatch(logp, logp, torch.zeros(2, 3), torch.ones(2, 3)), "dapo", 0.2, 0.2)


def _ref_decoupled(logp, prox, behaviour, adv, mask, eps_lo, eps_hi, cap):
    """The decoupled (off-policy) objective, one token at a time: dapo mean of
    -min(exp(prox - behaviour), cap) * min(r * A, clip(r) * A) with r = exp(logp - prox); and d loss / d logp."""
    n = sum(sum(row) for row in mask)
    loss, grad = 0.0, [[0.0] * len(logp[0]) for _ in logp]
    for b in range(len(logp)):
        for t in range(len(logp[0])):
            if not mask[b][t]:
                continue
            w = min(math.exp(prox[b][t] - behaviour[b][t]), cap)
            r = math.exp(logp[b][t] - prox[b][t])
            a = adv[b]
            unclipped, clipped = -r * a, -min(max(r, 1 - eps_lo), 1 + eps_hi) * a
            if clipped > unclipped:
                loss += w * clipped / n
            else:
                loss += w * unclipped / n
                grad[b][t] = -w * r * a / n
    return loss, grad


@pytest.mark.parametrize("cap", [2.0, 1.05])
def test_off_policy_loss_matches_reference(cap):
    """Stale samples: the clip is against the proximal policy and each token is reweighted by the truncated
    importance weight proximal / behaviour (AReaL's decoupled PPO)."""
    logp, behaviour, adv, mask, _ = _batch()
    prox = logp + 0.1 * torch.sin(torch.arange(logp.numel()).reshape(logp.shape).float())  # a moved learner
    leaf = logp.clone().requires_grad_(True)
    batch = PolicyBatch(leaf, behaviour, adv, mask, prox_logprobs=prox)
    loss, metrics = grpo_loss(batch, "dapo", 0.2, 0.28, is_cap=cap)
    loss.backward()
    want_loss, want_grad = _ref_decoupled(
        logp.tolist(), prox.tolist(), behaviour.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, cap
    )
    assert loss.item() == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(leaf.grad, torch.tensor(want_grad), rtol=1e-5, atol=1e-6)
    assert 0 < metrics["is_weight_mean"] <= cap and metrics["behaviour_gap"] > 0
    # the learner's own weights as the proximal policy at its first update: ratio 1, no clipping, and with the
    # behaviour equal to it as well the objective is the on-policy one
    on = PolicyBatch(logp.clone().requires_grad_(True), logp, adv, mask, prox_logprobs=logp)
    plain = PolicyBatch(logp.clone().requires_grad_(True), logp, adv, mask)
    assert grpo_loss(on, "dapo", 0.2, 0.28)[0].item() == pytest.approx(
        grpo_loss(plain, "dapo", 0.2, 0.28)[0].item()
    )
