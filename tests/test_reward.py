"""RPT's byte-level prefix-match reward on hand-worked byte cases, plus a slow reference on random bytes."""

from __future__ import annotations

import random

import pytest

from nextrl.env.reward import boundaries, prefix_match_reward

# True continuation " the cat": tokens b" the" (4 bytes) and b" cat" (4 bytes), so B = {4, 8}.
GT = b" the cat"
B = [4, 8]


def test_boundaries_hand_worked():
    assert boundaries([b" the", b" cat"]) == [4, 8]
    assert boundaries([b" the", b"", b" cat"]) == [4, 8]  # a special token (0 bytes) adds no boundary
    assert boundaries([b"\xe6\x97\xa5", b"\xe6\x9c\xac"]) == [3, 6]  # "日", "本": 3 bytes each
    assert boundaries([b"caf", b"\xc3\xa9"]) == [3, 5]  # "é" is 2 bytes
    assert boundaries([]) == []
    assert boundaries([b""]) == []


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        (b" the", 1.0),  # first token, with its leading space
        (b"the", 0.0),  # missing the leading space: not a prefix of gt
        (b" The", 0.0),  # same length, different byte
        (b" the cat", 1.0),  # spans both true tokens, ends on boundary 8
        (b" th", 0.0),  # a prefix of gt, but ends inside " the"
        (b" the c", 0.0),  # crosses a boundary, ends inside " cat"
        (b" ", 0.0),
        (b"", 0.0),  # empty prediction
        (b" the cat sat", 0.0),  # longer than the kept continuation
        (b" the dog", 0.0),  # ends on boundary 8 but bytes differ
    ],
)
def test_leading_space_and_multi_token(pred: bytes, expected: float):
    assert prefix_match_reward(pred, GT, B) == expected


def test_multibyte_utf8():
    # " café" then " au": tokens b" caf\xc3\xa9" (6 bytes: space, c, a, f, 0xC3, 0xA9) and b" au" -> B = {6, 9}.
    gt, b = b" caf\xc3\xa9 au", [6, 9]
    assert prefix_match_reward(b" caf\xc3\xa9", gt, b) == 1.0
    assert prefix_match_reward(b" caf\xc3", gt, b) == 0.0  # only the first byte of "é"
    assert prefix_match_reward(b" cafe", gt, b) == 0.0  # ASCII "e" is not "é"
    assert prefix_match_reward(b" caf\xc3\xa9 au", gt, b) == 1.0
    # "日本": two 3-byte tokens -> B = {3, 6}.
    gt, b = b"\xe6\x97\xa5\xe6\x9c\xac", [3, 6]
    assert prefix_match_reward(b"\xe6\x97\xa5", gt, b) == 1.0
    assert prefix_match_reward(b"\xe6\x97", gt, b) == 0.0  # first 2 of 3 bytes of "日"
    assert prefix_match_reward(b"\xe6\x97\xa5\xe6\x9c\xac", gt, b) == 1.0
    # A byte-level BPE may split a character across tokens: then a mid-character boundary is a true boundary.
    gt, b = b"\xc3\xa9t", [1, 3]
    assert prefix_match_reward(b"\xc3", gt, b) == 1.0
    assert prefix_match_reward(b"\xc3\xa9", gt, b) == 0.0


def test_truncated_continuation():
    # Only one true token kept: a correct two-token answer cannot be verified and scores 0.
    assert prefix_match_reward(b" the cat", b" the", [4]) == 0.0
    assert prefix_match_reward(b" the", b" the", [4]) == 1.0


def _reference(pred: bytes, gt: bytes, b: list[int]) -> float:
    """Slow and obvious: find a boundary equal to len(pred), then compare byte by byte."""
    if len(pred) == 0:
        return 0.0
    for end in b:
        if end != len(pred):
            continue
        if end > len(gt):
            return 0.0
        for k in range(end):
            if pred[k] != gt[k]:
                return 0.0
        return 1.0
    return 0.0


def test_matches_reference_on_random_bytes():
    rng = random.Random(0)
    alphabet = b" ab\xc3\xa9"  # few symbols so that matches and near-misses are common
    hits = 0
    for _ in range(3000):
        toks = [
            bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(0, 5))
        ]
        gt = b"".join(toks)
        b, total = [], 0
        for t in toks:  # cumulative lengths, written out independently of `boundaries`
            if len(t) > 0:
                total += len(t)
                b.append(total)
        assert boundaries(toks) == b
        kind = rng.random()
        if kind < 0.5:
            pred = gt[: rng.randint(0, len(gt) + 1)]
        elif kind < 0.8:
            pred = gt[: rng.randint(0, len(gt))] + bytes(
                rng.choice(alphabet) for _ in range(rng.randint(1, 2))
            )
        else:
            pred = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        got = prefix_match_reward(pred, gt, b)
        assert got == _reference(pred, gt, b), (pred, gt, b)
        hits += got == 1.0
    assert hits > 300  # the generator exercises the positive case, not only zeros
