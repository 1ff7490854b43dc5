"""Both rollout engines (plain `TorchSampler` and `PrefixSharingSampler`) against plain, unpadded, uncached
forwards of a tiny random Llama and a tiny random Gemma 3 (a sliding window of 4, shorter than the prompts plus
samples): every test runs on each engine and model."""

from __future__ import annotations

import pytest
import torch

from nextrl.engine import Phase, PrefixSharingSampler, SamplingParams, TorchSampler
from nextrl.engine.base import PolicyWeights
from nextrl.sharing.logprobs import completion_logprobs
from tiny_models import tiny_gemma3, tiny_llama

V = 64
ALL = tuple(range(V))  # as stop/eos set: whatever is sampled ends the phase/completion
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [17], [18, 19, 20, 21, 22]]  # lengths differ


@pytest.fixture(params=[TorchSampler, PrefixSharingSampler], ids=["plain", "shared"])
def Engine(request):  # noqa: N802 - a class
    return request.param


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    # one thread: tiny ops gain nothing from two, and OpenMP threads spinning against other processes on a
    # busy 2-core machine made this file 100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if request.param == "llama":
        yield tiny_llama(V, max_positions=128).eval()
    else:
        yield tiny_gemma3(V, max_positions=128, sliding_window=4).eval()
    torch.set_num_threads(threads)


