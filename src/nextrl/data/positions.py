"""An endless, seeded, resumable order over the rows of a position index (the RL data cursor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PositionSampler:
    def __init__(self, rows: Sequence[int], seed: int):
        if not rows:
            raise ValueError(
                "no positions to train on: the selection kept none in the train split "
                "(lower selection.min_entropy or add documents)"
            )
        self.rows = list(rows)
        self.seed = seed
        self.cursor = 0
        self._epoch, self._perm = -1, np.arange(0)

    def _row(self, k: int) -> int:
        epoch, i = divmod(k, len(self.rows))
        if epoch != self._epoch:
            self._epoch, self._perm = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(len(self.rows)),
            )
        return self.rows[int(self._perm[i])]

    def take(self, n: int) -> list[int]:
        out = [self._row(k) for k in range(self.cursor, self.cursor + n)]
        self.cursor += n
        return out

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.cursor = int(state["cursor"])
