"""The aside format (`nextrl.env.formats.aside`): delimiters from the model's own vocabulary, and an empty
thought that is exactly no thought. Tiny random models and a BPE trained here: no download."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nextrl.config.schema import EnvConfig, RewardConfig
from nextrl.engine import TorchSampler
from nextrl.engine.base import Phase, Rollout, SamplingParams
from nextrl.env import NextTokenEnv
from nextrl.env.formats import AsideFormat, EngineSampler
from nextrl.env.formats.aside import is_no_thought
from nextrl.errors import ConfigError
from nextrl.eval.accuracy import standard_correct, thought_length, thought_rollouts
from nextrl.eval.info_gain import evaluate_information_gain, gains_of_thoughts
from tiny_models import parens_tokenizer, tiny_llama

TEXT = (
    "the cat (a black one) sat on the mat. the dog ran to the river (twice). a bird looked at the big house."
)


@pytest.fixture(scope="module")
def tok():
    return parens_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_llama(len(tok), max_positions=128).eval()
    torch.set_num_threads(threads)


def aside(tok, **kw) -> NextTokenEnv:
    return NextTokenEnv(EnvConfig(format="aside", **{"thought_tokens": 4, "target_tokens": 2, **kw}), tok)


class ClosingAtOnce:
    """An engine whose every thought is closed at once: the real engine with the close as a lead action of each
    two-phase sample (an aside thought `context ( )`), and plain otherwise."""

    def __init__(self, engine, close: int):
        self.engine, self.close, self.capabilities = engine, close, engine.capabilities

    def generate(self, prompts, params: SamplingParams):
        if len(params.phases) == 2:
            params = dataclasses.replace(params, lead=(self.close, params.n))
        return self.engine.generate(prompts, params)


def rollout(prompt, completion, starts) -> Rollout:
    n = len(completion)
    return Rollout(list(prompt), list(completion), [0.0] * n, [1] * n, "stop", phase_starts=starts)


# ---------------------------------------------------------------- the format's own rules


def test_default_delimiters_are_single_tokens(tok):
    env = aside(tok)
    fmt = env.thought_format
    assert isinstance(fmt, AsideFormat)
    assert [tok.decode([fmt.open]), tok.decode([fmt.close])] == [" (", ")"]


def test_a_delimiter_of_two_tokens_is_a_config_error(tok):
    with pytest.raises(ConfigError, match=r"env\.delimiters.*' \[' is 2 tokens"):
        aside(tok, delimiters=(" [", ")"))
    with pytest.raises(ConfigError, match="same token"):
        aside(tok, delimiters=(")", ")"))


def test_prompt_phases_and_answer_reading(tok):
    env = aside(tok, answer_tokens=2)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    task = env.make_task("d", doc, 14, context=5)
    ctx = task.meta["context_ids"]
    assert tok.decode(ctx[-1:]) == " sat"  # no trailing space: the aside goes after the whole context
    assert task.prompt_ids == [*ctx, fmt.open]  # context + open, nothing new in the vocabulary
    sp = env.sampling_params(4, 0.7, 0.9)
    assert sp.phases == (Phase(4, (fmt.close,), (fmt.close,)), Phase(2))
    assert (sp.n, sp.temperature, sp.top_p) == (4, 0.7, 0.9)
    assert fmt.thought_params([task], sp) is sp  # no bridge to write
    x, y = doc[14], doc[15]
    thinking = rollout(task.prompt_ids, [9, 10, fmt.close, x, y], [0, 3])
    assert fmt.answer_bytes(thinking) == env.token_bytes.join([x, y])
    assert fmt.closed_thought(thinking) == ([9, 10, fmt.close], False)
    assert fmt.scored_prefix(thinking) == [*ctx, fmt.open, 9, 10, fmt.close]
    # the empty-thought sample: prompt = bare context, completion = answer, an empty thought phase
    empty = rollout(ctx, [x], [0, 0])
    assert is_no_thought(empty) and fmt.answer_bytes(empty) == env.token_bytes(x)
    assert fmt.closed_thought(empty) == ([], False) and fmt.scored_prefix(empty) == ctx
    # a thought closed at once is no thought: scored after the bare context
    at_once = rollout(task.prompt_ids, [fmt.close, x], [0, 1])
    assert fmt.closed_thought(at_once) == ([], False) and fmt.scored_prefix(at_once) == ctx
    # a thought cut by eos: no answer; scored after the closed thought
    eos = tok.eos_token_id
    cut = rollout(task.prompt_ids, [9, eos], [0])
    assert fmt.answer_bytes(cut) is None
    assert fmt.closed_thought(cut) == ([9, fmt.close], True)
    # the next-token term's empty-thought text is the bare context and x_t
    seqs, starts = fmt.empty_thought_targets([task])
    assert seqs == [[*ctx, x]] and starts == [len(ctx) - 1]


def test_an_aside_goes_before_the_contexts_trailing_space(tok):
    """A context ending in whitespace tokens ("a " before "black": how a digit-splitting tokenizer writes a
    number) gets its aside before them, and they come back after the close (`bridge`): the prompt drops them,
    the engine re-writes them (`thought_params`), the answer is read after them, and the scored prefix is
    `context-without-space + open + thought + close + space`; a thought closed at once is the bare context."""
    env = aside(tok, answer_tokens=2)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    task = env.make_task("d", doc, 6, context=5)
    ctx = task.meta["context_ids"]
    space = ctx[-1]
    assert tok.decode([space]) == " " and tok.decode(ctx[-2:-1]) == "a"
    assert fmt.bridge(ctx) == [space]
    assert task.prompt_ids == [*ctx[:-1], fmt.open]
    params = fmt.thought_params([task], env.sampling_params(2, 1.0, 1.0))
    assert params.bridges == ((space,),)
    x, y = doc[6], doc[7]
    thinking = Rollout(
        task.prompt_ids, [9, fmt.close, space, x, y], [0.0, 0.0, 0.0, 0.0, 0.0], [1, 1, 0, 1, 1], "length",
        phase_starts=[0, 3], bridge=[space],
    )  # fmt: skip
    assert fmt.answer_bytes(thinking) == env.token_bytes.join([x, y])
    assert fmt.closed_thought(thinking) == ([9, fmt.close], False) and fmt.thought_ids(thinking) == [9]
    assert fmt.scored_prefix(thinking) == [*ctx[:-1], fmt.open, 9, fmt.close, space]
    at_once = Rollout(
        task.prompt_ids,
        [fmt.close, space, x],
        [0.0] * 3,
        [1, 0, 1],
        "length",
        phase_starts=[0, 2],
        bridge=[space],
    )
    assert fmt.closed_thought(at_once) == ([], False) and fmt.scored_prefix(at_once) == ctx
    cut = Rollout(
        task.prompt_ids, [9, tok.eos_token_id], [0.0, 0.0], [1, 1], "eos", phase_starts=[0, 2], bridge=[space]
    )
    assert fmt.closed_thought(cut) == ([9, fmt.close], True)
    assert fmt.scored_prefix(cut) == [*ctx[:-1], fmt.open, 9, fmt.close, space]  # the bridge it never reached
    # a context of whitespace alone keeps its aside after it; no thought budget, no move
    assert fmt.bridge([tok.eos_token_id, space]) == [] and fmt.bridge([space, space]) == []
    assert aside(tok, thought_tokens=0).make_task("d", doc, 6, context=5).prompt_ids == ctx


def test_thinking_samples_write_the_bridge_and_answer_after_it(tok, model):
    """Through the real engine: every thinking sample of a context that ends in a space has the space right
    after its close (unsampled), and its answer's log-prob is the plain forward's after the space."""
    env = aside(tok, thought_tokens=3)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=6) for p in (6, 14)]
    assert [bool(fmt.bridge(t.meta["context_ids"])) for t in tasks] == [True, False]
    groups = fmt.sample_groups(
        tasks, env.sampling_params(4, 1.0, 1.0), 1, EngineSampler(TorchSampler(model, 0, seed=3))
    )
    seen = 0
    for task, group in zip(tasks, groups, strict=True):
        bridge = fmt.bridge(task.meta["context_ids"])
        for r in group:
            if is_no_thought(r):
                assert r.prompt_ids == task.meta["context_ids"] and r.bridge == []
                continue
            end = r.phase_starts[1]
            assert r.bridge == bridge and r.completion_ids[end - len(bridge) - 1] == fmt.close
            assert r.completion_ids[end - len(bridge) : end] == bridge
            assert r.action_mask[end - len(bridge) : end] == [0] * len(bridge)
            full = [*r.prompt_ids, *r.completion_ids]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([full])).logits[0].float()
            at = len(r.prompt_ids) + end  # the first answer token
            want = torch.log_softmax(logits[at - 1], -1)[full[at]]
            assert r.logprobs[end] == pytest.approx(float(want), abs=1e-4)
            assert fmt.scored_prefix(r) == full[:at]
            seen += bool(bridge)
    assert seen >= 1


def test_no_thought_budget_is_no_thought(tok):
    env = aside(tok, thought_tokens=0)
    task = env.make_task("d", tok(TEXT)["input_ids"], 6, context=5)
    assert task.prompt_ids == task.meta["context_ids"]
    assert env.sampling_params(2, 1.0, 1.0).phases == (Phase(1),)
    assert not env.thought_format.has_empty_thought


# ---------------------------------------------------------------- sampling a group


class Recorder:
    """A GroupSampler over a real engine that records what it was asked."""

    def __init__(self, engine):
        self.engine, self.lead, self.calls = engine, False, []

    def generate(self, prompts, params: SamplingParams):
        self.calls.append(([list(p) for p in prompts], params))
        return self.engine.generate(prompts, params)

    def first_logprobs(self, prompts, token, temperature):
        raise AssertionError("the aside format scores no forced token")


def test_empty_samples_are_answers_from_the_bare_context(tok, model):
    env = aside(tok, thought_tokens=3)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=6) for p in (5, 9, 14)]
    params = env.sampling_params(3, 0.0, 1.0)
    rec = Recorder(TorchSampler(model, 0, seed=0))
    groups = fmt.sample_groups(tasks, params, 1, rec)
    assert [len(g) for g in groups] == [3, 3, 3]
    assert rec.calls[0][0] == [t.prompt_ids for t in tasks] and rec.calls[0][1].n == 2
    assert rec.calls[-1][0] == [t.meta["context_ids"] for t in tasks] and rec.calls[-1][1].n == 1
    std = TorchSampler(model, 0, seed=0).generate(
        [t.meta["context_ids"] for t in tasks], SamplingParams.simple(1, temperature=0.0)
    )
    for task, group, s in zip(tasks, groups, std, strict=True):
        empty = group[-1]
        assert empty.prompt_ids == task.meta["context_ids"] and empty.phase_starts == [0, 0]
        # greedy: the empty sample's answer is the standard (bare-context) prediction, with its log-prob
        assert empty.completion_ids == s[0].completion_ids
        assert empty.logprobs == pytest.approx(s[0].logprobs, abs=1e-6)
        for r in group[:-1]:
            assert r.prompt_ids == task.prompt_ids or is_no_thought(r)


def test_thinking_samples_closed_at_once_are_redone_from_the_bare_context(tok, model):
    env = aside(tok)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=6) for p in (5, 9)]
    engine = ClosingAtOnce(TorchSampler(model, 0), fmt.close)
    assert (
        engine.generate([tasks[0].prompt_ids], env.sampling_params(1, 0.0, 1.0))[0][0].completion_ids[0]
        == fmt.close
    )
    groups = fmt.sample_groups(tasks, env.sampling_params(2, 0.0, 1.0), 0, EngineSampler(engine))
    for task, group in zip(tasks, groups, strict=True):
        for r in group:
            assert is_no_thought(r) and r.prompt_ids == task.meta["context_ids"]


# ---------------------------------------------------------------- an empty thought costs exactly nothing


def test_empty_thought_gain_is_zero_and_its_prediction_is_the_standard_one(tok, model):
    env = aside(tok)
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=8) for p in range(3, len(doc) - 1)]
    engine = ClosingAtOnce(TorchSampler(model, 0, seed=0), env.thought_format.close)
    correct, rollouts = thought_rollouts(env, engine, tasks, 0.0)
    assert all(thought_length(r) == 0 for r in rollouts)
    assert correct == standard_correct(env, engine, tasks)
    # the answers themselves: the with-thought answer is the bare context's greedy token
    std = engine.generate([t.meta["context_ids"] for t in tasks], SamplingParams.simple(1, temperature=0.0))
    assert [r.completion_ids[:1] for r in rollouts] == [s[0].completion_ids for s in std]
    gains = gains_of_thoughts(model, 0, env, tasks, rollouts, None)
    assert gains == [0.0] * len(tasks)  # exactly: the same sequence, the same pass


def test_info_gain_of_a_thought_matches_plain_forwards(tok, model):
    """log p(x | context + open + thought + close) − log p(x | context), by plain forwards of the model."""
    env = aside(tok, thought_tokens=3)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=8) for p in (4, 6, 8, 12, 17)]
    got = evaluate_information_gain(model, tok, env, tasks, None, batch_size=4)

    def logp(prefix, x):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix])).logits[0, -1].float()
        return float(torch.log_softmax(logits, -1)[x])

    diffs, moved = [], 0
    for t in tasks:
        ctx = list(t.meta["context_ids"])
        # a context ending in a space has its aside before the space, and the space after the close
        space = ctx[-1:] if tok.decode(ctx[-1:]) == " " else []
        moved += bool(space)
        seq = ctx[: len(ctx) - len(space)] + [fmt.open]
        assert seq == t.prompt_ids
        for _ in range(3):  # greedy thought until the close (forced on length)
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
            if nxt == fmt.close:
                break
        if seq[-1] != fmt.close:
            seq.append(fmt.close)
        thought = seq[len(t.prompt_ids) :]
        prefix = ctx if thought == [fmt.close] else seq + space
        x = t.meta["target_ids"][0]
        diffs.append(logp(prefix, x) - logp(ctx, x))
    assert moved == 1 and got["n"] == len(tasks)
    assert got["mean"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-4)


def test_rl_reward_of_an_empty_sample_reads_the_bare_context(tok, model):
    """The model-scored terms of an empty-thought sample are teacher-forced after the bare context: with the
    baseline equal to the policy its information gain is 0."""
    from nextrl.env.base import ScoringModel

    env = NextTokenEnv(
        EnvConfig(format="aside", thought_tokens=3, target_tokens=2), tok, RewardConfig(spec="info_gain")
    )
    env.bind_scorer(ScoringModel(model, 0, None))
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=6) for p in (5, 9, 14)]
    groups = env.thought_format.sample_groups(
        tasks, env.sampling_params(3, 1.0, 1.0), 1, Recorder(TorchSampler(model, 0, seed=1))
    )
    rewards = env.score(tasks, groups)
    for g, rw in zip(groups, rewards, strict=True):
        assert is_no_thought(g[-1])
        assert rw[-1].components["info_gain"] == pytest.approx(0.0, abs=1e-6)
        assert all(math.isfinite(r.components["info_gain"]) for r in rw)


def test_with_thought_rollouts_of_a_structured_env_are_the_engines(tok, model):
    """The structured format makes no change to the with-thought protocol (its empty thought is `</think>`)."""
    env = NextTokenEnv(EnvConfig(thought_tokens=3), tok)
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=6) for p in (5, 9)]
    engine = TorchSampler(model, 0, seed=0)
    _, got = thought_rollouts(env, engine, tasks, 0.0)
    want = engine.generate([t.prompt_ids for t in tasks], env.sampling_params(1, 0.0, 1.0))
    assert [dataclasses.asdict(r) for r in got] == [dataclasses.asdict(g[0]) for g in want]


# ---------------------------------------------------------------- in the RL loop


def test_empty_thought_samples_need_a_format_with_an_empty_thought(tok):
    """`rl.empty_thought_samples` asks the environment's format: the prompted format has no empty thought."""
    from nextrl.config import load_config
    from nextrl.engine.base import EngineCapabilities
    from nextrl.trainer.rl import RLTrainer

    cfg = load_config("micro", ["rl.empty_thought_samples=1"])
    trainer = RLTrainer.__new__(RLTrainer)
    trainer.rl = cfg.rl
    trainer.engine = type("E", (), {"capabilities": EngineCapabilities()})()
    trainer.env = NextTokenEnv(EnvConfig(format="prompted"), tok)
    with pytest.raises(ConfigError, match=r"rl\.empty_thought_samples.*'prompted' has no empty thought"):
        trainer._check_capabilities()
    trainer.env = aside(tok)
    trainer._check_capabilities()  # the aside format has one


