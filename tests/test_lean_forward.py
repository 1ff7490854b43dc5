"""The prefix-sharing sampler's lean forward (`engine.lean_forward`) against the Hugging Face module it
replaces: same hidden states, same samples, for every model family it claims (Llama with grouped-query
attention, Qwen2 with q/k/v biases, Qwen3 with q/k norms), and a clear refusal for anything else."""

import random

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from nextrl.engine import Phase, PrefixSharingSampler, SamplingParams
from nextrl.engine.lean_forward import KVBuffer, LeanForward, supports
from nextrl.errors import ConfigError
from tiny_models import tiny_llama

V = 64
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)  # fmt: skip


def qwen3():
    torch.manual_seed(1)
    cfg = Qwen3Config(**SMALL, head_dim=8)
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg)


def qwen2():
    torch.manual_seed(2)
    cfg = Qwen2Config(**SMALL)
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # Qwen2's q/k/v biases start at zero: make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


MODELS = {"llama": lambda: tiny_llama(V), "qwen2": qwen2, "qwen3": qwen3}


def prompts(seed: int, n_docs: int = 2, per_doc: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_docs):
        doc = [rng.randrange(2, V) for _ in range(60)]
        out += [doc[:p] + [1] for p in sorted(rng.sample(range(20, 58), per_doc))]
    return out


@pytest.mark.parametrize("family", sorted(MODELS))
def test_lean_forward_equals_the_module_on_a_tree_then_a_decode_step(family):
    """A prefill over a tree mask and one step of new tokens with their own mask: the lean forward's hidden
    states (and the cache it keeps) equal the Hugging Face module's with its DynamicCache."""
    from transformers import DynamicCache

    model = MODELS[family]().eval()
    assert supports(model) is None
    g = torch.Generator().manual_seed(0)
    R, N, W = 2, 12, 3
    ids, pos = torch.randint(2, V, (R, N), generator=g), torch.arange(N).repeat(R, 1)
    mask = torch.tril(torch.ones(N, N, dtype=torch.bool)).repeat(R, 1, 1, 1)
    mask[0, 0, 7:, 3:7] = False  # a second branch of the tree in row 0
    step_ids, step_pos = torch.randint(2, V, (R, W), generator=g), torch.tensor([[7, 12, 12], [12, 12, 13]])
    step_mask = torch.rand(R, 1, W, N + W, generator=g) > 0.4
    step_mask[..., N:] = torch.eye(W, dtype=torch.bool)
    step_mask[..., 0] = True
    lean, cache = LeanForward(model), None
    with torch.no_grad():
        cache = lean.new_cache()
        a1, a2 = lean(ids, pos, mask, cache), lean(step_ids, step_pos, step_mask, cache)
        hf = DynamicCache()
        b1 = model.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=hf,
                         use_cache=True).last_hidden_state  # fmt: skip
        b2 = model.model(input_ids=step_ids, position_ids=step_pos, attention_mask=step_mask, past_key_values=hf,
                         use_cache=True).last_hidden_state  # fmt: skip
    torch.testing.assert_close(a1, b1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a2, b2, rtol=1e-5, atol=1e-5)
    assert cache.length == N + W
    # the first 7 tokens of every row are a chain: the causal kernel over them gives the same states, and a
    # trunk one token longer (token 7 of row 0 would see tokens 3..6) does not
    with torch.no_grad():
        torch.testing.assert_close(lean(ids, pos, mask, lean.new_cache(), trunk=7), b1, rtol=1e-5, atol=1e-5)
        assert (lean(ids, pos, mask, lean.new_cache(), trunk=8) - b1).abs().max() > 1e-3
        with pytest.raises(ValueError, match="empty cache"):
            lean(step_ids, step_pos, step_mask, cache, trunk=2)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_with_the_lean_forward_samples_what_the_module_samples(family, temperature):
    """The whole phase program (thought with a forced close, answer), greedy and sampled from one seed: the
    same tokens, masks and phases, log-probs within 1e-5. The thought is long enough that the KV buffer grows
    (doubling) while branches finish at different times (rows and slots retire)."""
    model = MODELS[family]().eval()
    params = SamplingParams(phases=(Phase(40, (5,), (5,)), Phase(2)), n=3, temperature=temperature,
                            eos_token_ids=(0,))  # fmt: skip
    ps = prompts(3)
    outs = [PrefixSharingSampler(model, 0, batch_size=12, seed=7, decode=d).generate(ps, params)
            for d in ("hf", "lean")]  # fmt: skip
    lengths = set()
    for ga, gb in zip(*outs, strict=True):
        for a, b in zip(ga, gb, strict=True):
            assert (a.completion_ids, a.action_mask, a.phase_starts, a.finish_reason) == (
                b.completion_ids, b.action_mask, b.phase_starts, b.finish_reason)  # fmt: skip
            assert np.allclose(a.logprobs, b.logprobs, atol=1e-5)
            assert np.allclose(a.entropies, b.entropies, atol=1e-5)
            lengths.add(len(a.completion_ids))
    assert len(lengths) > 1 or temperature == 0.0  # branches ended at different steps


