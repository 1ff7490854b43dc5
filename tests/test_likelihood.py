"""Verifier-free rewards on hand-made log-probs, the copy guard's byte rule, and reward specs."""

from __future__ import annotations

import math

import pytest
import torch

from nextrl.config.reward_spec import RewardSpec
from nextrl.env.likelihood import (
    copies_target,
    copy_key,
    information_gain,
    likelihood_gain,
)

WITH = torch.tensor([[-1.0, -2.0, -0.5], [-0.5, -3.0, -1.0]])
WITHOUT = torch.tensor([[-2.0, -1.0, -1.5], [-0.25, -5.0, -4.0]])


# ---------------------------------------------------------------- information gain


def test_information_gain_one_token_is_rlp():
    # row 0: -1 - (-2) = 1; row 1: -0.5 - (-0.25) = -0.25 (later columns ignored)
    assert torch.allclose(information_gain(WITH, WITHOUT), torch.tensor([1.0, -0.25]))


def test_information_gain_several_tokens_with_mask():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # row 0, first 2: (1 + (-1)) / 2 = 0; row 1: only the first token is valid: -0.25
    got = information_gain(WITH, WITHOUT, mask, tokens=2)
    assert torch.allclose(got, torch.tensor([0.0, -0.25]))


def test_padding_values_do_not_leak():
    with_t, without = WITH.clone(), WITHOUT.clone()
    with_t[1, 1:] = float("-inf")  # what a padded log-prob tensor may hold
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    got = likelihood_gain(with_t, without, mask)
    # row 0: (1 - 1 + 1) / 3; row 1: -0.25
    assert torch.allclose(got, torch.tensor([1.0 / 3.0, -0.25]))


def test_likelihood_gain_is_the_mean_over_valid_tokens():
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]])
    # row 0: (1 + 1) / 2 = 1; row 1: (-0.25 + 2 + 3) / 3 = 1.5833...
    got = likelihood_gain(WITH, WITHOUT, mask)
    assert torch.allclose(got, torch.tensor([1.0, 4.75 / 3.0]))
    assert torch.allclose(likelihood_gain(WITH, WITHOUT), information_gain(WITH, WITHOUT, tokens=3))


def test_likelihood_errors():
    with pytest.raises(ValueError, match="tokens=4"):
        information_gain(WITH, WITHOUT, tokens=4)
    with pytest.raises(ValueError, match="row 1"):
        likelihood_gain(WITH, WITHOUT, torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="shapes"):
        likelihood_gain(WITH, WITHOUT[:, :2])


# ---------------------------------------------------------------- copy guard


@pytest.mark.parametrize(
    ("thought", "target", "copied"),
    [
        (b"the answer is cat", b" cat sat", True),
        (b"next: ' cat'", b" cat sat", True),
        (b"a category of words", b" cat sat", False),  # inside a longer word
        (b"concat", b" cat sat", False),
        (b"", b" cat sat", False),
        (b"it is a tree", b" a tree.", True),  # "a" is short: the key grows to "a tree"
        (b"a big tree", b" a tree.", False),
        (b"a, b, c", b",", False),  # a lone comma is too common to judge
        (b"x, and y", b", and", True),
        (b"x, y", b", and", False),
        (b"'ing'", b"ing on", True),  # a subword target, written alone
        (b"thinking", b"ing on", False),
        (b"The", b"\n\nThe end", True),  # leading newlines stripped
        (b"Then", b"\n\nThe end", False),
        (b"anything", b"   ", False),
        ("答えは日".encode(), "日本の".encode(), True),  # every non-ASCII character is a word
        ("本".encode(), "日本の".encode(), False),
        ("a café".encode(), " café au lait".encode(), True),
        (b"cafeteria", " café au lait".encode(), False),
    ],
)
def test_copies_target(thought, target, copied):
    assert copies_target(thought, target) is copied


def test_copy_key_rule():
    assert copy_key(b" cat sat") == b"cat"
    assert copy_key(b" a tree.") == b"a tree"
    assert copy_key(b".\nThe") == b".\nThe"
    assert copy_key(b",") is None
    assert copy_key(b" to the", min_bytes=4) == b"to the"
    assert copy_key(b" to the") == b"to"
    # a target starting inside a character: its stray tail bytes join the next character up to min_bytes
    tail = "日".encode()[2:] + "本の".encode()
    assert copy_key(tail) == tail[:4]
    assert copies_target("日本".encode(), tail)
    assert not copies_target("本".encode(), tail)
    with pytest.raises(ValueError, match="min_bytes"):
        copy_key(b"x", min_bytes=0)


def test_min_bytes_makes_the_guard_stricter():
    assert copies_target(b"go to school", b" to the")
    assert not copies_target(b"go to school", b" to the", min_bytes=4)
    assert copies_target(b"go to the school", b" to the", min_bytes=4)


# ---------------------------------------------------------------- reward specs

KNOWN = {"prefix_match", "info_gain", "format"}


@pytest.mark.parametrize(
    ("text", "terms", "canonical"),
    [
        ("prefix_match+0.1*info_gain+format", [("prefix_match", 1), ("info_gain", 0.1), ("format", 1)], None),
        (" prefix_match - 0.5 * format ", [("prefix_match", 1), ("format", -0.5)], "prefix_match-0.5*format"),
        ("1e-3*info_gain", [("info_gain", 0.001)], "0.001*info_gain"),
        ("-format+2.5E2*prefix_match", [("format", -1), ("prefix_match", 250)], "-format+250*prefix_match"),
        ("+.5*format", [("format", 0.5)], "0.5*format"),
        ("2*format-1*info_gain", [("format", 2), ("info_gain", -1)], "2*format-info_gain"),
    ],
)
def test_reward_spec_parse_and_str(text, terms, canonical):
    spec = RewardSpec.parse(text, KNOWN)
    assert spec.terms == [(n, float(w)) for n, w in terms]
    assert str(spec) == (canonical or text)
    assert RewardSpec.parse(str(spec)) == spec
    assert spec.names == [n for n, _ in terms]


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("prefix_match+0.1*info_gian", "info_gian"),
        ("", "empty"),
        ("prefix_match++format", "+format"),
        ("prefix_match format", "format"),
        ("prefix_match+", "+"),
        ("2format", "2format"),
        ("format*2", "*2"),
        ("format+format", "twice"),
    ],
)
def test_reward_spec_errors(text, bad):
    with pytest.raises(ValueError) as err:
        RewardSpec.parse(text, KNOWN)
    msg = str(err.value)
    assert msg.startswith("reward") and bad in msg
    if bad == "info_gian":
        assert "format, info_gain, prefix_match" in msg  # the known names, for the user to pick from


def test_reward_spec_total():
    spec = RewardSpec.parse("prefix_match+0.1*info_gain-0.5*format")
    assert spec.total({"prefix_match": 1.0, "info_gain": 2.0, "format": 1.0, "extra": 9.0}) == pytest.approx(
        0.7
    )
    with pytest.raises(ValueError, match="info_gain"):
        spec.total({"prefix_match": 1.0, "format": 0.0})
    got = spec.total(
        {"prefix_match": torch.tensor([1.0, 0.0]), "info_gain": torch.tensor([0.0, 10.0]), "format": 0}
    )
    assert torch.allclose(got, torch.tensor([1.0, 1.0]))


def test_reward_spec_without_known_names_accepts_any_name():
    assert RewardSpec.parse("anything_else").terms == [("anything_else", 1.0)]
    assert math.isclose(RewardSpec.parse("0.25*x").total({"x": 4.0}), 1.0)
