"""The "this machine" hardware profile, measured on the spot: the matmul peak (the cached measurement that MFU
uses), the memory bandwidth of a large copy, and the fixed cost of one layer's forward call (a tiny layer at
batch 1, where the arithmetic is negligible and what is left is dispatch: Python, the framework, kernel
launches)."""

from __future__ import annotations

import os
import time

import torch

from nextrl.accounting.peak import matmul_peak
from nextrl.plan.profiles import Hardware


def measure_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of the fastest of `repeats` copies of a `megabytes` buffer (read once, written once)."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * src.numel() / best


def measure_layer_overhead(device: torch.device, repeats: int = 100) -> float:
    """Seconds one decoder layer adds to a forward of one token: the difference between a 5-layer and a
    1-layer tiny Llama (hidden 64), per extra layer, from the fastest of `repeats` calls of each (the least
    disturbed by other work on the machine)."""
    from transformers import LlamaConfig, LlamaModel

    def timed(layers: int) -> float:
        cfg = LlamaConfig(
            vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
        model = LlamaModel(cfg).to(device).eval()
        ids = torch.zeros((1, 1), dtype=torch.long, device=device)
        times = []
        with torch.no_grad():
            for _ in range(repeats + 3):
                t = time.perf_counter()
                model(input_ids=ids, use_cache=False)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t)
        return min(times[3:])

    return max(0.0, (timed(5) - timed(1)) / 4)


def this_machine(dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> Hardware:
    """This machine's profile (one device: `gpus_per_node` 1; the weight sync is a local copy)."""
    dev = torch.device(device)
    bandwidth = measure_bandwidth(dev)
    if dev.type == "cuda":
        memory = float(torch.cuda.get_device_properties(dev).total_memory)
    else:
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return Hardware(
        name=f"this-machine ({dev.type}, {str(dtype).removeprefix('torch.')})",
        peak_flops=matmul_peak(dev, dtype),
        hbm_bytes_per_s=bandwidth,
        memory_bytes=memory,
        gpus_per_node=1,
        link_bytes_per_s=bandwidth,
        layer_overhead_s=measure_layer_overhead(dev),
    )
