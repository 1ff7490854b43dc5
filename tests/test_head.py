"""The chunked vocabulary head against the slow obvious reference: full logits, log_softmax, gather."""

from __future__ import annotations

import pytest
import torch

from nextrl.model.head import (
    head_weight,
    next_token_nll,
    picked_logprobs,
    topk_entropy,
    topk_entropy_of_hidden,
)


def reference_picked(hidden, weight, targets, temperature):
    t = 1.0 if temperature <= 0 else temperature
    logp = torch.log_softmax((hidden @ weight.T).double() / t, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1)


def _data(rows=37, hidden=24, vocab=301, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=g, dtype=dtype)
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype) * 0.5
    tgt = torch.randint(0, vocab, (rows,), generator=g)
    up = torch.randn(rows, generator=g, dtype=dtype)  # an arbitrary upstream gradient per row
    return h, w, tgt, up


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3, 0.0])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])  # recompute in backward, or hold the logits
@pytest.mark.parametrize("chunk", [1, 64, 100, 301, 1000])  # 100 does not divide 301; 1000 > vocab
def test_picked_logprobs_values_and_gradients_match_full_logits(temperature, chunk, keep_bytes):
    h, w, tgt, up = _data()
    h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
    ref = reference_picked(h64, w64, tgt, temperature)
    (ref * up.double()).sum().backward()
    hc, wc = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = picked_logprobs(hc, wc, tgt, temperature, chunk=chunk, keep_bytes=keep_bytes)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    (got * up).sum().backward()
    torch.testing.assert_close(hc.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wc.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)


def test_tied_weight_gradient_sums_embedding_and_head_paths():
    """Gemma's head is its embedding: the weight gradient is the sum of both uses."""
    torch.manual_seed(1)
    vocab, dim, rows = 211, 16, 29
    ids = torch.randint(0, vocab, (rows,))
    tgt = torch.randint(0, vocab, (rows,))
    proj = torch.randn(dim, dim) * 0.3
    w_ref = (torch.randn(vocab, dim) * 0.5).double().requires_grad_()
    h_ref = torch.tanh(w_ref[ids] @ proj.double())
    reference_picked(h_ref, w_ref, tgt, 0.8).sum().backward()
    w = w_ref.detach().float().requires_grad_()
    h = torch.tanh(w[ids] @ proj)
    picked_logprobs(h, w, tgt, 0.8, chunk=50).sum().backward()
    torch.testing.assert_close(w.grad.double(), w_ref.grad, rtol=1e-4, atol=1e-5)


def test_second_backward_of_held_logits_recomputes():
    """The held logits are used up in place by a backward; a second one (retain_graph) recomputes them."""
    h, w, tgt, up = _data(rows=9, vocab=70, seed=2)
    hc = h.clone().requires_grad_()
    out = picked_logprobs(hc, w, tgt, 0.5, chunk=32, keep_bytes=1 << 30)
    (out * up).sum().backward(retain_graph=True)
    first = hc.grad.clone()
    (out * up).sum().backward()
    torch.testing.assert_close(hc.grad, 2 * first)


def test_next_token_nll_is_cross_entropy():
    h, w, tgt, _ = _data(rows=50, vocab=257, seed=3)
    hc, wc = h.clone().requires_grad_(), w.clone().requires_grad_()
    hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = next_token_nll(hc, wc, tgt, chunk=60)
    ref = torch.nn.functional.cross_entropy(hr @ wr.T, tgt, reduction="none")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got.mean().backward()
    ref.mean().backward()
    torch.testing.assert_close(hc.grad, hr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(wc.grad, wr.grad, rtol=1e-4, atol=1e-6)


def test_gradient_only_to_what_requires_it_and_no_rows():
    h, w, tgt, _ = _data(rows=5, vocab=40)
    wc = w.clone().requires_grad_()
    picked_logprobs(h, wc, tgt, chunk=16).sum().backward()  # hidden without grad: weight only
    hr = h.clone()
    wr = w.clone().requires_grad_()
    reference_picked(hr, wr, tgt, 1.0).sum().backward()
    torch.testing.assert_close(wc.grad, wr.grad, rtol=1e-4, atol=1e-6)
    hz = h[:0].clone().requires_grad_()
    out = picked_logprobs(hz, w, tgt[:0])
    assert out.shape == (0,)
    out.sum().backward()


def test_bf16_autocast_matches_autocast_reference():
    h, w, tgt, _ = _data(rows=20, vocab=130, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = picked_logprobs(h, w, tgt, 0.9, chunk=33)
        logits = torch.nn.functional.linear(h, w)
    ref = torch.log_softmax(logits.float() / 0.9, -1).gather(-1, tgt[:, None]).squeeze(-1)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_topk_entropy_of_hidden_matches_full_logits(chunk):
    h, w, _, _ = _data(rows=23, vocab=300, seed=5)
    ref = topk_entropy(h @ w.T, 16)
    torch.testing.assert_close(topk_entropy_of_hidden(h, w, 16, chunk=chunk), ref, rtol=1e-5, atol=1e-6)
    # the formula itself: entropy of the renormalised top-k
    top = (h @ w.T).double().topk(16, -1).values
    p = torch.softmax(top, -1)
    torch.testing.assert_close(ref.double(), -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)


def test_head_weight_refuses_a_head_it_would_get_wrong():
    class Head(torch.nn.Module):
        def __init__(self, bias):
            super().__init__()
            self.lm = torch.nn.Linear(4, 10, bias=bias)
            self.config = type("C", (), {"final_logit_softcapping": None})()

        def get_output_embeddings(self):
            return self.lm

    plain = Head(False)
    assert head_weight(plain) is plain.lm.weight
    with pytest.raises(ValueError, match="bias"):
        head_weight(Head(True))
    capped = Head(False)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        head_weight(capped)


def test_row_of_and_per_row_temperature_match_the_reference():
    """One row predicting several targets (the same one twice too), each row at its own temperature."""
    h, w, _, _ = _data(rows=6, vocab=90, seed=7)
    temps = torch.tensor([0.8, 1.0, 0.0, 1.3, 0.8, 1.0])
    row_of = torch.tensor([0, 0, 0, 2, 3, 5, 5, 1])
    tgt = torch.tensor([4, 4, 17, 89, 0, 33, 34, 60])
    up = torch.linspace(-1, 1, len(tgt))
    h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
    t = torch.where(temps > 0, temps, torch.ones_like(temps)).double()
    logp = torch.log_softmax((h64 @ w64.T) / t[:, None], dim=-1)
    ref = logp[row_of, tgt]
    (ref * up.double()).sum().backward()
    hc, wc = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = picked_logprobs(hc, wc, tgt, temps, row_of=row_of, chunk=40, keep_bytes=0)
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    (got * up).sum().backward()
    torch.testing.assert_close(hc.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wc.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)
