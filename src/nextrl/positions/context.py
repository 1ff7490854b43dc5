"""Context windows: where the prompt of a position starts, so that the positions of one document stripe share
their prompt prefix."""

from __future__ import annotations


def context_start(position: int, context: int) -> int:
    """Where the prompt of `position` starts: the whole prefix when it fits in `context` tokens, else the
    latest multiple of `context // 2` leaving at most `context` tokens (so between context/2 and context).

    Aligning starts to a stride makes the positions of one stripe share their prompt prefix exactly, which the
    prefix-sharing engine and loss encode once for all of them (a sliding window would give every position a
    different first token and nothing to share but the G samples of one position)."""
    if position <= context:
        return 0
    stride = max(1, context // 2)
    return -(-(position - context) // stride) * stride