@pytest.mark.slow
def test_rl_step_in_the_aside_format(tmp_path):
    """Two real RL steps on the micro preset in the aside format, with one empty-thought sample per group, the
    next-token term and information gain: the empty samples are answers from the bare context whose
    information gain is 0 at the first step (baseline = policy), and the step trains."""
    import copy

    from nextrl.config import load_config
    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import build_rl_trainer, select_stage

    cfg = load_config(
        "micro",
        [
            "model.dtype=float32",
            "env.format=aside",
            "env.delimiters=['(', ')']",  # single bytes: one token in any byte-level BPE
            "rl.empty_thought_samples=1",
            "rl.lm_coef=0.5",
            "sampling.group_size=4",
            "reward=prefix_match+0.1*info_gain",
        ],
    )
    base = prepare_base(cfg)
    index = select_stage(cfg, base, tmp_path, torch.device("cpu"), None)
    policy = copy.deepcopy(base.model)
    trainer = build_rl_trainer(cfg, policy, base.tokenizer, index, tmp_path / "rl", torch.device("cpu"), None)
    fmt = trainer.env.thought_format
    assert isinstance(fmt, AsideFormat)
    metrics = trainer.step()
    for g in trainer.last_groups:
        *thinking, empty = g.rollouts
        assert g.empty_samples == 1 and is_no_thought(empty)
        assert empty.prompt_ids == g.task.meta["context_ids"]
        assert g.rewards[-1].components["info_gain"] == pytest.approx(0.0, abs=1e-4)
        for r in thinking:
            assert is_no_thought(r) or r.prompt_ids == g.task.prompt_ids
    assert "reward/empty_thought" in metrics and "reward/thinking" in metrics
    assert metrics["lm_loss"] > 0 and metrics["lm_loss_empty_thought"] > 0
    assert math.isfinite(trainer.step()["reward/mean"])