def plain_logprobs(model, prompt, completion, temperature):
    """Reference: one unpadded, uncached forward over prompt + completion."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logp[len(prompt) - 1 : -1].gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def assert_logprobs_match(model, prompts, rollouts, temperature):
    checked = 0
    for prompt, group in zip(prompts, rollouts, strict=True):
        for r in group:
            assert r.prompt_ids == prompt
            ref = plain_logprobs(model, prompt, r.completion_ids, temperature)
            mask = torch.tensor(r.action_mask, dtype=torch.bool)
            got = torch.tensor(r.logprobs)
            assert (got[mask] - ref[mask]).abs().max().item() < 1e-4
            assert (got[~mask] == 0).all()
            checked += int(mask.sum())
    assert checked > 0


def test_model_is_sensitive_to_relative_positions(Engine, model):
    # guard for the tests below: a gap in the position ids must move the log-probs far more than 1e-4
    # (a uniform shift would not: RoPE only sees relative positions)
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        a = torch.log_softmax(model(input_ids=ids).logits, -1)
        b = torch.log_softmax(
            model(input_ids=ids, position_ids=torch.arange(9)[None] + (torch.arange(9) > 4)).logits, -1
        )
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize(
    "eos", [(), tuple(range(0, V, 7))]
)  # with eos, rows leave the batch at different steps
def test_logprobs_match_plain_forward(Engine, model, eos):
    params = SamplingParams(phases=(Phase(12),), n=3, temperature=0.7, top_p=0.9, eos_token_ids=eos)
    out = Engine(model, pad_token_id=0, seed=1).generate(PROMPTS, params)
    assert [len(g) for g in out] == [3] * len(PROMPTS)
    assert_logprobs_match(model, PROMPTS, out, 0.7)
    if eos:
        assert {r.finish_reason for g in out for r in g} == {"eos", "length"}
    # the trainer's right-padded batched path (the ratio's numerator) agrees with the same reference
    flat = [(p, r.completion_ids) for p, g in zip(PROMPTS, out, strict=True) for r in g]
    with torch.no_grad():
        batched = completion_logprobs(model, [p for p, _ in flat], [c for _, c in flat], 0.7, pad_id=0)
    for row, (p, c) in zip(batched, flat, strict=True):
        assert (row[: len(c)] - plain_logprobs(model, p, c, 0.7)).abs().max() < 1e-4
        assert (row[len(c) :] == 0).all()


def test_greedy_is_stepwise_argmax(Engine, model):
    out = Engine(model, pad_token_id=0).generate(PROMPTS, SamplingParams.simple(10, temperature=0))
    for prompt, (r,) in zip(PROMPTS, out, strict=True):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(10):
                seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
        assert r.completion_ids == seq[len(prompt) :]
        assert r.finish_reason == "length" and r.action_mask == [1] * 10
    assert_logprobs_match(model, PROMPTS, out, 0)


def test_phases_stop_force_and_zero_budget(Engine, model):
    phases = (
        Phase(5, stop_token_ids=ALL),  # stops after one sampled token
        Phase(3, force_on_length=(40, 41)),  # runs out of budget: two forced tokens
        Phase(0, force_on_length=(42,)),  # only a forced token
        Phase(0),  # contributes nothing
        Phase(2),  # sampled after the forced tokens: conditioned on them
    )
    params = SamplingParams(phases=phases, n=2, temperature=1.0)
    out = Engine(model, pad_token_id=0, seed=0).generate(PROMPTS, params)
    for g in out:
        for r in g:
            c = r.completion_ids
            assert len(c) == 1 + 3 + 2 + 1 + 2
            assert c[4:7] == [40, 41, 42]
            assert r.action_mask == [1, 1, 1, 1, 0, 0, 0, 1, 1]
            assert r.logprobs[4:7] == [0.0, 0.0, 0.0]
            assert r.phase_starts == [0, 1, 6, 7, 7]  # forced tokens belong to the phase that ran out
            assert r.finish_reason == "length"
    assert_logprobs_match(model, PROMPTS, out, 1.0)


def test_finish_reasons_and_unreached_phases(Engine, model):
    sampler = Engine(model, pad_token_id=0, seed=0)
    # eos ends everything, in the first phase; unreached phases start at the end of the completion
    params = SamplingParams(phases=(Phase(5), Phase(5), Phase(0, force_on_length=(3,))), eos_token_ids=ALL)
    for (r,) in sampler.generate(PROMPTS, params):
        assert len(r.completion_ids) == 1 and r.finish_reason == "eos" and r.phase_starts == [0, 1, 1]
    # a stop token in the last phase gives "stop"
    params = SamplingParams(phases=(Phase(2, force_on_length=(9,)), Phase(5, stop_token_ids=ALL)))
    for (r,) in sampler.generate(PROMPTS, params):
        assert r.completion_ids[2] == 9 and len(r.completion_ids) == 4
        assert r.finish_reason == "stop" and r.phase_starts == [0, 3] and r.action_mask == [1, 1, 0, 1]
    # a program of forced tokens only never samples
    params = SamplingParams(phases=(Phase(0, force_on_length=(3, 4)), Phase(0)))
    for (r,) in sampler.generate(PROMPTS, params):
        assert r.completion_ids == [3, 4] and r.action_mask == [0, 0] and r.phase_starts == [0, 2]
        assert r.finish_reason == "length"


def test_seeded_runs_reproduce(Engine, model):
    params = SamplingParams.simple(8, n=2, temperature=1.0, top_p=0.95)

    def ids(seed):
        out = Engine(model, pad_token_id=0, seed=seed).generate(PROMPTS, params)
        return [r.completion_ids for g in out for r in g]

    assert ids(3) == ids(3)
    assert ids(3) != ids(4)


def test_batch_size_does_not_change_greedy(Engine, model):
    params = SamplingParams.simple(8, n=3, temperature=0)
    big = Engine(model, pad_token_id=0, batch_size=64).generate(PROMPTS, params)
    small = Engine(model, pad_token_id=0, batch_size=5).generate(PROMPTS, params)
    for gb, gs in zip(big, small, strict=True):
        for rb, rs in zip(gb, gs, strict=True):
            assert rb.completion_ids == rs.completion_ids
            assert torch.allclose(torch.tensor(rb.logprobs), torch.tensor(rs.logprobs), atol=1e-5)


def test_tiny_top_p_is_greedy(Engine, model):
    greedy = Engine(model, pad_token_id=0).generate(PROMPTS, SamplingParams.simple(8, temperature=0))
    params = SamplingParams.simple(8, n=2, temperature=1.0, top_p=1e-6)
    nucleus = Engine(model, pad_token_id=0, seed=0).generate(PROMPTS, params)
    for (g,), group in zip(greedy, nucleus, strict=True):
        assert all(r.completion_ids == g.completion_ids for r in group)


def test_sync_weights_and_mode_restored(Engine, model):
    sampler = Engine(model, pad_token_id=0, seed=0)
    assert sampler.capabilities.state and sampler.capabilities.work and sampler.capabilities.entropies

    def never():  # an engine sharing the module in-process must not copy the weights
        raise AssertionError("state_dict() called")

    sampler.sync_weights(PolicyWeights(7, never))
    assert sampler.model is model
    model.train()
    try:
        (r,), *_ = sampler.generate(PROMPTS, SamplingParams.simple(2))
        assert r.policy_version == 7 and model.training
    finally:
        model.eval()


def test_state_dict_resumes_rng_stream(Engine, model):
    params = SamplingParams.simple(6, n=2, temperature=1.0)
    a = Engine(model, pad_token_id=0, seed=5)
    a.generate(PROMPTS, params)
    state = a.state_dict()
    expected = a.generate(PROMPTS, params)
    b = Engine(model, pad_token_id=0, seed=99)
    b.load_state_dict(state)
    assert b.generate(PROMPTS, params) == expected


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
def test_sampling_follows_the_tempered_truncated_distribution(top_p):
    """`sample_tokens` draws token i with probability softmax(logits / T) restricted to the top-p set and
    renormalised (the slow reference below), and reports the log-prob before truncation; 40,000 draws, each
    frequency within 5 standard errors."""
    from nextrl.engine.core import sample_tokens

    logits = torch.tensor([2.0, 1.5, 0.3, -0.5, 1.0, -3.0])
    T, rows = 0.7, 40_000
    p = torch.softmax(logits / T, -1).tolist()
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept, mass = [], 0.0
    for i in order:  # the smallest prefix of the sorted tokens whose mass reaches top_p (at least one)
        if kept and mass >= top_p:
            break
        kept.append(i)
        mass += p[i]
    want = [p[i] / mass if i in kept else 0.0 for i in range(len(p))]
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams.simple(1, temperature=T, top_p=top_p)
    tokens, logps, _ = sample_tokens(logits.repeat(rows, 1), params, gen)
    freq = torch.bincount(tokens, minlength=len(p)).double() / rows
    for i, w in enumerate(want):
        se = (w * (1 - w) / rows) ** 0.5
        assert abs(freq[i].item() - w) <= 5 * se + 1e-12, (i, freq[i].item(), w)
    assert torch.allclose(logps, torch.log_softmax(logits / T, -1)[tokens])


@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_target_logprob_is_the_answer_distribution_at_temperature_1(Engine, model, temperature):
    """`SamplingParams.score_phase`: each sample records log p(its prompt's score token) at temperature 1 at
    the first step of the answer phase, whether the thought ended by its stop token or by the forced close,
    or was closed by a lead token; equal to a plain teacher-forced forward of prompt + thought. A sample that
    ended (eos) before the answer phase has none; without `score_phase` nobody has one."""
    import dataclasses

    close, eos = 40, 41
    params = SamplingParams(
        phases=(Phase(5, (close, 30, 31), (close,)), Phase(1)),
        n=6,
        temperature=temperature,
        eos_token_ids=(eos, 42),
        lead=(close, 2),
        score_phase=1,
        score_tokens=(3, 11, 12, 50),
    )
    assert Engine.capabilities.score
    groups = Engine(model, 0, seed=1).generate(PROMPTS, params)
    checked, ended = 0, 0
    for prompt, group, target in zip(PROMPTS, groups, params.score_tokens, strict=True):
        for r in group:
            if len(r.phase_starts) < 2 or r.phase_starts[1] >= len(r.completion_ids):
                assert r.target_logprob is None and r.finish_reason == "eos"
                ended += 1
                continue
            thought = r.completion_ids[: r.phase_starts[1]]
            want = completion_logprobs(model, [prompt + thought], [[target]], 1.0, 0)[0, 0]
            assert r.target_logprob == pytest.approx(float(want), abs=1e-5)
            checked += 1
    assert checked >= 12
    plain = Engine(model, 0, seed=1).generate(PROMPTS, dataclasses.replace(params, score_phase=None))
    assert all(r.target_logprob is None for g in plain for r in g)
    with pytest.raises(ValueError, match="4 prompts"):
        Engine(model, 0).generate(PROMPTS, dataclasses.replace(params, score_tokens=(1, 2)))


def test_bridges_follow_the_first_phase_however_it_ends(Engine, model):
    """`SamplingParams.bridges`: each prompt's tokens are appended unsampled (mask 0, log-prob 0) right after
    the first phase, whether it ended by its stop token or by its forced close; the answer phase, and its
    scored target, come after them (checked against a plain forward of prompt + thought + bridge). A prompt
    with an empty bridge gets none; a completion cut by eos in the first phase never reaches its bridge, and
    every rollout records its prompt's bridge (`Rollout.bridge`)."""
    import dataclasses

    close, eos = 40, 41
    bridges = ((7,), (), (8, 9), (7,))
    params = SamplingParams(
        phases=(Phase(3, (close, 30, 31, 32, 33), (close,)), Phase(2)),
        n=6,
        temperature=1.0,
        eos_token_ids=(eos,),
        score_phase=1,
        score_tokens=(3, 11, 12, 50),
        bridges=bridges,
    )
    groups = Engine(model, 0, seed=2).generate(PROMPTS, params)
    reached = 0
    for prompt, group, bridge, target in zip(PROMPTS, groups, bridges, params.score_tokens, strict=True):
        for r in group:
            assert r.bridge == list(bridge)
            if (
                r.finish_reason == "eos"
                and len(r.phase_starts) > 1
                and r.phase_starts[1] == len(r.completion_ids)
            ):
                assert r.target_logprob is None
                continue
            end = r.phase_starts[1]
            thought = r.completion_ids[: end - len(bridge)]
            assert thought[-1] in (close, 30, 31, 32, 33)
            assert r.completion_ids[end - len(bridge) : end] == list(bridge)
            assert r.action_mask[end - len(bridge) : end] == [0] * len(bridge)
            assert r.logprobs[end - len(bridge) : end] == [0.0] * len(bridge)
            want = completion_logprobs(model, [prompt + thought + list(bridge)], [[target]], 1.0, 0)[0, 0]
            assert r.target_logprob == pytest.approx(float(want), abs=1e-5)
            reached += bool(bridge)
    assert reached >= 12
    assert_logprobs_match(model, PROMPTS, groups, 1.0)
    with pytest.raises(ValueError, match="bridges has 2 entries for 4 prompts"):
        Engine(model, 0).generate(PROMPTS, dataclasses.replace(params, bridges=((1,), (2,))))
