"""Task records from a file (JSONL, .jsonl.gz or Parquet) and the task source over them that the math, code and
judged-writing environments share: a seeded order per epoch and a cursor, so a resumed run draws exactly what
it would have."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nextrl.env.base import Task
from nextrl.errors import ConfigError, DataError


def read_records(path: str | Path, key: str = "env.options.path") -> list[dict[str, Any]]:
    """Every record of a JSONL (optionally gzipped) or Parquet file; a bad line is named by file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key '{key}': {path} is not a file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.name.endswith(".gz") else open
    records = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not a JSON record ({e})") from None
    return records


class RecordTasks:
    """A `TaskSource` over `records`: each epoch visits them in a fresh seeded order; `make_task(record, index)`
    makes the task. `counts` are reported by `stats()` beside the number of tasks given."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        make_task: Callable[[dict[str, Any], int], Task],
        seed: int,
        counts: dict[str, int] | None = None,
    ):
        if not records:
            raise ValueError("a record task source needs at least one record")
        self.records, self.make_task, self.seed, self.counts = records, make_task, seed, counts or {}
        self.cursor = 0
        self._epoch, self._order = -1, list(range(len(records)))

    def _index(self, k: int) -> int:
        epoch, i = divmod(k, len(self.records))
        if epoch != self._epoch:  # one permutation per epoch, not per task
            self._order = list(range(len(self.records)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order[i]

    def take(self, n: int, step: int) -> list[Task]:
        indices = [self._index(k) for k in range(self.cursor, self.cursor + n)]
        self.cursor += n
        return [self.make_task(self.records[j], j) for j in indices]

    def visit(self, task: Task, rewards: Sequence[float], signal: bool, uncertainty: float | None) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"given": self.cursor, **self.counts}

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])


def file_tasks(env, seed: int, noun: str) -> RecordTasks:
    """The records of `env.options["path"]`, each made a task by `env.make_task`; a file without records is
    named as having no `noun` (problems, prompts)."""
    path = env.options["path"]
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no {noun}")
    return RecordTasks(records, env.make_task, seed, {noun: len(records)})
