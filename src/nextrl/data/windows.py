"""Fixed-length training windows over tokenized documents, with random access by step (so resume is exact)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pack_windows(docs: Sequence[Sequence[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """Concatenate documents (each followed by EOS) and cut into non-overlapping windows of seq_len + 1 tokens
    (inputs and the shifted labels). The ragged tail is dropped."""
    stream: list[int] = []
    for d in docs:
        stream.extend(d)
        stream.append(eos_id)
    n = len(stream) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"not enough tokens ({len(stream)}) for one window of {seq_len + 1}")
    return np.asarray(stream[: n * (seq_len + 1)], dtype=np.int64).reshape(n, seq_len + 1)


class WindowBatches:
    """Batch `step` is a pure function of (seed, step): epochs are seeded permutations of the windows."""

    def __init__(self, windows: np.ndarray, batch_size: int, seed: int):
        self.windows = windows
        self.batch_size = batch_size
        self.seed = seed
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> list[tuple[int, int]]:
        """(epoch, window) pairs of a batch."""
        n = len(self.windows)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, i = divmod(k, n)
            out.append((epoch, int(self._perm_for(epoch)[i])))
        return out

    def batch(self, step: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.windows[i] for _, i in self.indices(step)]))


def insert_thought(
    window: np.ndarray,
    rng: np.random.Generator,
    open_id: int,
    close_id: int,
    max_thought: int,
    min_pos: int = 8,
    empty_prob: float = 0.0,
    n: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Format warm-up for the structured format: put `<think> draft </think>` at `n` random points of a window,
    where each draft is the next 0..max_thought true tokens, then the text continues. The base model learns the
    format (after `</think>` the text goes on; a thought is a draft of what follows) without being taught to
    open thoughts by itself: `<think>` targets are masked out. With probability `empty_prob` a thought is empty
    (`<think></think>`): the model learns that an empty thought changes nothing, so closing the thought at once
    is always an option that costs it no accuracy. The result is cut to the window's length. Returns (tokens,
    loss mask over targets)."""
    L = len(window)
    if min_pos + max_thought + 4 > L:
        return window, np.ones(L - 1, dtype=bool)
    points = sorted(set(int(p) for p in rng.integers(min_pos, L - max_thought - 3, size=n)))
    out: list[int] = []
    prev = 0
    for p in points:
        j = 0 if rng.random() < empty_prob else int(rng.integers(0, max_thought + 1))
        if len(out) + (p - prev) + j + 3 > L:  # no room to close it and go on: no thought here or later
            break
        out += [*window[prev:p], open_id, *window[p : p + j], close_id]
        prev = p
    out += list(window[prev:])
    tokens = np.asarray(out[:L], dtype=window.dtype)
    mask = tokens[1:] != open_id  # `<think>` itself is never a target
    return tokens, mask
