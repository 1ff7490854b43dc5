"""The aside format's mixing (`env.mix_weight`): the answer after a thought read from
w p(. | context ( thought )) + (1 − w) p(. | context). Every reading (model-scored rewards, evaluation's
with-thought prediction and information gain) against a slow reference: plain full-sequence forwards of a tiny
random model, the mixture computed with explicit probabilities in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from nextrl.config import load_config
from nextrl.config.schema import EnvConfig, RewardConfig
from nextrl.engine.base import Rollout
from nextrl.env import NextTokenEnv
from nextrl.env.base import ScoringModel
from nextrl.errors import ConfigError
from nextrl.eval.accuracy import mixed_answers
from nextrl.eval.info_gain import gains_of_thoughts
from nextrl.sharing.logprobs import tree_next_token_log_probs
from tiny_models import parens_tokenizer, tiny_gemma3, tiny_llama

TEXT = (
    "the cat (a black one) sat on the mat. the dog ran to the river (twice). a bird looked at the big house."
)
W = 0.3  # large enough that the mixture moves the answer on a random model


@pytest.fixture(scope="module")
def tok():
    return parens_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_llama(len(tok), max_positions=128).eval()
    torch.set_num_threads(threads)


def mixing_env(tok, reward: RewardConfig | None = None, **kw) -> NextTokenEnv:
    cfg = EnvConfig(format="aside", **{"thought_tokens": 4, "target_tokens": 2, "mix_weight": W, **kw})
    return NextTokenEnv(cfg, tok, reward)


def logp_row(model, prefix) -> torch.Tensor:
    """The slow reference: one plain forward of the whole sequence, float64 log-softmax of its last row."""
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([list(prefix)])).logits[0, -1].double(), -1)


def mixed_reference(after: torch.Tensor, bare: torch.Tensor, w: float = W) -> torch.Tensor:
    return torch.log(w * after.double().exp() + (1.0 - w) * bare.double().exp())


def rollout(prompt, completion, starts, target_logprob=None) -> Rollout:
    n = len(completion)
    return Rollout(
        list(prompt), list(completion), [0.0] * n, [1] * n, "stop", phase_starts=starts,
        target_logprob=target_logprob,
    )  # fmt: skip


# ---------------------------------------------------------------- the config and the format


def test_mix_weight_is_checked_at_load():
    assert load_config("gemma-cpu", ["env.mix_weight=0.03"]).env.mix_weight == 0.03
    for bad, why in [
        (["env.format=structured"], "env.format=aside"),
        (["env.answer_tokens=2"], "answer_tokens=1"),
    ]:
        with pytest.raises(ConfigError, match=rf"env\.mix_weight.*{why}"):
            load_config("gemma-cpu", ["env.mix_weight=0.1", *bad])
    for w in ("0", "1", "1.5"):
        with pytest.raises(ConfigError, match=r"env\.mix_weight"):
            load_config("gemma-cpu", [f"env.mix_weight={w}"])


def test_mix_matches_explicit_probabilities_and_an_empty_thought_is_exact(tok):
    fmt = mixing_env(tok).thought_format
    g = torch.Generator().manual_seed(0)
    after = torch.log_softmax(torch.randn(5, 40, generator=g) * 3, -1)
    bare = torch.log_softmax(torch.randn(5, 40, generator=g) * 3, -1)
    torch.testing.assert_close(fmt.mix(after, bare).double(), mixed_reference(after, bare))  # whole rows
    torch.testing.assert_close(
        fmt.mix(after[:, 7], bare[:, 7]).double(), mixed_reference(after[:, 7], bare[:, 7])
    )
    # a useless thought (no mass on the token) costs -log(1 - w); the bare context mixed with itself is itself
    cost = bare[:, 7] - fmt.mix(torch.full((5,), -1e4), bare[:, 7])
    torch.testing.assert_close(cost, torch.full((5,), -math.log(1 - W)))
    assert torch.equal(fmt.mix(bare, bare), bare)
    assert mixing_env(tok, mix_weight=None).thought_format.mix(after, bare) is after


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_next_token_rows_match_plain_forwards(arch):
    model = (tiny_llama(60) if arch == "llama" else tiny_gemma3(60)).eval()
    g = torch.Generator().manual_seed(0)
    doc = torch.randint(3, 60, (20,), generator=g).tolist()
    prompts = [doc[:7], doc[:12], [*doc[:12], 5, 6], doc[:3], doc[:12]]  # nested, branching and repeated
    got = tree_next_token_log_probs(model, prompts, 0)
    for p, row in zip(prompts, got, strict=True):
        torch.testing.assert_close(row.double(), logp_row(model, p), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- model-scored rewards


def groups_of(env, tasks, fast: bool, model):
    """Per task: two thinking samples (thought of 2 and 1 tokens), one closed at once and one empty-thought
    sample. With `fast`, the thinking samples carry the engine's recorded log-prob of the first target token
    after the thought (the score plan), computed here by a plain forward as an engine would."""
    fmt = env.thought_format
    groups = []
    for i, t in enumerate(tasks):
        x = t.meta["target_ids"][0]
        thinking = [[40 + i, 41, fmt.close, x], [44, fmt.close, x]]
        group = []
        for comp in thinking:
            r = rollout(t.prompt_ids, comp, [0, len(comp) - 1])
            if fast:
                r.target_logprob = float(logp_row(model, fmt.scored_prefix(r))[x])
            group.append(r)
        group.append(rollout(t.prompt_ids, [fmt.close, x], [0, 1]))  # closed at once: no thought
        group.append(rollout(t.meta["context_ids"], [x], [0, 0]))  # the empty-thought sample
        groups.append(group)
    return groups


@pytest.mark.parametrize("fast", [False, True])
def test_model_scored_terms_mix_with_the_policys_bare_prediction(tok, model, fast):
    """info_gain (1 token) and likelihood (2 tokens, mixed per token) against plain forwards: the with-thought
    term is log(w p_policy(x | context ( thought )) + (1 − w) p_policy(x | context)), the baseline the EMA's
    log p(x | context). The policy moves away from the EMA after binding, so a bare term taken from the EMA
    (or an unmixed one) would show."""
    reward = RewardConfig(spec="info_gain+likelihood", likelihood_tokens=2, copy_guard=False)
    env = mixing_env(tok, reward)
    policy = copy.deepcopy(model)
    env.bind_scorer(ScoringModel(policy, 0, None))
    ema = copy.deepcopy(env.model_scored.ema.model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=7) for p in (5, 9, 14)]
    groups = groups_of(env, tasks, fast, policy)
    rewards = env.score(tasks, groups)
    fmt = env.thought_format
    for t, group, rw in zip(tasks, groups, rewards, strict=True):
        ctx, x = list(t.meta["context_ids"]), t.meta["target_ids"][:2]
        bare = [float(logp_row(policy, ctx + x[:j])[x[j]]) for j in range(2)]
        base = [float(logp_row(ema, ctx + x[:j])[x[j]]) for j in range(2)]
        for r, got in zip(group, rw, strict=True):
            prefix = fmt.scored_prefix(r)
            if prefix == ctx:  # an empty thought: exactly the bare context, unmixed
                with_t = bare
            else:
                after = [logp_row(policy, prefix + x[:j])[x[j]] for j in range(2)]
                with_t = [
                    float(mixed_reference(a, torch.tensor(b))) for a, b in zip(after, bare, strict=True)
                ]
            want_gain = with_t[0] - base[0]
            want_lik = sum(w - b for w, b in zip(with_t, base, strict=True)) / 2
            assert got.components["info_gain"] == pytest.approx(want_gain, abs=1e-4)
            assert got.components["likelihood"] == pytest.approx(want_lik, abs=1e-4)
        # the empty-thought sample's gain is the policy's bare term against the EMA's, bit for bit the same
        # value as the sample closed at once
        assert rw[-1].components["info_gain"] == rw[-2].components["info_gain"]


def test_without_mixing_the_rewards_are_unchanged(tok, model):
    """mix_weight null: the with-thought term is the after-thought log-prob alone (the existing behaviour)."""
    reward = RewardConfig(spec="info_gain", copy_guard=False)
    env = mixing_env(tok, reward, mix_weight=None)
    env.bind_scorer(ScoringModel(model, 0, None))
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=7) for p in (5, 9)]
    groups = groups_of(env, tasks, False, model)
    for t, group, rw in zip(tasks, groups, env.score(tasks, groups), strict=True):
        x, ctx = t.meta["target_ids"][0], list(t.meta["context_ids"])
        for r, got in zip(group, rw, strict=True):
            want = logp_row(model, env.thought_format.scored_prefix(r))[x] - logp_row(model, ctx)[x]
            assert got.components["info_gain"] == pytest.approx(float(want), abs=1e-4)


# ---------------------------------------------------------------- evaluation


def eval_rollouts(env, tasks):
    """One greedy-style rollout per task: a two-token thought then an answer, one closed at once, one whose
    thought ended by eos (no answer)."""
    fmt = env.thought_format
    out = []
    for i, t in enumerate(tasks):
        if i == 1:
            out.append(rollout(t.prompt_ids, [fmt.close, 20], [0, 1]))
        elif i == 2:
            out.append(rollout(t.prompt_ids, [9, env.tok.eos_token_id], [0]))
        else:
            out.append(rollout(t.prompt_ids, [40 + i, 30 + i, fmt.close, 20], [0, 3]))
    return out


def test_with_thought_prediction_is_the_argmax_of_the_mixture(tok, model):
    env = mixing_env(tok)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=8) for p in range(4, len(doc) - 1)]
    rollouts = eval_rollouts(env, tasks)
    correct, got = mixed_answers(model, 0, env, tasks, rollouts, None)
    moved = 0
    for i, (t, r, g) in enumerate(zip(tasks, rollouts, got, strict=True)):
        ctx = list(t.meta["context_ids"])
        if i == 2:  # the thought ended by eos: still no answer
            assert g == r and not correct[i]
            continue
        bare = logp_row(model, ctx)
        if i == 1:  # closed at once: the standard prediction
            want = int(bare.argmax())
        else:
            after = logp_row(model, fmt.scored_prefix(r))
            want = int(mixed_reference(after, bare).argmax())
            moved += want != int(after.argmax())
        assert g.completion_ids == [*r.completion_ids[: r.phase_starts[-1]], want]
        assert g.phase_starts == r.phase_starts
        answered = want not in fmt.eos_ids  # an answer of eos is no answer, as in the RL reward
        assert fmt.answer_bytes(g) == (env.token_bytes(want) if answered else None)
        assert correct[i] == (answered and env.standard_prediction_correct(t, want))
    assert moved > 0  # the mixture changed some answers: the test can tell mixed from unmixed


def test_evaluation_information_gain_is_mixed(tok, model):
    env = mixing_env(tok)
    fmt = env.thought_format
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=8) for p in (4, 8, 12, 17)]
    rollouts = eval_rollouts(env, tasks)
    gains = gains_of_thoughts(model, 0, env, tasks, rollouts, None)
    for t, r, gain in zip(tasks, rollouts, gains, strict=True):
        x, bare = t.meta["target_ids"][0], logp_row(model, t.meta["context_ids"])
        prefix = fmt.scored_prefix(r)
        if prefix == list(t.meta["context_ids"]):
            assert gain == 0.0  # exactly: the bare context mixed with itself
            continue
        want = mixed_reference(logp_row(model, prefix), bare)[x] - bare[x]
        assert gain == pytest.approx(float(want), abs=1e-4)
        assert gain >= math.log(1 - W) - 1e-5  # a thought costs at most -log(1 - w)


def test_heldout_with_thought_protocol_reads_the_mixture(tok, model):
    """The evaluation stage's with-thought protocol (`heldout.with_thought`): the engine's greedy thoughts, then
    the mixed answer; without mixing, the engine's own answers."""
    from types import SimpleNamespace

    from nextrl.engine import TorchSampler
    from nextrl.eval.accuracy import thought_rollouts
    from nextrl.eval.heldout import with_thought

    cfg = SimpleNamespace(
        eval=SimpleNamespace(thought_temperature=0.0), sharing=SimpleNamespace(max_tree_nodes=4096), seed=0
    )
    doc = tok(TEXT)["input_ids"]
    for w in (W, None):
        env = mixing_env(tok, mix_weight=w)
        tasks = [env.make_task("d", doc, p, context=8) for p in range(4, 20)]
        engine = TorchSampler(model, 0, seed=0)
        got = with_thought(cfg, model, 0, env, engine, tasks, None)
        plain = thought_rollouts(env, TorchSampler(model, 0, seed=0), tasks, 0.0)
        want = plain if w is None else mixed_answers(model, 0, env, tasks, plain[1], None)
        assert got[0] == want[0] and got[1] == want[1]
