"""The RL loop with verifier-free rewards and self-selection: tiny real steps on the micro preset, checked
against slow references (plain forwards, hand formulas)."""

from __future__ import annotations

import copy

import pytest
import torch

from nextrl.config import load_config
from nextrl.engine import build_engine
from nextrl.engine.base import Rollout
from nextrl.env import NextTokenEnv
from nextrl.env.formats import closed_thought
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import select_stage
from nextrl.trainer.rl import FLOP_STAGES, RLTrainer
from nextrl.trainer.self_selection import answer_entropy, loss_token_masks

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
    env = NextTokenEnv(cfg.env, base.tokenizer)
    engine = build_engine(cfg.sampling, policy, base.tokenizer.pad_token_id, None, seed=cfg.rl.seed)
    return RLTrainer(cfg, policy, base.tokenizer, index, env, engine, tmp_path, torch.device("cpu"), None)


def plain_logp(model, prompt, target):
    """Reference: one unpadded forward, log p(target[0] | prompt)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + target[:1]])).logits[0, len(prompt) - 1].float()
    return float(torch.log_softmax(logits, -1)[target[0]])


def test_info_gain_reward_matches_plain_forwards(micro, tmp_path):
    t = trainer(micro, tmp_path, ["reward=info_gain+prefix_match-format", "reward.copy_guard=false"])
    t.rewards.ema.model.load_state_dict(t.policy.state_dict())
    with torch.no_grad():  # make the EMA differ from the policy, so the two models are really told apart
        for p in t.rewards.ema.model.parameters():
            p.mul_(0.9)
    tasks = t.index.tasks(t.env, t.sampler.take(3), t.cfg.selection.context)
    rollouts = t.engine.generate([x.prompt_ids for x in tasks], t.params)
    rewards = t.rewards.score(tasks, rollouts)
    env = t.env
    for task, group, rw in zip(tasks, rollouts, rewards, strict=True):
        base = plain_logp(t.rewards.ema.model, task.meta["context_ids"], task.meta["target_ids"])
        for ro, r in zip(group, rw, strict=True):
            th, _ = closed_thought(ro, env.think_close, env.eos_ids)
            want = plain_logp(t.policy, task.prompt_ids + th, task.meta["target_ids"]) - base
            assert r.components["info_gain"] == pytest.approx(want, abs=1e-4)
            assert r.components["format"] == (0.0 if r.parsed else -1.0)
            total = r.components["info_gain"] + r.components["prefix_match"] - r.components["format"]
            assert r.total == pytest.approx(total, abs=1e-6)


def test_copy_guard_takes_the_gain_away(micro, tmp_path):
    t = trainer(micro, tmp_path, ["reward=likelihood"])
    task = t.index.tasks(t.env, t.sampler.take(1), t.cfg.selection.context)[0]
    target = task.meta["target_ids"]
    close = t.env.think_close
    # the thought writes out the target (the known hack); the other thinks of something else
    copy_ro = Rollout(
        task.prompt_ids, target[:2] + [close] + target[:1], [0.0] * 4, [1] * 4, "length", 0, [0, 3]
    )
    other = Rollout(task.prompt_ids, [close, target[0]], [0.0] * 2, [1] * 2, "length", 0, [0, 1])
    t.rewards.rc = t.rewards.rc.model_copy(update={"copy_guard": False})
    unguarded = t.rewards.score([task], [[copy_ro, other]])[0]
    t.rewards.rc = t.rewards.rc.model_copy(update={"copy_guard": True})
    guarded = t.rewards.score([task], [[copy_ro, other]])[0]
    assert guarded[0].components["likelihood"] == pytest.approx(
        min(unguarded[0].components["likelihood"], 0.0)
    )
    assert guarded[1].components["likelihood"] == pytest.approx(unguarded[1].components["likelihood"])


def test_rlp_step_trains_thought_only_and_moves_the_ema(micro, tmp_path):
    t = trainer(micro, tmp_path, ["reward=info_gain", "reward.ema_tau=0.9", "sampling.temperature=1.2"])
    assert (t.advantage_kind, t.thought_only) == ("rlp", True)
    ema_before = {k: v.clone() for k, v in t.rewards.ema.model.state_dict().items()}
    m = t.step()
    assert "reward/info_gain" in m and m["groups/kept"] > 0
    # EMA after one optimizer step: φ = τ·φ0 + (1−τ)·θ1
    for k, v in t.rewards.ema.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(
                v, 0.9 * ema_before[k] + 0.1 * t.policy.state_dict()[k], rtol=0, atol=1e-6
            )
    assert m["flops/scoring"] > 0
    # the loss only saw thought tokens
    groups = t.last_batch[1]
    original = [r for g in groups for r in g]
    masked = loss_token_masks(original, True, 1.0)
    for r, o in zip(masked, original, strict=True):
        cut = r.phase_starts[1]
        assert sum(r.action_mask[cut:]) == 0  # answer tokens are not trained
        assert r.action_mask[:cut] == o.action_mask[:cut]  # thought tokens keep their sampled/forced mask
    assert any(sum(o.action_mask[o.phase_starts[1] :]) for o in original)  # there was an answer to mask


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
        assert m["groups/kept"] + m.get("dynamic/short_by", 0) == t.rl.positions_per_step
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
    counts = a.sampler.counts()
    assert counts["retired"] > 0  # with retire_after=1 every visit without signal retires its position
    b = trainer(micro, tmp_path / "b", overrides)
    b.train(stop_after=2)
    c = trainer(micro, tmp_path / "b", overrides)
    assert c.maybe_resume()
    c.train()
    assert c.state.reward_history == a.state.reward_history
    assert c.sampler.counts() == counts


def test_ema_baseline_resumes(micro, tmp_path):
    overrides = ["reward=prefix_match+0.1*info_gain", "rl.steps=2", "rl.checkpoint_every=1"]
    a = trainer(micro, tmp_path / "a", overrides)
    a.train()
    b = trainer(micro, tmp_path / "b", overrides)
    b.train(stop_after=1)
    c = trainer(micro, tmp_path / "b", overrides)
    assert c.maybe_resume() and c.rewards.ema.updates == b.rewards.ema.updates
    c.train()
    assert c.state.reward_history == a.state.reward_history
    for x, y in zip(a.rewards.ema.model.parameters(), c.rewards.ema.model.parameters(), strict=True):
        assert torch.equal(x, y)


def test_step_flops_follow_the_recorded_work(micro, tmp_path):
    t = trainer(micro, tmp_path, ["rl.drop_uniform_groups=false"])
    m = t.step()
    fm, gen = t.flop_model, t.engine.last_work
    assert gen["decode"].logits == gen["decode"].tokens > 0  # every decoded token is sampled from
    assert m["flops/prefill"] == pytest.approx(fm.forward_work(gen["prefill"]))
    assert m["flops/decode"] == pytest.approx(fm.forward_work(gen["decode"]))
    assert m["flops/loss_forward"] == pytest.approx(fm.forward_work(t.work["loss"]))
    assert m["flops/loss_backward"] == pytest.approx(2 * m["flops/loss_forward"])
    assert m["flops/step"] == pytest.approx(sum(m[f"flops/{k}"] for k in FLOP_STAGES))
