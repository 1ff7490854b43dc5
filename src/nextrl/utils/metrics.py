"""Run logging: `metrics.jsonl` (one JSON object per line, flushed each write) and TensorBoard events."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: str | Path | None, t0: float | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.t0 = t0 if t0 is not None else time.time()
        self._file = None
        self._tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = self.run_dir / "metrics.jsonl"
            # A crash can leave a cut last line; start on a fresh line so the next record stays parseable.
            cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
            if cut:
                self._file.write("\n")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, stage: str, step: int, metrics: dict[str, Any]) -> None:
        row = {"stage": stage, "step": int(step), "time": round(time.time() - self.t0, 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("stage", "step") and isinstance(v, int | float):
                    self._tb.add_scalar(f"{stage}/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if abs(v) < 1e6 else v
    return v