def test_the_lean_forward_sees_weight_updates_in_place():
    """The learner changes the module's weights in place between calls: the fused projections follow."""
    model = tiny_llama(V).eval()
    params = SamplingParams(phases=(Phase(6),), n=2, temperature=0.0)
    lean, hf = (PrefixSharingSampler(model, 0, seed=0, decode=d) for d in ("lean", "hf"))
    lean.generate(prompts(4), params)
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(-1.5)
        model.model.layers[1].mlp.up_proj.weight.add_(0.3)
    a, b = lean.generate(prompts(4), params), hf.generate(prompts(4), params)
    assert [[r.completion_ids for r in g] for g in a] == [[r.completion_ids for r in g] for g in b]


def test_kv_buffer_grows_by_doubling_and_keeps_what_it_had():
    buf = KVBuffer(1)
    k = torch.arange(2 * 1 * 50 * 2, dtype=torch.float32).reshape(2, 1, 50, 2)
    keys, _ = buf.write(0, k, -k)
    buf.advance(50)
    assert buf.k[0].shape[2] == 64 and torch.equal(keys, k)
    keys, values = buf.write(0, k[:, :, :20], -k[:, :, :20])  # 70 > 64: grows to 128, copies the 50 it had
    buf.advance(20)
    assert (
        buf.k[0].shape[2] == 128
        and torch.equal(keys[:, :, :50], k)
        and torch.equal(values[:, :, 50:], -k[:, :, :20])
    )
    buf.batch_select_indices(torch.tensor([1]))
    assert buf.k[0].shape[0] == 1 and torch.equal(buf.k[0][0, :, :50], k[1])


def test_other_models_run_through_the_module_and_lean_says_why_not():
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    model = GPT2LMHeadModel(cfg)
    assert "gpt2" in supports(model)
    assert PrefixSharingSampler(model, 0).lean is None  # auto: the Hugging Face module
    with pytest.raises(ConfigError, match="sampling.decode.*gpt2"):
        PrefixSharingSampler(model, 0, decode="lean")
    with pytest.raises(ConfigError, match="sampling.decode"):
        PrefixSharingSampler(tiny_llama(V), 0, decode="fast")
    assert PrefixSharingSampler(tiny_llama(V), 0).lean is not None


def test_lean_forward_under_bf16_autocast_samples_what_the_module_samples():
    """The GPU setting (matmuls in bf16 under autocast, the residual stream in fp32): the same dtypes flow through
    both forwards, so the samples and log-probs are the same."""
    model = tiny_llama(V).eval()
    params = SamplingParams(phases=(Phase(12, (5,), (5,)), Phase(2)), n=4, temperature=1.0)
    ps = prompts(5)
    outs = [PrefixSharingSampler(model, 0, seed=1, decode=d, autocast_dtype=torch.bfloat16).generate(ps, params)
            for d in ("hf", "lean")]  # fmt: skip
    for ga, gb in zip(*outs, strict=True):
        for a, b in zip(ga, gb, strict=True):
            assert a.completion_ids == b.completion_ids
            assert np.allclose(a.logprobs, b.logprobs, atol=1e-5)
