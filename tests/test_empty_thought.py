"""Empty-thought samples and the next-token term: the rollouts they make, what the loss trains on them, and
the contexts the LM term reads."""

import numpy as np
import pytest
import torch

from nextrl.config import load_config
from nextrl.engine.base import Phase, Rollout, SamplingParams
from nextrl.env.base import Task
from nextrl.env.formats import answer_params
from nextrl.env.formats.structured import closed_prompts, empty_thought_targets, join_empty_thought
from nextrl.env.next_token import lm_sequences
from nextrl.trainer.learner import Learner
from nextrl.trainer.self_selection import loss_token_masks
from nextrl.trainer.step_account import StepAccount
from tiny_models import tiny_gemma3, tiny_llama

CLOSE = 9


def test_answer_params_keep_only_the_answer_phase():
    params = SamplingParams(
        phases=(Phase(16, (CLOSE,), (CLOSE,)), Phase(1)), n=8, temperature=0.7, top_p=0.9, eos_token_ids=(2,)
    )
    p = answer_params(params, 2)
    assert p.phases == (Phase(1),) and p.n == 2 and p.temperature == 0.7 and p.eos_token_ids == (2,)
    assert closed_prompts([[1, 2], [3]], CLOSE) == [[1, 2, CLOSE], [3, CLOSE]]


def test_join_makes_close_an_action_then_the_answer():
    answers = [[Rollout([1, 2, CLOSE], [7], [-0.5], [1], "length", 3, [0], [1.2])]]
    (group,) = join_empty_thought([[1, 2]], answers, [-4.0], [2.5], CLOSE)
    (r,) = group
    assert r.prompt_ids == [1, 2]  # the prompt as every other sample of the group has it
    assert r.completion_ids == [CLOSE, 7]
    assert r.logprobs == [-4.0, -0.5] and r.action_mask == [1, 1] and r.entropies == [2.5, 1.2]
    assert r.phase_starts == [0, 1] and r.policy_version == 3
    # RLP's thought-only loss trains exactly the decision to close at once; 'all' trains the answer too
    (thought_only,) = loss_token_masks([r], thought_only=True, rho=1.0)
    assert thought_only.action_mask == [1, 0]
    (everything,) = loss_token_masks([r], thought_only=False, rho=1.0)
    assert everything.action_mask == [1, 1]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_lead_tokens_in_the_engine_equal_the_separate_passes(temperature):
    """`SamplingParams.lead`: the engine closes the thought of the last k samples itself, in the same call as
    the thinking samples. Their rollouts are what the separate passes build (the answers from prompt +
    </think>, the close scored by a teacher-forced pass, joined): same tokens, masks and phases greedy; the
    close's log-prob and entropy are the policy's first-step ones in both engines."""
    import dataclasses

    from nextrl.engine import PrefixSharingSampler, TorchSampler
    from nextrl.sharing.logprobs import completion_logprobs

    model = tiny_llama(40).eval()
    prompts = [[3, 4, 5, 6, 7] * 4, [3, 4, 5, 6, 8] * 4, [9, 10, 11]]
    params = SamplingParams(phases=(Phase(6, (CLOSE,), (CLOSE,)), Phase(2)), n=4, temperature=temperature)
    close_lp = completion_logprobs(model, prompts, [[CLOSE]] * 3, temperature, 0)[:, 0].tolist()
    for engine in (TorchSampler, PrefixSharingSampler):
        assert engine.capabilities.lead
        lead = engine(model, 0, seed=0).generate(prompts, dataclasses.replace(params, lead=(CLOSE, 2)))
        for group, lp in zip(lead, close_lp, strict=True):
            for r in group[2:]:  # the empty-thought samples: </think> is an action with the policy's log-prob
                assert r.completion_ids[0] == CLOSE and r.action_mask[0] == 1 and r.phase_starts[:2] == [0, 1]
                assert r.logprobs[0] == pytest.approx(lp, abs=1e-5)
                assert r.entropies[0] == pytest.approx(group[0].entropies[0], abs=1e-6)
            assert all(r.completion_ids[0] != CLOSE or len(r.completion_ids) > 1 for r in group[2:])
        if temperature:
            continue
        think = engine(model, 0, seed=0).generate(prompts, dataclasses.replace(params, n=2))
        answers = engine(model, 0, seed=0).generate(closed_prompts(prompts, CLOSE), answer_params(params, 2))
        joined = join_empty_thought(prompts, answers, close_lp, [g[0].entropies[0] for g in think], CLOSE)
        for got, a, b in zip(lead, think, joined, strict=True):
            for x, y in zip(got, [*a, *b], strict=True):
                assert (x.completion_ids, x.action_mask, x.phase_starts, x.finish_reason) == (
                    y.completion_ids, y.action_mask, y.phase_starts, y.finish_reason)  # fmt: skip
                assert np.allclose(x.logprobs, y.logprobs, atol=1e-5)
                assert np.allclose(x.entropies, y.entropies, atol=1e-5)


