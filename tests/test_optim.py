"""Optimizer param groups, the lr curve (values computed by hand), resume, and grad clipping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nextrl.model.optim import build_optimizer, build_scheduler, clip_grad


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 4)  # an embedding not named *embed*
        self.pos_embed = nn.Parameter(torch.zeros(8, 4))  # a 2-D param named *embed*
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)


def test_param_groups_from_module():
    model = _Tiny()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert {id(p) for p in decay["params"]} == {id(model.proj.weight), id(model.head.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(p)
        for p in (model.wte.weight, model.pos_embed, model.proj.bias, model.norm.weight, model.norm.bias)
    }
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.9, 0.95) and decay["lr"] == 1e-3


def test_param_groups_from_named_or_bare_params():
    model = _Tiny()
    opt = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    # Without the module, `wte` is recognised by neither name nor type: it is decayed.
    assert len(opt.param_groups[0]["params"]) == 3 and opt.param_groups[0]["betas"] == (0.9, 0.99)
    opt = build_optimizer([model.proj.weight, model.proj.bias], lr=1e-3, weight_decay=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    opt = build_optimizer([model.proj.bias], lr=1e-3, weight_decay=0.1)  # empty decay group left out
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0


def _lrs(schedule, warmup, total, steps, min_lr_ratio=0.1):
    p = nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer([p], lr=1.0, weight_decay=0.0)
    sched = build_scheduler(opt, warmup, total, schedule, min_lr_ratio)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])  # the lr this optimizer step uses
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    return out


def test_lr_curves_by_hand():
    warm = [1 / 5, 2 / 5, 3 / 5, 4 / 5]  # warm-up 4: (step + 1) / 5
    const = _lrs("constant", 4, 14, 16)
    assert const == pytest.approx(warm + [1.0] * 12)
    cos = _lrs("cosine", 4, 14, 21)
    assert cos[:5] == pytest.approx(warm + [1.0])
    # step 6: progress 0.2 -> 0.1 + 0.9 * 0.5 * (1 + cos(0.2 pi)); step 9: progress 0.5 -> 0.55
    assert cos[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.2 * math.pi)))
    assert cos[9] == pytest.approx(0.55)
    assert cos[14] == pytest.approx(0.1) and cos[20] == pytest.approx(0.1)  # held at the floor
    lin = _lrs("linear", 4, 14, 21)
    assert lin[6] == pytest.approx(0.82) and lin[9] == pytest.approx(0.55) and lin[14] == pytest.approx(0.1)
    assert lin[20] == pytest.approx(0.1)
    assert _lrs("cosine", 0, 10, 1, min_lr_ratio=0.0) == [1.0]  # no warm-up: the peak from step 0
    assert _lrs("linear", 0, 4, 6, min_lr_ratio=0.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


def test_scheduler_resumes_from_state_dict():
    def make():
        p = nn.Parameter(torch.zeros(3))
        opt = build_optimizer([p], lr=0.5, weight_decay=0.0)
        return p, opt, build_scheduler(opt, 3, 20, "cosine")

    def run(p, opt, sched, n):
        lrs = []
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            p.grad = torch.ones_like(p)
            opt.step()
            sched.step()
        return lrs

    straight = run(*make(), 12)
    p, opt, sched = make()
    run(p, opt, sched, 5)
    saved = (opt.state_dict(), sched.state_dict())
    p2, opt2, sched2 = make()
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    assert run(p2, opt2, sched2, 7) == pytest.approx(straight[5:])


def test_scheduler_rejects_bad_args():
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], lr=1.0, weight_decay=0.0)
    with pytest.raises(ValueError):
        build_scheduler(opt, 0, 10, "step")
    with pytest.raises(ValueError):
        build_scheduler(opt, 0, 10, "cosine", min_lr_ratio=1.5)


def test_clip_grad_returns_pre_clip_norm():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    assert clip_grad([a, b], max_norm=1.0) == pytest.approx(5.0)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5) and b.grad.item() == pytest.approx(0.8, rel=1e-5)
    # Under the limit: norm reported, grads untouched.
    assert clip_grad([a, b], max_norm=10.0) == pytest.approx(1.0, rel=1e-5)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5)
    model = nn.Linear(2, 1)
    model.weight.grad, model.bias.grad = torch.full((1, 2), 2.0), torch.tensor([1.0])
    assert clip_grad(model, max_norm=100.0) == pytest.approx(3.0)
