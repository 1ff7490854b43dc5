"""Run logging: `metrics.jsonl` (one JSON object per line, flushed each write) and TensorBoard events (one
run per stage under `tensorboard/<stage>`).

Every step is logged once, also across resumes: a stage that continues after step k (from a checkpoint, or
from 0 after a kill before its first one) calls `restart(stage, k)`, which drops what an earlier attempt
logged beyond k from metrics.jsonl and purges those TensorBoard events."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nextrl.utils.io import atomic_write_text


class MetricsLogger:
    def __init__(self, run_dir: str | Path | None, t0: float | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.t0 = t0 if t0 is not None else time.time()
        self._file = None
        self._tensorboard = tensorboard
        self._tb: dict[str, Any] = {}  # stage -> SummaryWriter
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = self.run_dir / "metrics.jsonl"
            # A crash can leave a cut last line; start on a fresh line so the next record stays parseable.
            cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
            if cut:
                self._file.write("\n")

    def _writer(self, stage: str, purge_step: int | None = None):
        if not self._tensorboard or self.run_dir is None:
            return None
        if stage not in self._tb or purge_step is not None:
            from torch.utils.tensorboard import SummaryWriter

            if stage in self._tb:
                self._tb[stage].close()
            self._tb[stage] = SummaryWriter(str(self.run_dir / "tensorboard" / stage), purge_step=purge_step)
        return self._tb[stage]

    def restart(self, stage: str, after_step: int) -> None:
        """`stage` continues after `after_step`: rows an earlier attempt logged for later steps are dropped."""
        if self._file is None or self.run_dir is None:
            return
        path = self.run_dir / "metrics.jsonl"
        self._file.close()
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if not (row.get("stage") == stage and row.get("step", 0) > after_step):
                keep.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in keep))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._writer(stage, purge_step=after_step + 1)

    def log(self, stage: str, step: int, metrics: dict[str, Any]) -> None:
        row = {"stage": stage, "step": int(step), "time": round(time.time() - self.t0, 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        tb = self._writer(stage)
        if tb is not None:
            for k, v in row.items():
                if k not in ("stage", "step") and isinstance(v, int | float):
                    tb.add_scalar(f"{stage}/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for tb in self._tb.values():
            tb.close()
        self._tb = {}


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if abs(v) < 1e6 else v
    return v
