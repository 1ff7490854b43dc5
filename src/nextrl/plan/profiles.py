"""Hardware and model profiles for the planner: datasheet figures, each overridable from a YAML file.

Hardware: peak dense bf16 FLOP/s per GPU, HBM bandwidth, memory, GPUs per node and the bandwidth that weight
syncs cross (NVLink inside a node). Models: the shapes of real open models (parameters follow from them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from nextrl.errors import UsageError


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float  # dense bf16 FLOP/s per GPU
    hbm_bytes_per_s: float
    memory_bytes: float
    gpus_per_node: int = 8
    link_bytes_per_s: float = 900e9  # weight sync bandwidth per GPU (NVLink)
    # fixed costs (`nextrl.plan.cost`): per layer of every forward call, per decode iteration, per RL step
    layer_overhead_s: float = 0.0
    iteration_overhead_s: float = 0.0
    step_overhead_s: float = 0.0


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False

    @property
    def matmul_params(self) -> int:
        """Weights every token multiplies by, the unembedding included (the FlopModel convention)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp) + self.vocab * self.hidden

    @property
    def params(self) -> int:
        return self.matmul_params + (0 if self.tied else self.vocab * self.hidden)

    @property
    def largest_unit_params(self) -> int:
        """Parameters of the largest FSDP unit (`nextrl.model.fsdp`): a transformer block, or the root that
        holds the embeddings (and an untied head)."""
        block = (self.matmul_params - self.vocab * self.hidden) // max(self.layers, 1)
        return max(block, self.vocab * self.hidden * (1 if self.tied else 2))

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 keys and values of one token across all layers."""
        return 2 * 2 * self.layers * self.kv_heads * self.head_dim


HARDWARE = {
    "h100": Hardware("h100", 989e12, 3.35e12, 80e9),
    "h200": Hardware("h200", 989e12, 4.8e12, 141e9),
    "b200": Hardware("b200", 2.25e15, 8.0e12, 180e9, link_bytes_per_s=1.8e12),
    "dgx-b200": Hardware("dgx-b200", 2.25e15, 8.0e12, 180e9, gpus_per_node=8, link_bytes_per_s=1.8e12),
}

MODELS = {
    "qwen3-0.6b": ModelShape("qwen3-0.6b", 1024, 28, 16, 8, 128, 3072, 151936, tied=True),
    "qwen3-1.7b": ModelShape("qwen3-1.7b", 2048, 28, 16, 8, 128, 6144, 151936, tied=True),
    "qwen3-4b": ModelShape("qwen3-4b", 2560, 36, 32, 8, 128, 9728, 151936, tied=True),
    "qwen3-8b": ModelShape("qwen3-8b", 4096, 36, 32, 8, 128, 12288, 151936),
    "qwen3-14b": ModelShape("qwen3-14b", 5120, 40, 40, 8, 128, 17408, 151936),
    "qwen3-32b": ModelShape("qwen3-32b", 5120, 64, 64, 8, 128, 25600, 151936),
    "llama3-8b": ModelShape("llama3-8b", 4096, 32, 32, 8, 128, 14336, 128256),
    "llama3-70b": ModelShape("llama3-70b", 8192, 80, 64, 8, 128, 28672, 128256),
}


def _load(kind: str, what: str, table: dict, name: str, cls, overrides: str | Path | None):
    if overrides:
        data: dict[str, Any] = yaml.safe_load(Path(overrides).read_text()) or {}
        for key, fields in (data.get(kind) or {}).items():
            base = table.get(key)
            table = {**table, key: replace(base, **fields) if base else cls(name=key, **fields)}
    if name not in table:
        raise UsageError(
            f"unknown {kind[:-1]} '{name}'; known: {', '.join(sorted(table))} (or add it in a YAML file)"
        )
    return table[name]


def hardware(name: str, overrides: str | Path | None = None) -> Hardware:
    return _load("hardware", "hardware", HARDWARE, name, Hardware, overrides)


def model(name: str, overrides: str | Path | None = None) -> ModelShape:
    return _load("models", "model", MODELS, name, ModelShape, overrides)
