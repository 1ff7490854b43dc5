"""RPT's byte-level prefix-match reward (arXiv 2506.08007).

Bytes, not strings or token ids: a prediction may be a string the vocabulary lacks or span several true tokens,
and it is correct iff it is a prefix of the true continuation that ends exactly on a true token boundary.
"""

from __future__ import annotations

from collections.abc import Sequence


def boundaries(token_bytes: Sequence[bytes]) -> list[int]:
    """Cumulative byte lengths of the true continuation tokens (the set B). Zero-length tokens (special tokens)
    are skipped so that B holds no repeated or zero boundary."""
    out: list[int] = []
    total = 0
    for b in token_bytes:
        if b:
            total += len(b)
            out.append(total)
    return out


def prefix_match_reward(pred: bytes, gt: bytes, B: Sequence[int]) -> float:
    """1.0 iff `pred` is non-empty, a prefix of `gt` and ends on a boundary in `B`; else 0.0.

    `gt` and `B` cover only the kept continuation tokens, so a prediction longer than `gt` scores 0 (it cannot
    be verified, and `len(pred) in B` fails for it anyway)."""
    n = len(pred)
    return 1.0 if n > 0 and n <= len(gt) and gt[:n] == pred and n in B else 0.0