def _task(ctx, target):
    return Task("t", [*ctx, 5], meta={"context_ids": ctx, "target_ids": [target, 0]})


def test_lm_sequences_keep_each_stripe_once():
    doc = list(range(10, 30))
    # three positions of one stripe (nested contexts) and one of another document
    tasks = [_task(doc[:4], doc[4]), _task(doc[:9], doc[9]), _task(doc[:6], doc[6]), _task([1, 2], 3)]
    got = lm_sequences(tasks)
    assert sorted(got) == sorted([doc[:10], [1, 2, 3]])
    assert lm_sequences([_task([], 4)]) == []  # a lone token predicts nothing


def test_empty_thought_targets_train_only_the_true_token():
    tasks = [_task([5, 6, 7], 8), _task([], 4), _task([9], 3)]
    seqs, starts = empty_thought_targets(tasks, 1, 2)
    assert seqs == [[5, 6, 7, 1, 2, 8], [9, 1, 2, 3]]
    assert starts == [4, 2]  # target index 4 predicts token 5 (= 8): only the token after </think>


def test_lm_term_gradient_is_the_mean_nll():
    """The trainer's LM term equals lm_coef × the mean next-token NLL over all predicted tokens, whatever the
    micro-batch size (a slow reference: one sequence at a time, summed)."""
    model = tiny_llama(40)
    seqs = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]

    grads = []
    for size in (1, 2, 8):
        cfg = load_config("micro", ["model.dtype=float32", f"rl.micro_batch_size={size}", "rl.lm_coef=0.5"])
        trainer = Learner.__new__(Learner)
        trainer.rl, trainer.policy, trainer.pad_token_id = cfg.rl, model, 0
        trainer.device, trainer.autocast, trainer.account = torch.device("cpu"), None, StepAccount()
        model.zero_grad()
        trainer.lm_term(seqs)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    total = 0.0
    for s in seqs:
        logits = model(input_ids=torch.tensor([s[:-1]])).logits[0]
        total = total + torch.nn.functional.cross_entropy(logits, torch.tensor(s[1:]), reduction="sum")
    (0.5 * total / sum(len(s) - 1 for s in seqs)).backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for g in grads:
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)
    # with start indices: only the targets from there on count
    trainer.account = StepAccount()
    model.zero_grad()
    trainer.lm_term(seqs, [3, 0, 1])
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    total = 0.0
    for s, a in zip(seqs, [3, 0, 1], strict=True):
        logits = model(input_ids=torch.tensor([s[:-1]])).logits[0][a:]
        total = total + torch.nn.functional.cross_entropy(logits, torch.tensor(s[a + 1 :]), reduction="sum")
    (0.5 * total / 3).backward()  # one target each: 7, 9 and 12
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _lm_learner(model, sharing: bool, micro: int, lm_coef: float = 0.5) -> Learner:
    cfg = load_config(
        "micro",
        ["model.dtype=float32", f"rl.micro_batch_size={micro}", f"rl.lm_coef={lm_coef}",
         f"sharing.enabled={str(sharing).lower()}", "sharing.max_tree_nodes=40"],
    )  # fmt: skip
    learner = Learner.__new__(Learner)
    learner.cfg, learner.rl, learner.policy, learner.pad_token_id, learner.peers = cfg, cfg.rl, model, 0, None
    learner.device, learner.autocast, learner.account = torch.device("cpu"), None, StepAccount()
    return learner


