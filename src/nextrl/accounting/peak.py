"""The machine's measured matmul peak, the denominator of MFU (model FLOPs utilisation).

Vendor peaks say little about a 2-core CPU (or a GPU under another clock), so the peak is measured: the best of
several timed square matmuls per dtype, after a warm-up. It is measured once per processor model, device, dtype
and thread count, and cached as JSON next to the pretrained base models ($NEXTRL_CACHE or ~/.cache/nextrl).

A measurement can only be too low (another process took the cores, a clock was down), never too high, and a
low peak inflates every MFU computed against it (a 2-core machine measured 90 instead of ~175 GFLOP/s while
a neighbour loaded it, and the RL step's MFU read 81%). So a remeasurement keeps the higher of the cached and
the new rate.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from nextrl.utils.io import atomic_write_text


def _cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), else what `platform` knows: two machines of one
    architecture but different CPUs must not share a cached peak."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.machine()}-{_cpu_model()}-{torch.get_num_threads()}threads"
    return f"{device.type}-{where.replace(' ', '_')}-{str(dtype).removeprefix('torch.')}-torch{torch.__version__}"


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5
) -> float:
    """FLOP/s of the fastest of `repeats` timed [size x size] @ [size x size] matmuls (2·size³ FLOPs each)."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    inner = 10 if device.type == "cuda" else 2

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cpu":
        # Probe on a small product first: where the dtype is emulated (bf16 on an AVX2-only CPU runs at ~1
        # GFLOP/s) the full measurement would take half a minute to say what the probe already says.
        small = 256
        x, y = a[:small, :small].contiguous(), b[:small, :small].contiguous()
        x @ y
        t = time.perf_counter()
        x @ y
        rate = 2.0 * small**3 / (time.perf_counter() - t)
        if rate < 10e9:
            return rate
    a @ b  # warm-up: kernel selection, page faults, clocks
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / inner)
    return 2.0 * size**3 / best


def matmul_peak(
    device: torch.device, dtype: torch.dtype, cache_dir: str | Path | None = None, remeasure: bool = False
) -> float:
    """The cached measured peak: measured on first use; with `remeasure` measured again, and the higher of the
    two kept (a peak measured while other processes loaded the machine is too low and flatters MFU)."""
    root = Path(cache_dir or os.environ.get("NEXTRL_CACHE", Path.home() / ".cache" / "nextrl"))
    path = root / "matmul_peak.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    key = _key(device, dtype)
    if remeasure or key not in table:
        table[key] = max(measure_matmul_peak(device, dtype), float(table.get(key, 0.0)))
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True))
    return float(table[key])


def cpu_prefers_bf16(device: torch.device) -> bool:
    """bf16 autocast pays on this CPU: its measured matmul peak beats fp32 by 20% (≈2.5x with native bf16,
    AVX512-BF16 or AMX; ~100x *slower* on AVX2-only CPUs, where it is emulated)."""
    return matmul_peak(device, torch.bfloat16) > 1.2 * matmul_peak(device, torch.float32)
