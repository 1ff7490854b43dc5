"""Positions: which positions of which documents become next-token tasks, and in what order RL draws them.

- `context.py`: where a position's prompt starts (`context_start`), so that one stripe shares its prefix;
- `entropy.py`, `index.py`: RPT's hard-token selection, scored by a proxy model into a `PositionIndex`;
- `cursor.py`, `curriculum.py`, `draw.py`: the seeded draw over prefix units, plain or with a curriculum;
- `source.py`: the `TaskSource` that turns drawn positions into an environment's tasks.

The step sizes (positions per step, per shared prefix) are the config's `positions` section.
"""

from nextrl.positions.context import context_start
from nextrl.positions.entropy import bucket_of, topk_entropy
from nextrl.positions.index import PositionIndex, score_document, select_positions
from nextrl.positions.source import PositionTaskSource, position_tasks

__all__ = [
    "PositionIndex",
    "PositionTaskSource",
    "bucket_of",
    "context_start",
    "position_tasks",
    "score_document",
    "select_positions",
    "topk_entropy",
]
