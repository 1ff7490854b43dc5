"""The mixing head (Quiet-STaR) against a slow float64 reference with explicit probabilities, and the thought
format measurement (shared KV cache, new-token embeddings) against plain forwards without a cache."""

from __future__ import annotations

import math

import pytest
import torch

from nextrl.eval import thought_formats as tf
from nextrl.model.mixing_head import MixingHead, fit_mixing_head, mixed_log_probs, mixing_nll
from tiny_models import tiny_llama


def reference_mixed(z, logp_after, logp_bare):
    """p_mix = w p_after + (1 - w) p_bare with explicit probabilities, float64."""
    w = 1.0 / (1.0 + torch.exp(-z.double()))
    w = w[..., None] if logp_after.dim() > z.dim() else w
    return torch.log(w * logp_after.double().exp() + (1.0 - w) * logp_bare.double().exp())


def test_mixed_log_probs_values_and_gradients_match_reference():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, generator=g, dtype=torch.float64) * 3
    la = torch.log_softmax(torch.randn(7, 11, generator=g, dtype=torch.float64) * 2, -1)
    lb = torch.log_softmax(torch.randn(7, 11, generator=g, dtype=torch.float64) * 2, -1)
    for args in [(z, la, lb), (z, la[:, 3], lb[:, 3])]:  # a whole vocabulary, and one token per position
        fast = [a.clone().requires_grad_() for a in args]
        slow = [a.clone().requires_grad_() for a in args]
        out_fast, out_slow = mixed_log_probs(*fast), reference_mixed(*slow)
        torch.testing.assert_close(out_fast, out_slow)
        weights = torch.randn(out_fast.shape, generator=g, dtype=torch.float64)
        (out_fast * weights).sum().backward()
        (out_slow * weights).sum().backward()
        for a, b in zip(fast, slow, strict=True):
            torch.testing.assert_close(a.grad, b.grad)
    # a mixed vocabulary distribution is still a distribution
    torch.testing.assert_close(mixed_log_probs(z, la, lb).exp().sum(-1), torch.ones(7, dtype=torch.float64))


def test_mixed_log_probs_stable_at_extremes():
    z = torch.tensor([-60.0, 60.0, 0.0, -60.0])
    la = torch.tensor([-1e4, -2.0, float("-inf"), -3.0])
    lb = torch.tensor([-1.0, -1e4, -2.0, float("-inf")])
    out = mixed_log_probs(z, la, lb)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:2], torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(out[2], torch.tensor(-2.0 + math.log(0.5)))
    torch.testing.assert_close(out[3], torch.tensor(-3.0 - 60.0), rtol=0, atol=1e-4)


def test_head_starts_at_init_weight_and_bounds_the_cost():
    head = MixingHead(16, width=8, init_weight=0.03)
    h_after, h_bare = torch.randn(5, 16) * 50, torch.randn(5, 16)
    w = torch.sigmoid(head(h_after, h_bare))
    torch.testing.assert_close(w, torch.full((5,), 0.03))
    # a thought that puts no mass on the true token costs exactly -log(1 - w)
    lb = torch.full((5,), -2.0)
    cost = lb - mixed_log_probs(head(h_after, h_bare), torch.full((5,), -1e9), lb)
    torch.testing.assert_close(cost, torch.full((5,), -math.log(0.97)))
    with pytest.raises(ValueError, match="init_weight"):
        MixingHead(16, init_weight=1.0)


