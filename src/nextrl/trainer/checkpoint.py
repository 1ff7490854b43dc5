"""Checkpoints: model (Hugging Face format, safetensors), optimizer, scheduler, RNG states, data cursors and
step, written atomically as one folder; `checkpoints/latest` names the newest complete one.

Sharded learners (placement.shard=fsdp) write their model and optimizer shards into the folder's `learner/`
with `torch.distributed.checkpoint` (each rank its own shards, read back at any world size); the model is
still written whole in Hugging Face form beside them (from the driver's rollout-side copy)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nextrl.errors import ConfigError, RunFolderError
from nextrl.utils.io import atomic_dir, atomic_write_text, disk_full
from nextrl.utils.seed import rng_state, set_rng_state

SHARDED = "learner"  # the folder of a checkpoint that holds the sharded learner state


def save_checkpoint(
    folder: str | Path,
    step: int,
    model,
    tokenizer,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 2,
    write_sharded: Callable[[Path], None] | None = None,
) -> Path:
    """Write `folder/step-XXXXXX` atomically, point `folder/latest` at it, keep the newest `keep`.
    `write_sharded` (sharded learners) writes the learner's model and optimizer shards into the folder it is
    given; the optimizer is then not saved whole."""
    folder = Path(folder)
    name = f"step-{step:06d}"
    try:
        _write(folder / name, step, model, tokenizer, optimizer, scheduler, state, write_sharded)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as "RuntimeError: [enforce fail ...]"
        # the half-written folder is gone by now, so the free space it filled is back: "full" means less free
        # than the checkpoint needs (a 3 GB Gemma checkpoint failed with 1.6 GB free after the cleanup)
        if disk_full(folder, e, margin=64 * 1024**2 + _checkpoint_bytes(model, optimizer)):
            raise RunFolderError(
                f"the disk is full: checkpoint {folder / name} could not be written ({type(e).__name__}); the "
                "previous checkpoint is intact: free space and continue with --resume"
            ) from None
        raise
    atomic_write_text(folder / "latest", name + "\n")
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder / name


def _checkpoint_bytes(model, optimizer) -> int:
    """About what a checkpoint writes: the weights, and AdamW's two moments per weight with the optimizer."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights * (3 if optimizer is not None else 1)


def _write(path: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any],
           write_sharded: Callable[[Path], None] | None) -> None:  # fmt: skip
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if write_sharded is not None:
            write_sharded(tmp / SHARDED)
        torch.save(
            {
                "step": step,
                "optimizer": None if write_sharded else optimizer.state_dict(),
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


def load_checkpoint(
    path: str | Path, model, optimizer, scheduler, read_sharded: Callable[[Path], None] | None = None
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG in place; return {'step': ..., 'state': ...}.
    `read_sharded` (sharded learners) reads the learner's shards from the folder it is given, after the
    scheduler is restored; a checkpoint must be read the way it was written (sharded or not)."""
    from safetensors.torch import load_file

    path = Path(path)
    sharded = (path / SHARDED).is_dir()
    if sharded != (read_sharded is not None):
        raise ConfigError(
            f"config key 'placement.shard': checkpoint {path} was written "
            + ("by sharded learners (placement.shard=fsdp)" if sharded else "without sharding")
            + "; resume it with the same placement.shard (any placement.learners)"
        )
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
    scheduler.load_state_dict(blob["scheduler"])
    if read_sharded is not None:
        read_sharded(path / SHARDED)
    else:
        optimizer.load_state_dict(blob["optimizer"])
    set_rng_state(blob["rng"])
    return {"step": blob["step"], "state": blob["state"]}


class StageCheckpoints:
    """A training stage's unfinished state for `--resume` (the format warm-up's): written every `every` steps
    into `folder` (the newest kept), read back on resume when it belongs to the same training (`tag`, e.g. the
    warm-up's cache key), else ignored; `discard` deletes them once the stage's result is kept elsewhere."""

    def __init__(self, folder: Path, tag: str, every: int, resume: bool):
        self.folder, self.tag, self.every, self.resume = Path(folder), tag, every, resume

    def restore(self, model, optimizer, scheduler) -> int:
        """The step to start from: that of the newest checkpoint of this training on resume, else 0."""
        if not self.resume or (path := latest_checkpoint(self.folder)) is None:
            return 0
        # mmap: the tag is read without reading the optimizer's moments (GBs for a real model) twice
        state = torch.load(path / "trainer_state.pt", weights_only=False, mmap=True)["state"]
        if state.get("tag") != self.tag:
            return 0  # another config's training: start over
        return load_checkpoint(path, model, optimizer, scheduler)["step"]

    def save(self, done: int, steps: int, model, optimizer, scheduler) -> None:
        if self.every and done % self.every == 0 and done < steps:
            save_checkpoint(self.folder, done, model, None, optimizer, scheduler, {"tag": self.tag}, keep=1)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the stage's folder too, when nothing else is in it
            self.folder.parent.rmdir()
