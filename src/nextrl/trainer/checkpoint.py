"""Checkpoints: model (Hugging Face format, safetensors), optimizer, scheduler, RNG states, data cursors and
step, written atomically as one folder; `checkpoints/latest` names the newest complete one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from nextrl.errors import RunFolderError
from nextrl.utils.io import atomic_dir, atomic_write_text, disk_full
from nextrl.utils.seed import rng_state, set_rng_state


def save_checkpoint(
    folder: str | Path,
    step: int,
    model,
    tokenizer,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write `folder/step-XXXXXX` atomically, point `folder/latest` at it, keep the newest `keep`."""
    folder = Path(folder)
    name = f"step-{step:06d}"
    try:
        _write(folder / name, step, model, tokenizer, optimizer, scheduler, state)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as "RuntimeError: [enforce fail ...]"
        if disk_full(folder, e):
            raise RunFolderError(
                f"the disk is full: checkpoint {folder / name} could not be written ({type(e).__name__}); the "
                "previous checkpoint is intact: free space and continue with --resume"
            ) from None
        raise
    atomic_write_text(folder / "latest", name + "\n")
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder / name


def _write(path: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any]) -> None:
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "state": state,
            },
            tmp / "trainer_state.pt",
        )


def latest_checkpoint(folder: str | Path) -> Path | None:
    pointer = Path(folder) / "latest"
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").is_file() else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG in place; return {'step': ..., 'state': ...}."""
    from safetensors.torch import load_file

    path = Path(path)
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied embeddings are saved once; anything else missing means a different architecture.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    blob = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return {"step": blob["step"], "state": blob["state"]}