@pytest.mark.parametrize("tiny", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_lm_terms_on_prefix_trees_equal_the_plain_path(tiny):
    """The next-token term through prefix trees (the stripe's text and every position's empty-thought sequence
    nest in it) gives the plain path's two means and the same gradient, at any micro-batch size and when a tree
    is cut by `max_tree_nodes`; it encodes each shared token once, so it counts far fewer tokens. Gemma 3's
    sliding window (6) is far shorter than the sequences (up to 26 tokens)."""
    model = tiny(40)
    g = torch.Generator().manual_seed(0)
    doc = torch.randint(3, 38, (30,), generator=g).tolist()
    other = torch.randint(3, 38, (24,), generator=g).tolist()
    lm_seqs = [doc[:26], other]  # one stripe's text and another document's
    empty = ([doc[:p] + [1, 2, doc[p]] for p in (18, 21, 25)] + [other[:20] + [1, 2, other[20]], [7, 1, 2, 8]],
             [0, 0, 0, 0, 0])  # fmt: skip
    empty = (empty[0], [len(q) - 2 for q in empty[0]])  # one target each: the token after </think>

    def run(sharing, micro):
        learner = _lm_learner(model, sharing, micro)
        model.zero_grad()
        values = learner.lm_terms(lm_seqs, empty)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return values, grad, learner.account.pass_work("lm").tokens

    plain, plain_grad, plain_tokens = run(False, 64)
    for micro in (1, 3, 64):
        got, grad, tokens = run(True, micro)
        assert got.keys() == plain.keys() == {"lm_loss", "lm_loss_empty_thought"}
        for k in got:
            assert got[k] == pytest.approx(plain[k], rel=1e-5)
        torch.testing.assert_close(grad, plain_grad, rtol=1e-4, atol=1e-6)
        assert tokens < plain_tokens
    # the slow reference for the values: one sequence at a time
    with torch.no_grad():
        nll = [torch.nn.functional.cross_entropy(model(input_ids=torch.tensor([q[:-1]])).logits[0][a:],
                                                 torch.tensor(q[a + 1 :]), reduction="sum")
               for q, a in zip(empty[0], empty[1], strict=True)]  # fmt: skip
    assert got["lm_loss_empty_thought"] == pytest.approx(float(sum(nll)) / len(nll), rel=1e-5)
    # nothing to train, and one term alone
    assert _lm_learner(model, True, 4).lm_terms([], None) == {}
    assert _lm_learner(model, True, 4).lm_terms(lm_seqs, None).keys() == {"lm_loss"}


@pytest.mark.slow
def test_trainer_step_with_empty_thoughts_and_lm_term(tmp_path):
    """One real RL step on the micro preset: the last k samples of every group close the thought at once, with
    the policy's own log-prob of `</think>` as behaviour log-prob; the LM term is trained and counted."""
    import copy

    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import build_rl_trainer, select_stage

    cfg = load_config(
        "micro",
        ["model.dtype=float32", "rl.empty_thought_samples=1", "rl.lm_coef=0.5", "sampling.group_size=4"],
    )
    base = prepare_base(cfg)
    index = select_stage(cfg, base, tmp_path, torch.device("cpu"), None)
    policy = copy.deepcopy(base.model)
    trainer = build_rl_trainer(cfg, policy, base.tokenizer, index, tmp_path / "rl", torch.device("cpu"), None)
    env = trainer.env
    before = copy.deepcopy(policy)
    metrics = trainer.step()
    close = env.thought_format.close
    for prompt, group in ((g.task, g.rollouts) for g in trainer.last_groups):
        assert len(group) == 4
        *thinking, empty = group
        assert (
            empty.completion_ids[0] == close
            and empty.action_mask[0] == 1
            and empty.phase_starts[:2] == [0, 1]
        )
        with torch.no_grad():
            logits = before(input_ids=torch.tensor([prompt.prompt_ids])).logits[0, -1].float()
        want = torch.log_softmax(logits / cfg.sampling.temperature, -1)[close]
        assert empty.logprobs[0] == pytest.approx(float(want), abs=1e-4)
    assert "reward/empty_thought" in metrics and "reward/thinking" in metrics
    # the next-token term rides in the loss's forwards (prefix sharing): trained, no pass of its own
    assert metrics["lm_loss"] > 0 and metrics["lm_loss_empty_thought"] > 0
    assert trainer.state.flops["lm"] == 0 and trainer.state.flops["loss_forward"] > 0
    assert 0.0 <= metrics["groups/signal_fraction"] <= 1.0


@pytest.mark.parametrize("temperature", [0.0])
def test_structured_format_lead_and_plain_paths_agree(temperature):
    """`StructuredFormat.sample_groups`: on an engine with lead tokens the k empty samples come from the same
    call; without, from `prompt + </think>` joined to a scored `</think>`. Greedy, the groups are the same."""
    from nextrl.engine import TorchSampler
    from nextrl.env.formats import StructuredFormat
    from nextrl.sharing.logprobs import completion_logprobs

    model = tiny_llama(40).eval()
    fmt = StructuredFormat(8, CLOSE, 6, 2, (), None)
    tasks = [Task(f"t{i}", p, meta={}) for i, p in enumerate([[3, 4, 5, 6, 8] * 4, [9, 10, 11]])]
    params = fmt.sampling(4, temperature, 1.0)

    class Sampler:
        def __init__(self, lead):
            self.lead, self.engine = lead, TorchSampler(model, 0, seed=0)

        def generate(self, prompts, p):
            return self.engine.generate(prompts, p)

        def first_logprobs(self, prompts, token, t):
            return completion_logprobs(model, prompts, [[token]] * len(prompts), t, 0)[:, 0].tolist()

    lead = fmt.sample_groups(tasks, params, 2, Sampler(True))
    plain = fmt.sample_groups(tasks, params, 2, Sampler(False))
    for a, b in zip(lead, plain, strict=True):
        assert len(a) == len(b) == 4
        for x, y in zip(a, b, strict=True):
            assert (x.prompt_ids, x.completion_ids, x.action_mask, x.phase_starts) == (
                y.prompt_ids, y.completion_ids, y.action_mask, y.phase_starts)  # fmt: skip
            assert np.allclose(x.logprobs, y.logprobs, atol=1e-5)
        assert all(r.completion_ids[0] == CLOSE for r in a[2:])
