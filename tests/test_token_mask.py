"""The top-ρ high-entropy loss mask: exact counts, subsets, the chosen tokens, ties."""

from __future__ import annotations

import math

import pytest
import torch

from nextrl.algo.token_mask import high_entropy_mask

ENT = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.8, 0.2, 0.3, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # 7 valid; the 0.7 is padding


@pytest.mark.parametrize(
    ("rho", "kept"),
    [
        (0.2, [(0, 1), (1, 0)]),  # ceil(1.4) = 2: 0.9 and 0.8
        (0.5, [(0, 1), (1, 0), (0, 2), (1, 2)]),  # ceil(3.5) = 4: 0.9, 0.8, 0.5, 0.3 (not the padded 0.7)
        (0.01, [(0, 1)]),  # at least one token
    ],
)
def test_high_entropy_mask_keeps_the_top_tokens(rho, kept):
    got = high_entropy_mask(ENT, MASK, rho)
    want = torch.zeros_like(MASK)
    for i, j in kept:
        want[i, j] = 1.0
    assert torch.equal(got, want)
    assert got.dtype == MASK.dtype
    assert int(got.sum()) == max(1, math.ceil(rho * 7))
    assert bool((got <= MASK).all())


def test_bool_mask_and_weights_kept():
    got = high_entropy_mask(ENT, MASK.bool(), 0.2)
    assert got.dtype == torch.bool and int(got.sum()) == 2
    weighted = MASK * 0.5
    assert torch.equal(high_entropy_mask(ENT, weighted, 0.2).sum(), torch.tensor(1.0))  # two tokens of 0.5


def test_ties_are_broken_by_position():
    ent = torch.ones(2, 3)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    got = high_entropy_mask(ent, mask, 0.5)  # ceil(2.5) = 3: the first three valid in flattened order
    assert torch.equal(got, torch.tensor([[0, 1, 1], [1, 0, 0]]))


def test_float_rounding_does_not_add_a_token():
    ent = torch.arange(10.0)[None]
    got = high_entropy_mask(ent, torch.ones(1, 10), 0.7)  # 0.7 * 10 = 7.000000000000001 in floats
    assert int(got.sum()) == 7
    assert torch.equal(got[0, 3:], torch.ones(7))


def test_random_batches_keep_a_threshold_set():
    g = torch.Generator().manual_seed(0)
    ent = torch.rand(8, 50, generator=g)
    mask = (torch.rand(8, 50, generator=g) > 0.3).float()
    got = high_entropy_mask(ent, mask, 0.2)
    n_valid = int(mask.sum())
    assert int(got.sum()) == math.ceil(0.2 * n_valid)
    dropped = (mask > 0) & (got == 0)
    assert ent[got > 0].min() > ent[dropped].max()


def test_edges():
    assert high_entropy_mask(ENT, MASK, 1.0) is MASK
    assert torch.equal(high_entropy_mask(ENT, torch.zeros(2, 4), 0.2), torch.zeros(2, 4))
    for rho in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rho"):
            high_entropy_mask(ENT, MASK, rho)
    with pytest.raises(ValueError, match="shape"):
        high_entropy_mask(ENT[:, :3], MASK, 0.2)
    with pytest.raises(ValueError, match="NaN"):
        high_entropy_mask(torch.full((2, 4), float("nan")), MASK, 0.2)
