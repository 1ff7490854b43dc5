"""The RL loop with verifier-free rewards and self-selection: tiny real steps on the micro preset, checked
against slow references (plain forwards, hand formulas)."""

from __future__ import annotations

import copy

import pytest
import torch

import nextrl.trainer.learner as learner_module
from nextrl.accounting.flops import TokenWork
from nextrl.config import load_config
from nextrl.engine.base import Rollout
from nextrl.env.formats import closed_thought
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import build_rl_trainer, select_stage
from nextrl.trainer.learner import Learner
from nextrl.trainer.self_selection import answer_entropy, loss_token_masks
from nextrl.trainer.step_account import FLOP_STAGES

pytestmark = pytest.mark.slow
FP32 = ["model.dtype=float32"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    cfg = load_config("micro", FP32)
    base = prepare_base(cfg)
    index = select_stage(cfg, base, tmp_path_factory.mktemp("idx"), torch.device("cpu"), None)
    return base, index


def trainer(micro, tmp_path, overrides):
    base, index = micro
    cfg = load_config("micro", FP32 + overrides)
    policy = copy.deepcopy(base.model)
    return build_rl_trainer(cfg, policy, base.tokenizer, index, tmp_path, torch.device("cpu"), None)


@pytest.fixture
def spy(monkeypatch):
    """Observes the loss from outside: every micro-batch the learner computed a loss on, with the gradient that
    reached each of its per-token log-probs (the tokens the update really trained)."""
    seen: list[tuple[list[Rollout], torch.Tensor]] = []
    chunks: list[list[Rollout]] = []
    real_chunk_loss, real_grpo_loss = Learner.chunk_loss, learner_module.grpo_loss

    def chunk_loss(self, chunk, advantages, *rest):
        chunks.append(list(chunk))
        return real_chunk_loss(self, chunk, advantages, *rest)

    def grpo_loss(batch, *args, **kwargs):
        batch.logprobs.retain_grad()
        seen.append((chunks[-1], batch.logprobs))
        return real_grpo_loss(batch, *args, **kwargs)

    monkeypatch.setattr(Learner, "chunk_loss", chunk_loss)
    monkeypatch.setattr(learner_module, "grpo_loss", grpo_loss)
    return seen


def take_tasks(t, n):
    return t.source.take(n, 0)


def plain_logp(model, prompt, target):
    """Reference: one unpadded forward, log p(target[0] | prompt)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + target[:1]])).logits[0, len(prompt) - 1].float()
    return float(torch.log_softmax(logits, -1)[target[0]])


@pytest.mark.parametrize("engine_scored", [False, True])
def test_info_gain_reward_matches_plain_forwards(micro, tmp_path, engine_scored):
    """The info gain of every sample against plain forwards of the policy (with the thought) and the EMA
    (without): scored by the reward's own teacher-forced pass, or read from what the engine recorded as it
    sampled the answer (`score_plan`), which then leaves the with-thought pass out."""
    import dataclasses

    t = trainer(micro, tmp_path, ["reward=info_gain+prefix_match+0.5*format", "reward.copy_guard=false"])
    ema = t.env.model_scored.ema
    ema.model.load_state_dict(t.policy.state_dict())
    with torch.no_grad():  # make the EMA differ from the policy, so the two models are really told apart
        for p in ema.model.parameters():
            p.mul_(0.9)
    tasks = take_tasks(t, 3)
    params = t.params
    if engine_scored:
        phase, targets = t.env.score_plan(tasks)
        params = dataclasses.replace(params, score_phase=phase, score_tokens=tuple(targets))
    rollouts = t.engine.generate([x.prompt_ids for x in tasks], params)
    before = t.policy_handle.work.logits
    rewards = t.env.score(tasks, rollouts, t.policy_handle)
    read = sum(r.target_logprob is not None for g in rollouts for r in g)
    assert read == (sum(len(g) for g in rollouts) if engine_scored else 0)  # (no thought here ends by eos)
    # the pass without the thought always runs (one target per position); with it, only when not read
    assert (t.policy_handle.work.logits - before == len(tasks)) == engine_scored
    if engine_scored:  # some read, some scored by the pass (a thought cut by eos has no engine log-prob)
        mixed = [[dataclasses.replace(r, target_logprob=None) if j % 2 else r for j, r in enumerate(g)]
                 for g in rollouts]  # fmt: skip
        again = t.env.score(tasks, mixed, t.policy_handle)
        for a, b in zip(again, rewards, strict=True):
            assert [x.total for x in a] == pytest.approx([x.total for x in b], abs=1e-5)
    env = t.env
    for task, group, rw in zip(tasks, rollouts, rewards, strict=True):
        base = plain_logp(ema.model, task.meta["context_ids"], task.meta["target_ids"])
        for ro, r in zip(group, rw, strict=True):
            th, _ = closed_thought(ro, env.thought_format.close, env.eos_ids)
            want = plain_logp(t.policy, task.prompt_ids + th, task.meta["target_ids"]) - base
            assert r.components["info_gain"] == pytest.approx(want, abs=1e-4)
            assert r.components["format"] == (0.0 if r.parsed else -1.0)
            total = r.components["info_gain"] + r.components["prefix_match"] + 0.5 * r.components["format"]
            assert r.total == pytest.approx(total, abs=1e-6)


def test_copy_guard_takes_the_gain_away(micro, tmp_path):
    t = trainer(micro, tmp_path, ["reward=likelihood"])
    task = take_tasks(t, 1)[0]
    target = task.meta["target_ids"]
    close = t.env.thought_format.close
    # the thought writes out the target (the known hack); the other thinks of something else
    copy_ro = Rollout(
        task.prompt_ids, target[:2] + [close] + target[:1], [0.0] * 4, [1] * 4, "length", 0, [0, 3]
    )
    other = Rollout(task.prompt_ids, [close, target[0]], [0.0] * 2, [1] * 2, "length", 0, [0, 1])
    terms = t.env.model_scored
    terms.rc = terms.rc.model_copy(update={"copy_guard": False})
    unguarded = t.env.score([task], [[copy_ro, other]], t.policy_handle)[0]
    terms.rc = terms.rc.model_copy(update={"copy_guard": True})
    guarded = t.env.score([task], [[copy_ro, other]], t.policy_handle)[0]
    assert guarded[0].components["likelihood"] == pytest.approx(
        min(unguarded[0].components["likelihood"], 0.0)
    )
    assert guarded[1].components["likelihood"] == pytest.approx(unguarded[1].components["likelihood"])


def test_rlp_step_trains_thought_only_and_moves_the_ema(micro, tmp_path, spy):
    t = trainer(micro, tmp_path, ["reward=info_gain", "reward.ema_tau=0.9", "sampling.temperature=1.2"])
    assert (t.learner.advantage_kind, t.learner.thought_only) == ("rlp", True)
    ema = t.env.model_scored.ema
    ema_before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    m = t.step()
    assert "reward/info_gain" in m and m["groups/kept"] > 0
    # EMA after one optimizer step: φ = τ·φ0 + (1−τ)·θ1
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(
                v, 0.9 * ema_before[k] + 0.1 * t.policy.state_dict()[k], rtol=0, atol=1e-6
            )
    assert m["flops/scoring"] > 0
    # which tokens received gradient: thought tokens only, never the answer the reward teacher-forces
    assert spy, "the update computed no loss"
    answers = thoughts = 0
    for chunk, logp in spy:
        for r, g in zip(chunk, logp.grad, strict=False):
            cut = r.phase_starts[1]
            answers += int((g[cut : len(r.completion_ids)] != 0).sum())
            thoughts += int((g[:cut] != 0).sum())
        assert any(len(r.completion_ids) > r.phase_starts[1] for r in chunk)  # there was an answer to skip
    assert answers == 0 and thoughts > 0


def test_entropy_mask_fraction_and_answer_entropy():
    def ro(ents, mask, starts):
        return Rollout([1], list(range(len(ents))), [0.0] * len(ents), mask, "length", 0, starts, ents)

    batch = [ro([0.1, 2.0, 0.0, 0.5], [1, 1, 0, 1], [0, 3]), ro([3.0, 0.2, 1.0], [1, 1, 1], [0, 2])]
    kept = loss_token_masks(batch, False, 0.5)  # 6 valid tokens -> keep the 3 highest: 3.0, 2.0, 1.0
    assert [r.action_mask for r in kept] == [[0, 1, 0, 0], [1, 0, 1]]
    thought = loss_token_masks(batch, True, 1.0)
    assert [r.action_mask for r in thought] == [[1, 1, 0, 0], [1, 1, 0]]
    assert answer_entropy(batch) == pytest.approx((0.5 + 1.0) / 2)


def test_dynamic_sampling_keeps_the_batch_full(micro, tmp_path):
    t = trainer(
        micro,
        tmp_path,
        ["rl.dynamic_sampling=true", "rl.max_draws=6", "sampling.temperature=1.5", "rl.steps=3"],
    )
    for _ in range(2):
        m = t.step()
        assert m["groups/drawn"] >= m["groups/kept"]
        assert m["groups/kept"] + m.get("dynamic/short_by", 0) == t.cfg.positions.per_step
        assert m["groups/dropped"] == m["groups/drawn"] - m["groups/kept"]
        assert m["reward/batch_mean"] == m["reward/batch_mean"]  # not NaN


def test_curriculum_retirement_and_resume(micro, tmp_path):
    overrides = [
        "curriculum.schedule=easy_to_hard",
        "curriculum.retire_after=1",
        "curriculum.prefer=uncertain",
    ]
    overrides += ["rl.steps=4", "rl.checkpoint_every=2"]
    a = trainer(micro, tmp_path / "a", overrides)
    a.train()
    counts = a.source.stats()
    assert counts["retired"] > 0  # with retire_after=1 every visit without signal retires its position
    b = trainer(micro, tmp_path / "b", overrides)
    b.train(stop_after=2)
    c = trainer(micro, tmp_path / "b", overrides)
    assert c.maybe_resume()
    c.train()
    assert c.state.reward_history == a.state.reward_history
    assert c.source.stats() == counts


def test_ema_baseline_resumes(micro, tmp_path):
    overrides = ["reward=prefix_match+0.1*info_gain", "rl.steps=2", "rl.checkpoint_every=1"]
    a = trainer(micro, tmp_path / "a", overrides)
    a.train()
    b = trainer(micro, tmp_path / "b", overrides)
    b.train(stop_after=1)
    c = trainer(micro, tmp_path / "b", overrides)
    ema_a, ema_b, ema_c = (x.env.model_scored.ema for x in (a, b, c))
    assert c.maybe_resume() and ema_c.updates == ema_b.updates
    c.train()
    assert c.state.reward_history == a.state.reward_history
    for x, y in zip(ema_a.model.parameters(), ema_c.model.parameters(), strict=True):
        assert torch.equal(x, y)


def test_step_flops_are_the_cost_of_what_was_computed(micro, tmp_path, spy):
    """The loss FLOPs a step reports equal the cost of the sequences its loss really ran on (seen from outside,
    on the plain path: one row per sample, prompt + completion), and the backward costs twice the forward."""
    t = trainer(micro, tmp_path, ["rl.drop_uniform_groups=false", "sharing.enabled=false"])
    m = t.step()
    fm, gen = t.flop_model, t.engine.last_work
    assert gen["decode"].logits == gen["decode"].tokens > 0  # every decoded token is sampled from
    assert m["flops/prefill"] == pytest.approx(fm.forward_work(gen["prefill"]))
    assert m["flops/decode"] == pytest.approx(fm.forward_work(gen["decode"]))
    ran = TokenWork()
    for chunk, _ in spy:
        for r in chunk:
            ran.add_sequence(len(r.prompt_ids) + len(r.completion_ids), logits=len(r.completion_ids))
    trained = sum(len(g.rollouts) for g in t.last_groups)
    assert sum(len(c) for c, _ in spy) == trained  # every sample of every group, once
    assert m["flops/loss_forward"] == pytest.approx(fm.forward_work(ran))
    assert m["flops/loss_backward"] == pytest.approx(2 * m["flops/loss_forward"])
    assert m["flops/step"] == pytest.approx(sum(m[f"flops/{k}"] for k in FLOP_STAGES))


def test_grpo_update_does_not_depend_on_micro_batch_size(micro, tmp_path):
    """loss_norm=grpo averages over the sequences that have loss tokens; with the entropy mask some have none,
    and the micro-batch weights must leave them out too, or the update changes with micro_batch_size."""
    grads = []
    for size in (1, 3, 64):
        t = trainer(
            micro,
            tmp_path / str(size),
            [
                "rl.loss_norm=grpo",
                "rl.entropy_mask_rho=0.3",
                f"rl.micro_batch_size={size}",
                "rl.drop_uniform_groups=false",
                "sharing.enabled=false",
            ],
        )
        groups, _, _ = t.collect(t.learner.account)
        t.learner.optimizer.step = lambda: None  # keep the gradient, skip the step
        t.learner.learn(groups, t.learner.account)
        grads.append(torch.cat([p.grad.flatten() for p in t.policy.parameters() if p.grad is not None]))
        batch = t.learner.last_trained
        # the case in question: sequences with no loss token
        assert any(sum(r.action_mask) == 0 for r in batch)
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-4, atol=1e-7)


def test_no_gain_retirement_fires_from_the_trainer(micro, tmp_path):
    """A group whose rewards differ by no more than `curriculum.min_spread` gives its position no signal: the
    trainer reports it as such and the curriculum retires it as 'no_gain' (before, the trainer only ever
    reported equal rewards as no signal, so 'no_gain' could not fire)."""
    overrides = ["curriculum.retire_after=1", "curriculum.min_spread=2", "rl.steps=2"]
    overrides += ["sampling.temperature=1.5", "reward=prefix_match+0.1*info_gain"]
    t = trainer(micro, tmp_path, overrides)
    t.train()
    by_reason = t.source.stats()["retired_by_reason"]
    assert by_reason["no_gain"] > 0  # dense rewards differ, but by less than the threshold
    assert t.state.groups_with_signal > 0  # the run's signal count still means "rewards differ"


def test_a_token_bound_splits_prefix_groups_without_changing_the_update(micro, tmp_path, spy):
    """`rl.micro_batch_tokens`: a group of samples sharing a prompt prefix, one micro-batch whatever its size
    otherwise, is split into pieces of at most that many tokens (the prefix once per piece); the gradient,
    next-token term included, is the unsplit one's."""
    overrides = ["rl.drop_uniform_groups=false", "rl.lm_coef=0.5", "rl.empty_thought_samples=1"]
    overrides += ["sampling.group_size=4", "sampling.temperature=1.5"]
    grads, pieces = [], []
    for bound in (0, 60):
        t = trainer(micro, tmp_path / str(bound), [*overrides, f"rl.micro_batch_tokens={bound}"])
        torch.manual_seed(0)
        groups, _, _ = t.collect(t.learner.account)
        spy.clear()
        t.learner.optimizer.step = lambda: None  # keep the gradient, skip the step
        t.learner.learn(groups, t.learner.account)
        grads.append(torch.cat([p.grad.flatten() for p in t.policy.parameters() if p.grad is not None]))
        pieces.append([len(c) for c, _ in spy])
        if bound:
            for chunk, _ in spy:
                used = max(len(r.prompt_ids) for r in chunk) + sum(len(r.completion_ids) for r in chunk)
                assert len(chunk) == 1 or used <= bound
    assert len(pieces[1]) > len(pieces[0]) and sum(pieces[1]) == sum(pieces[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
