import pytest

from nextrl.config import ConfigError, available_presets, dump_config, load_config
from nextrl.config.load import parse_override


def test_shipped_presets_load():
    names = available_presets()
    assert {"micro", "tiny", "control", "qwen-gpu"} <= set(names)
    for name in names:
        assert load_config(name).preset == name


def test_override_types():
    cfg = load_config(
        "micro", ["rl.lr=1e-5", "rl.loss_norm=grpo", "sampling.group_size=3", "rl.scale_rewards=true"]
    )
    assert cfg.rl.lr == 1e-5 and cfg.rl.loss_norm == "grpo"
    assert cfg.sampling.group_size == 3 and cfg.rl.scale_rewards is True


def test_override_list_of_sources():
    cfg = load_config("micro", ["data.sources=[{kind: jsonl, path: x.jsonl, text_field: body}]"])
    assert cfg.data.sources[0].kind == "jsonl" and cfg.data.sources[0].text_field == "body"


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("rl.lr")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rl.lrr=1", "rl.lrr"),
        ("nosuch.key=1", "nosuch"),
        ("rl.lr=-1", "rl.lr"),
        ("sampling.top_p=1.5", "sampling.top_p"),
        ("rl.loss_norm=ppo", "rl.loss_norm"),
        ("data.heldout_fraction=1.0", "data.heldout_fraction"),
        ("model.num_heads=3", "model"),
        ("rl.empty_thought_samples=8", "rl.empty_thought_samples"),
        ("curriculum.bucket_weights={hard: -1}", "curriculum.bucket_weights"),
        (
            "data.sources=[{kind: synthetic, synthetic: {tasks: {divide: 1}}}]",
            "data.sources.0.synthetic.tasks",
        ),
        ("data.sources=[{kind: stdlib, synthetic: {documents: 3}}]", "data.sources.0"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("micro", [override])
    assert f"'{key}" in str(e.value)
    assert override in str(e.value)  # says where the bad value came from


def test_source_kind_needs_path():
    with pytest.raises(ConfigError, match="data.sources.0"):
        load_config("micro", ["data.sources=[{kind: text}]"])


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: [unclosed")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("rl:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"rl\.stepz.*unknown config key"):
        load_config(str(typo))


def test_dump_roundtrip(tmp_path):
    cfg = load_config("micro", ["rl.steps=7"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_empty_thoughts_need_the_structured_format():
    with pytest.raises(ConfigError, match="rl.empty_thought_samples"):
        load_config("micro", ["rl.empty_thought_samples=1", "env.thought_tokens=0"])
    assert load_config("micro", ["rl.empty_thought_samples=1"]).rl.empty_thought_samples == 1


def test_a_key_under_a_shorthand_section_overrides_a_preset_that_used_the_shorthand():
    """tiny.yaml says `reward: prefix_match+0.1*info_gain`; `--set reward.spec=…` (or another reward key)
    must still work."""
    cfg = load_config("tiny", ["reward.spec=prefix_match", "reward.ema_tau=0.5"])
    assert str(cfg.reward.spec) == "prefix_match" and cfg.reward.ema_tau == 0.5
    keep = load_config("tiny", ["reward.ema_tau=0.5"])
    assert str(keep.reward.spec) == str(load_config("tiny").reward.spec)


def test_the_step_sizes_moved_from_rl_to_positions_and_the_old_keys_still_work_for_one_release(tmp_path):
    with pytest.warns(FutureWarning, match=r"'rl\.positions_per_step'.*use 'positions\.per_step'"):
        cfg = load_config("micro", ["rl.positions_per_step=8", "rl.positions_per_prefix=2"])
    assert (cfg.positions.per_step, cfg.positions.per_prefix) == (8, 2)  # the override beats micro's per_step
    old = tmp_path / "old.yaml"
    old.write_text("rl:\n  steps: 2\n  positions_per_step: 6\n")
    with pytest.warns(FutureWarning, match=r"use 'positions\.per_step'"):
        assert load_config(str(old)).positions.per_step == 6
    both = tmp_path / "both.yaml"
    both.write_text("positions:\n  per_step: 4\nrl:\n  positions_per_step: 6\n")
    with pytest.raises(ConfigError, match=r"'rl\.positions_per_step' moved to 'positions\.per_step'.*both"):
        load_config(str(both))