def test_head_gradients_match_float64_reference():
    torch.manual_seed(0)
    head = MixingHead(6, width=4, init_weight=0.1)
    torch.nn.init.normal_(head.mlp[2].weight)  # away from the zero init, so every parameter has a gradient
    ref = MixingHead(6, width=4).double()
    ref.load_state_dict({k: v.double() for k, v in head.state_dict().items()})
    h_after, h_bare = torch.randn(9, 6), torch.randn(9, 6)
    la, lb = -torch.rand(9) * 5, -torch.rand(9) * 5
    mixing_nll(head, h_after, h_bare, la, lb).backward()
    slow = -reference_mixed(ref(h_after.double(), h_bare.double()), la, lb).mean()
    slow.backward()
    torch.testing.assert_close(mixing_nll(head, h_after, h_bare, la, lb).double(), slow, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(head.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fit_learns_where_the_thought_helps():
    """Positions where feature 0 of h_after is positive have a thought that predicts the token; the fitted head
    trusts the thought there and not elsewhere, and the loss falls below both pure predictions."""
    torch.manual_seed(0)
    h_after, h_bare = torch.randn(400, 8), torch.randn(400, 8)
    helps = h_after[:, 0] > 0
    la = torch.where(helps, torch.tensor(-0.1), torch.tensor(-8.0))
    lb = torch.full((400,), -2.0)
    head = MixingHead(8, width=16)
    losses = fit_mixing_head(head, h_after, h_bare, la, lb, steps=400, lr=3e-2)
    # pure bare: 2.0 nats; pure thought: 4.05; the best mixture: 0.5 * 0.1 + 0.5 * 2.0 = 1.05
    assert losses[0] > 1.9 and losses[-1] < 1.2
    w = torch.sigmoid(head(h_after, h_bare)).detach()
    assert w[helps].mean() > 0.8 and w[~helps].mean() < 0.1


def _formats(model, vocab_size):
    hidden = model.config.hidden_size
    g = torch.Generator().manual_seed(1)
    return tf.FormatBatch(
        [
            tf.new_token_format("new_mean", vocab_size, *[tf.mean_embedding(model)] * 2),
            tf.DelimiterFormat("vocab", 5, 6),
            tf.DelimiterFormat("same", 7, 7),
            tf.new_token_format("new_rand", vocab_size, *torch.randn(2, hidden, generator=g)),
        ],
        vocab_size,
        hidden,
    )


def tiny_gemma3(vocab_size):
    """Gemma 3's own architecture (scaled embeddings, sliding-window layers, tied head), tiny and random."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=48,  # more than context + thought: a cut cache cannot roll back a slid window
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        initializer_range=0.2,
    )
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_shared_cache_readings_match_plain_forwards(arch):
    vocab = 50
    model = tiny_llama(vocab).eval() if arch == "llama" else tiny_gemma3(vocab)
    fb = _formats(model, vocab)
    ids = torch.randint(8, vocab, (30,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden, cache = tf.prefill(model, ids)
        for t in (4, 17, 30):  # context ids[:t]; the prefill is shared, the cache cut to each position
            bare = tf.log_probs(model, hidden[t - 1].expand(len(fb.formats), -1), fb)
            torch.testing.assert_close(tf.log_probs(model, hidden[t - 1], fb), bare)  # one shared state
            plain = torch.log_softmax(model(ids[None, :t]).logits[0, -1], -1)
            torch.testing.assert_close(bare[2, :vocab], plain, rtol=1e-4, atol=1e-5)
            empty = tf.read_empty(model, fb, tf.prefix_cache(cache, t, len(fb.formats)))
            g = torch.Generator().manual_seed(t)
            sampled = tf.read_after_thought(
                model, fb, tf.prefix_cache(cache, t, len(fb.formats)), 5, False, g
            )
            for b, f in enumerate(fb.formats):
                n = vocab + (0 if f.new_rows is None else len(f.new_rows))
                ref = tf.read_reference(model, fb, ids[:t], b, [])
                torch.testing.assert_close(empty.logp[b, :n], ref, rtol=1e-4, atol=1e-4)
                assert len(sampled.thoughts[b]) <= 5 and f.close_id not in sampled.thoughts[b]
                ref = tf.read_reference(model, fb, ids[:t], b, sampled.thoughts[b])
                torch.testing.assert_close(sampled.logp[b, :n], ref, rtol=1e-4, atol=1e-4)


def test_new_rows_equal_a_resized_tied_model():
    """The new rows extend the softmax as they would in a resized model with tied embeddings (Gemma's case)."""
    vocab = 50
    model = tiny_gemma3(vocab)
    fb = _formats(model, vocab)
    ids = torch.randint(8, vocab, (9,), generator=torch.Generator().manual_seed(3))
    resized = tiny_gemma3(vocab)
    resized.resize_token_embeddings(vocab + 2)
    with torch.no_grad():
        resized.get_input_embeddings().weight[vocab:] = fb.new_rows[3]
        plain = torch.log_softmax(
            resized(torch.cat([ids, torch.tensor([vocab, vocab + 1])])[None]).logits[0, -1], -1
        )
        torch.testing.assert_close(tf.read_reference(model, fb, ids, 3, []), plain, rtol=1e-4, atol=1e-5)


def test_thought_sampling_never_opens_inside_a_thought_and_forces_close():
    model = tiny_llama(12).eval()
    fb = tf.FormatBatch([tf.DelimiterFormat("v", 3, 4)], 12, model.config.hidden_size)
    with torch.no_grad():
        _, cache = tf.prefill(model, torch.arange(5, 11))
        for seed in range(5):
            r = tf.read_after_thought(
                model, fb, tf.prefix_cache(cache, 6, 1), 4, False, torch.Generator().manual_seed(seed)
            )
            assert 3 not in r.thoughts[0] and 4 not in r.thoughts[0] and len(r.thoughts[0]) <= 4


def _bench():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "thought_formats.py"
    spec = importlib.util.spec_from_file_location("bench_thought_formats", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_clustered_standard_error_matches_textbook_formulas():
    clustered = _bench().clustered
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, generator=g, dtype=torch.float64).tolist()
    # one position per cluster: the plain standard error s / sqrt(n)
    r = clustered(x, list(range(40)))
    assert r["se"] == pytest.approx(float(torch.tensor(x).std() / math.sqrt(40)))
    # 4 positions per cluster: CR1, k / (k - 1) * sum over clusters of (sum of residuals)^2 / n^2
    clusters = [i // 4 for i in range(40)]
    mean = sum(x) / 40
    sums = [sum(x[i] - mean for i in range(40) if clusters[i] == c) for c in range(10)]
    assert clustered(x, clusters)["se"] == pytest.approx(math.sqrt(10 / 9 * sum(s * s for s in sums)) / 40)
    assert clustered(x, clusters)["ci95"][0] == pytest.approx(mean - 1.96 * clustered(x, clusters)["se"])
