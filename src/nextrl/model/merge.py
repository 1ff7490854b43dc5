"""Model merging: combine Hugging Face checkpoints of one architecture into one (`nextrl merge`).

The merge itself is mergekit's (a maintained library; `pip install -e ".[merge]"`); this module checks the
inputs, states the methods and writes the result atomically as a normal Hugging Face checkpoint with the base
model's tokenizer. With task vectors τ_i = θ_i − θ_base and weights w_i:

    linear          θ = Σ w_i θ_i / Σ w_i                                  (no base model)
    task_arithmetic θ = θ_base + Σ w_i τ_i
    ties            τ_i trimmed to its `density` largest-magnitude entries; per entry the sign of Σ w_i τ_i
                    is elected; θ = θ_base + Σ_{agreeing i} w_i τ_i / Σ_{agreeing i} w_i   (Yadav et al. 2023)
    dare_linear     each τ_i keeps an entry with probability `density` (Yu et al. 2023), the survivors rescaled
                    so that τ_i keeps its L1 norm (mergekit's rescale; the paper's 1/density in
                    expectation), then task arithmetic
    dare_ties       the same drop and rescale, then TIES' sign election and disjoint mean
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from nextrl.errors import ConfigError, UsageError
from nextrl.utils.io import atomic_dir

METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
NEEDS_BASE = {"task_arithmetic", "ties", "dare_linear", "dare_ties"}


def _check_models(paths: Sequence[Path]) -> dict:
    """Every input is a model folder of one architecture and shape; returns the first config."""
    configs = []
    for p in paths:
        cfg_file = Path(p) / "config.json"
        if not cfg_file.is_file():
            raise UsageError(f"{p} is not a Hugging Face model folder (no config.json)")
        configs.append(json.loads(cfg_file.read_text()))
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    first = {k: configs[0].get(k) for k in keys}
    for p, c in zip(paths[1:], configs[1:], strict=True):
        other = {k: c.get(k) for k in keys}
        if other != first:
            diff = {k: (first[k], other[k]) for k in keys if first[k] != other[k]}
            raise UsageError(f"{p} does not have the architecture of {paths[0]}: {diff}")
    return configs[0]


def merge_models(
    models: Sequence[str | Path],
    out: str | Path,
    method: str = "linear",
    base: str | Path | None = None,
    weights: Sequence[float] | None = None,
    density: float = 0.5,
    seed: int = 0,
) -> Path:
    """Merge `models` (with `base` for the task-vector methods) into the checkpoint folder `out`."""
    if method not in METHODS:
        raise UsageError(f"unknown merge method '{method}'; methods: {', '.join(METHODS)}")
    if method in NEEDS_BASE and base is None:
        raise UsageError(f"merge method '{method}' needs --base (the model the task vectors start from)")
    if not models:
        raise UsageError("nothing to merge: give at least one model")
    weights = list(weights) if weights else [1.0] * len(models)
    if len(weights) != len(models):
        raise UsageError(f"{len(weights)} weights for {len(models)} models")
    if not 0.0 < density <= 1.0:
        raise UsageError(f"--density must be in (0, 1], got {density}")
    paths = [Path(m) for m in ([base] if base is not None else []) + list(models)]
    _check_models(paths)
    out_path = Path(out)
    if any(out_path.resolve() == p.resolve() for p in paths):
        raise UsageError(f"--out {out_path} is one of the models being merged; choose another folder")
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise UsageError(f"--out {out_path} already exists and is not empty; nothing is overwritten")
    try:
        import torch
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except ImportError:
        raise ConfigError("nextrl merge needs mergekit: pip install -e '.[merge]'") from None

    params = {"weight": None, "density": density} if method.startswith(("ties", "dare")) else {"weight": None}
    entries = []
    for m, w in zip(models, weights, strict=True):
        entries.append({"model": str(m), "parameters": {**params, "weight": float(w)}})
    conf = {"merge_method": method, "models": entries, "dtype": "float32"}
    if base is not None:
        conf["base_model"] = str(base)
    if method == "linear":
        conf["parameters"] = {"normalize": True}
    elif method in ("ties", "dare_ties"):
        conf["parameters"] = {"normalize": True}  # the disjoint mean over agreeing models
    else:
        conf["parameters"] = {"normalize": False}
    torch.manual_seed(seed)  # DARE's drops are drawn from torch's generator
    out = Path(out)
    with atomic_dir(out) as tmp:
        run_merge(
            MergeConfiguration.model_validate(conf),
            str(tmp),
            options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False, low_cpu_memory=False, quiet=True),
        )
        _copy_tokenizer(Path(base) if base is not None else Path(models[0]), tmp)
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    import shutil

    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
