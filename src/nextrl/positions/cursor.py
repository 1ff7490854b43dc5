"""An endless, seeded, resumable order over the rows of a position index (the RL data cursor).

Rows come in *units*: rows that should be trained in the same step, because their prompts share a prefix (the
positions of one document stripe; see `PositionIndex.units`). Each epoch visits the units in a fresh seeded
order and yields their rows one after another; `take(n)` may cut a unit at a step boundary, and its remaining
rows open the next step, so every row is still visited once per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nextrl.errors import DataError


class PositionSampler:
    def __init__(self, units: Sequence[int | Sequence[int]], seed: int):
        self.units = [[int(u)] if isinstance(u, int | np.integer) else [int(r) for r in u] for u in units]
        self.units = [u for u in self.units if u]
        if not self.units:
            raise DataError(
                "no positions to train on: the selection kept none in the train split "
                "(lower selection.min_entropy or add documents)"
            )
        self.n_rows = sum(len(u) for u in self.units)
        self.seed = seed
        self.cursor = 0
        self._epoch, self._order = -1, np.arange(0)

    def _row(self, k: int) -> int:
        epoch, i = divmod(k, self.n_rows)
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
            self._epoch = epoch
            self._order = np.array([r for u in perm for r in self.units[int(u)]])
        return int(self._order[i])

    def take(self, n: int) -> list[int]:
        out = [self._row(k) for k in range(self.cursor, self.cursor + n)]
        self.cursor += n
        return out

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.cursor = int(state["cursor"])
