"""A new environment and task source plug in from a user's own module, without editing nextrl: found by name,
checked against its declared reward components, trained by the same RLTrainer, resumed exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from nextrl.config import load_config
from nextrl.engine import build_engine
from nextrl.env import build_environment, registered_environments
from nextrl.env.base import check_reward_spec
from nextrl.errors import ConfigError
from nextrl.model.pretrain import prepare_base
from nextrl.trainer.rl import RLTrainer

pytestmark = pytest.mark.slow
OVERRIDES = [
    "model.dtype=float32",
    "env.name=user_env_plugin:make",
    "reward=exact+0.5*digits",
    "rl.steps=3",
    "rl.checkpoint_every=1",
    "sampling.temperature=1.5",
    "positions.per_step=6",
]


@pytest.fixture(scope="module")
def base():
    return prepare_base(load_config("micro", ["model.dtype=float32"]))


def trainer(base, out, overrides=()):
    from user_env_plugin import AdditionTasks

    cfg = load_config("micro", OVERRIDES + list(overrides))
    env = build_environment(cfg, base.tokenizer)
    policy = copy.deepcopy(base.model)
    engine = build_engine(cfg.sampling, cfg.sharing, policy, base.tokenizer.pad_token_id, None, seed=0)
    source = AdditionTasks(base.tokenizer)
    return RLTrainer(cfg, policy, base.tokenizer, source, env, engine, out, torch.device("cpu"), None)


def test_user_environment_trains_and_resumes(base, tmp_path):
    t = trainer(base, tmp_path / "a")
    assert type(t.env).__name__ == "AdditionEnv" and "addition" in registered_environments()
    before = copy.deepcopy(t.policy.state_dict())
    t.train()
    rows = t.source.visits
    assert len(rows) == 3 * 6 and all(len(r) == 4 for _, r, _ in rows)  # every group fed back, G rewards
    assert t.state.samples == 3 * 6 * 4
    m = t.summary()
    assert m["reward"] == "exact+0.5*digits" and m["steps"] == 3
    assert any(not torch.equal(v, before[k]) for k, v in t.policy.state_dict().items())  # it trained
    # the user's source and the engine resume from the checkpoint like the built-in ones
    b = trainer(base, tmp_path / "b")
    b.train(stop_after=2)
    c = trainer(base, tmp_path / "b")
    assert c.maybe_resume() and c.source.cursor == b.source.cursor
    c.train()
    assert c.state.reward_history == t.state.reward_history
    for k, v in t.policy.state_dict().items():
        assert torch.equal(v, c.policy.state_dict()[k]), k


def test_reward_spec_is_checked_against_the_declared_components(base):
    cfg = load_config("micro", OVERRIDES)
    env = build_environment(cfg, base.tokenizer)
    assert check_reward_spec("exact-0.5*digits", env).names == ["exact", "digits"]
    with pytest.raises(ConfigError, match="unknown term 'prefix_match'.*addition"):
        check_reward_spec("prefix_match", env)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "unknown environment 'nope'; registered: .*next_token"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("user_env_plugin:missing", "has no 'missing'"),
        ("user_env_plugin:AdditionTasks", "not a nextrl.env.Environment"),
    ],
)
def test_unknown_or_wrong_environment_names_the_key(base, name, message):
    cfg = load_config("micro", [f"env.name={name}"])
    with pytest.raises(ConfigError, match=message) as err:
        build_environment(cfg, base.tokenizer)
    assert "env.name" in str(err.value)