def _pretrained_folder_without_think_tokens(folder):
    """A model folder as a user brings one: its tokenizer has no `<think>`/`</think>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(["the cat (a small one) sat on the mat (twice) by the door."] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", unk_token="<unk>")
    tiny_llama(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def test_only_the_structured_format_adds_thought_tokens_to_a_pretrained_model(tmp_path):
    """A pretrained model keeps its own vocabulary (and embeddings) in the aside format, which writes thoughts
    in tokens it has; the structured format adds `<think>`/`</think>` and grows the embeddings by two rows.
    Without them in the vocabulary no token of a document counts as an inline thought (`<think>` would
    otherwise resolve to the unknown token's id)."""
    from nextrl.config import load_config
    from nextrl.model.pretrain import prepare_base
    from nextrl.positions.index import inside_thoughts

    own = _pretrained_folder_without_think_tokens(tmp_path / "model")
    common = [f"model.path={tmp_path / 'model'}", f"pretrain.cache_dir={tmp_path / 'cache'}"]
    aside = prepare_base(load_config("micro", [*common, "env.format=aside", "env.delimiters=['(', ')']"]))
    assert len(aside.tokenizer) == len(own) == aside.model.get_input_embeddings().num_embeddings
    assert "<think>" not in aside.tokenizer.get_vocab()
    structured = prepare_base(load_config("micro", [*common, "env.format=structured"]))
    assert len(structured.tokenizer) == len(own) + 2
    assert structured.model.get_input_embeddings().num_embeddings == len(own) + 2
    unknown = aside.tokenizer.convert_tokens_to_ids("<think>")
    assert unknown == aside.tokenizer.unk_token_id
    tokens = torch.tensor([5, unknown, 6, 7]).numpy()
    assert not inside_thoughts(tokens, aside.tokenizer).any()
