"""The prefix-sharing sampler's lean forward (`engine.lean_forward`) against the Hugging Face module it
replaces: same hidden states, same samples, for every model family it claims (Llama with grouped-query
attention, Qwen2 with q/k/v biases, Qwen3 with q/k norms, Gemma 3 with sliding-window and global layers), and a
clear refusal for anything else."""

import random

import numpy as np
import pytest
import torch
from transformers import (
    DynamicCache,
    Gemma3ForCausalLM,
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
from nextrl.sharing.branch_attention import window_mask
from nextrl.sharing.prefix_tree import build_tree, tree_batch
from tiny_models import tiny_gemma3, tiny_llama

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


MODELS = {"llama": lambda: tiny_llama(V), "qwen2": qwen2, "qwen3": qwen3, "gemma3": lambda: tiny_gemma3(V)}


def prompts(seed: int, n_docs: int = 2, per_doc: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_docs):
        doc = [rng.randrange(2, V) for _ in range(60)]
        out += [doc[:p] + [1] for p in sorted(rng.sample(range(20, 58), per_doc))]
    return out


def module_masks(model, mask, q_pos, k_pos):
    """The mask argument of the Hugging Face module: one 4D mask, or for Gemma 3 one per layer type (the
    module applies no sliding window to a 4D mask of its own accord)."""
    if not isinstance(model, Gemma3ForCausalLM):
        return mask
    window = window_mask(mask, q_pos, k_pos, model.config.sliding_window)
    return {"full_attention": mask, "sliding_attention": window}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_lean_forward_equals_the_module_on_a_tree_then_a_decode_step(family):
    """A prefill over a tree mask and one step of new tokens with their own mask: the lean forward's hidden
    states (and the cache it keeps) equal the Hugging Face module's with its DynamicCache."""
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
    all_pos = torch.cat([pos, step_pos], dim=1)
    with torch.no_grad():
        cache = lean.new_cache()
        a1, a2 = lean(ids, pos, mask, cache), lean(step_ids, step_pos, step_mask, cache)
        hf = DynamicCache()
        b1 = model.model(input_ids=ids, position_ids=pos, attention_mask=module_masks(model, mask, pos, pos),
                         past_key_values=hf, use_cache=True).last_hidden_state  # fmt: skip
        b2 = model.model(input_ids=step_ids, position_ids=step_pos, past_key_values=hf, use_cache=True,
                         attention_mask=module_masks(model, step_mask, step_pos, all_pos)).last_hidden_state  # fmt: skip
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
    with pytest.warns(UserWarning, match="gpt2.*Hugging Face module"):
        assert PrefixSharingSampler(model, 0).lean is None  # auto: the Hugging Face module, said once
    with pytest.raises(ConfigError, match="sampling.decode.*gpt2"):
        PrefixSharingSampler(model, 0, decode="lean")
    with pytest.raises(ConfigError, match="sampling.decode"):
        PrefixSharingSampler(tiny_llama(V), 0, decode="fast")
    assert PrefixSharingSampler(tiny_llama(V), 0).lean is not None


def test_lean_forward_under_bf16_autocast_samples_what_the_module_samples():
    """The GPU setting (matmuls in bf16 under autocast, the residual stream in fp32): the same dtypes flow through
    both forwards, so short greedy samples are the same and the log-probs agree to bf16's rounding. Not to 1e-5, and
    not sampled at temperature 1: on a CPU with native bf16 (AMX, AVX512-BF16) the lean forward's fused q/k/v and
    gate/up matmuls accumulate in another order than the module's separate ones (log-prob differences up to
    0.017 measured, enough to flip a sampled token now and then), as they do on a GPU."""
    model = tiny_llama(V).eval()
    params = SamplingParams(
        phases=(Phase(3, (5,), (5,)), Phase(1)), n=1, temperature=0.0
    )  # short: no near-tie
    ps = prompts(5)
    outs = [PrefixSharingSampler(model, 0, seed=1, decode=d, autocast_dtype=torch.bfloat16).generate(ps, params)
            for d in ("hf", "lean")]  # fmt: skip
    for ga, gb in zip(*outs, strict=True):
        for a, b in zip(ga, gb, strict=True):
            assert a.completion_ids == b.completion_ids
            assert np.allclose(a.logprobs, b.logprobs, atol=0.05)  # bf16 has 8 mantissa bits


# ---------------------------------------------------------------- Gemma 3: sliding-window and global layers


def gemma_tree(seed: int = 0):
    """Three sequences of one document, 13-22 tokens (over three windows of 6), branching at 3 and 11."""
    rng = random.Random(seed)
    doc = [rng.randrange(2, V) for _ in range(22)]
    seqs = [
        doc,
        doc[:11] + [rng.randrange(2, V) for _ in range(8)],
        doc[:3] + [rng.randrange(2, V) for _ in range(10)],
    ]
    return seqs, build_tree(seqs)


@pytest.mark.parametrize("trunk", [0, 5, None])  # None: the whole longest path (22 > the window)
def test_gemma3_tree_states_equal_each_sequence_alone(trunk, monkeypatch):
    """Every node of a tree prefill, and one decode step of every branch, against the Hugging Face module run
    on that node's own sequence alone (its own causal and sliding masks, no tree): the window is measured in
    positions along the sequence, not in cache columns. A causal trunk no longer than the window (5) keeps the
    causal kernel on sliding layers; a longer one (22) must not."""
    model = tiny_gemma3(V).eval()
    assert supports(model) is None and model.config.sliding_window == 6
    seqs, t = gemma_tree()
    ids, pos, mask = tree_batch([t], 0, torch.device("cpu"))
    lean = LeanForward(model)
    nxt = torch.tensor([[7, 8, 9]])  # each branch's next token, decoded in one step
    ends = [nodes[-1] for nodes in t.seq_nodes]
    step_mask = torch.cat([mask[:, :, ends], torch.eye(3, dtype=torch.bool)[None, None]], dim=3)
    step_pos = torch.tensor([[len(s) for s in seqs]])
    with torch.no_grad():
        cache = lean.new_cache()
        prefill = lean(ids, pos, mask, cache, trunk=t.trunk if trunk is None else trunk)
        step = lean(nxt, step_pos, step_mask, cache)
        for k, (s, nodes) in enumerate(zip(seqs, t.seq_nodes, strict=True)):
            alone = model.model(input_ids=torch.tensor([s + [7 + k]])).last_hidden_state[0]
            torch.testing.assert_close(prefill[0, nodes], alone[:-1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(step[0, k], alone[-1], rtol=1e-5, atol=1e-5)
        # mutation check: without the window the states move far beyond the tolerance
        monkeypatch.setattr("nextrl.engine.lean_forward.window_mask", lambda mask, *_: mask)
        assert (lean(ids, pos, mask, lean.new_cache()) - prefill).abs().max() > 1e-2


def test_gemma3_prefix_sharing_greedy_equals_hugging_face_generate():
    """Greedy samples of the prefix-sharing sampler (lean and module paths) are Hugging Face `generate`'s, one
    prompt at a time with its own sliding-window cache; prompts and samples run far past the window."""
    model = tiny_gemma3(V).eval()
    rng = random.Random(5)
    doc = [rng.randrange(2, V) for _ in range(30)]
    ps = [doc[:p] for p in (4, 12, 25)] + [[2] + doc[5:20]]
    params = SamplingParams(phases=(Phase(16),), n=2, temperature=0.0, eos_token_ids=(1,))
    ref = []
    with torch.no_grad():
        for p in ps:
            out = model.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=1,
                                 pad_token_id=0, attention_mask=torch.ones(1, len(p), dtype=torch.long))  # fmt: skip
            ref.append(out[0, len(p) :].tolist())
    assert len({tuple(r) for r in ref}) == len(ps)
    for decode in ("lean", "hf"):
        out = PrefixSharingSampler(model, 0, batch_size=8, decode=decode).generate(ps, params)
        assert [[r.completion_ids for r in g] for g in out] == [[r, r] for r in ref], decode


def test_gemma3_settings_the_fast_path_does_not_compute_are_refused():
    model = tiny_gemma3(V)
    model.config.attn_logit_softcapping = 50.0
    assert "attn_logit_softcapping" in supports(model)
    with pytest.warns(UserWarning, match="attn_logit_softcapping"):
        assert PrefixSharingSampler(model, 0).lean is None  # auto: the module
    model.config.attn_logit_softcapping = None
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        PrefixSharingSampler(model, 0)
