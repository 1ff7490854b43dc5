"""Checks before any work: every path the run reads exists and is what it should be, every folder it writes
is writable, and the disk can hold what the run will write. A failure here costs a second, not the minutes of
pretraining it would otherwise come after; each message names the key or path and what to do."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from nextrl.config import RunConfig
from nextrl.errors import ConfigError, RunFolderError
from nextrl.model.gguf import KNOWN, gguf_available, is_gguf_ref
from nextrl.model.pretrain import cache_root

MB = 1024**2


def _looks_local(value: str) -> bool:
    """A filesystem path rather than a hub id ('org/name'): absolute, relative with ./ or ~, or existing."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).exists() or value.count("/") > 1


def check_input_paths(cfg: RunConfig) -> None:
    if cfg.tokenizer.path and not cfg.model.path:
        raise ConfigError(
            "config key 'tokenizer.path' is set but 'model.path' is not: a model pretrained here trains its own "
            "tokenizer; set model.path too, or leave tokenizer.path out"
        )
    wanted = [("model.path", cfg.model.path, ("config.json",)), ("tokenizer.path", cfg.tokenizer.path, None)]
    if cfg.selection.proxy not in ("base", "none"):
        wanted.append(("selection.proxy", cfg.selection.proxy, ("config.json",)))
    for key, value, needs in wanted:
        if is_gguf_ref(value):
            _check_gguf(key, value)
            continue
        if not value or not _looks_local(value):
            continue  # unset, or a hub id (resolved, or refused offline, by the loader)
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"config key '{key}': {path} does not exist")
        if not path.is_dir():
            raise ConfigError(
                f"config key '{key}': {path} is not a folder (a Hugging Face model or tokenizer)"
            )
        if needs and not any((path / n).is_file() for n in needs):
            raise ConfigError(
                f"config key '{key}': {path} holds no {needs[0]}: it is not a Hugging Face model folder"
            )
        if key == "tokenizer.path" and not any(
            (path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
        ):
            raise ConfigError(f"config key 'tokenizer.path': {path} holds no tokenizer files")


def _check_gguf(key: str, value: str) -> None:
    """A GGUF model: the file exists (or its package is installed) and the reader is there to convert it."""
    missing = gguf_available(value) if value in KNOWN else None
    if missing:
        raise ConfigError(f"config key '{key}': {value!r} needs {missing}")
    if value not in KNOWN:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"config key '{key}': no GGUF file at {path}")
        if importlib.util.find_spec("gguf") is None:
            raise ConfigError(f"config key '{key}': reading {path} needs the gguf package: pip install gguf")


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` and a file in it, or fail naming `what` and the OS's reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as e:
        raise RunFolderError(f"cannot write to {what} {folder}: {e.strerror or e}") from None


def estimate_bytes(cfg: RunConfig) -> int:
    """What the run writes, roughly: fp32 models and checkpoints (weights + two Adam moments) plus logs."""
    m = cfg.model
    if m.path and Path(m.path).is_dir():
        weights = sum(f.stat().st_size for f in Path(m.path).glob("*.safetensors")) or 4 * 10**8
    else:
        vocab = cfg.tokenizer.vocab_size
        params = 2 * vocab * m.hidden_size + m.num_layers * (
            4 * m.hidden_size**2 + 3 * m.hidden_size * m.intermediate_size
        )
        weights = 4 * params
    checkpoints = 2 * 2 * 3 * weights  # rl and baseline, the newest 2 each, weights + Adam moments
    models = 3 * weights  # base (cache), rl, baseline
    return checkpoints + models + 64 * MB


def check_disk(out: Path, cfg: RunConfig) -> None:
    need = estimate_bytes(cfg)
    free = shutil.disk_usage(out).free
    if free < need:
        raise RunFolderError(
            f"not enough disk space for the run in {out}: it writes about {need // MB} MB (models and "
            f"checkpoints), {free // MB} MB are free; free space or choose another --out"
        )


def preflight(cfg: RunConfig, out: Path, resume: bool = False) -> None:
    check_input_paths(cfg)
    check_writable(out, "--out")
    if not cfg.model.path:
        key = "pretrain.cache_dir" if cfg.pretrain.cache_dir else "the base-model cache ($NEXTRL_CACHE)"
        check_writable(cache_root(cfg), key)
    if not resume:  # a resumed run already holds most of what it writes (checkpoints replace each other)
        check_disk(out, cfg)


def check_context(cfg: RunConfig, model) -> None:
    """A prompt plus its thought and answer, and a baseline window, must fit the model's position table (a
    loaded model's, which the config cannot know before it is loaded)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    longest = cfg.selection.context + cfg.env.thought_tokens + cfg.env.answer_tokens + 2
    if cfg.env.format != "prompted" and longest > limit:  # prompted prompts are as long as their template
        raise ConfigError(
            f"config key 'selection.context': a prompt of {cfg.selection.context} tokens plus the thought and "
            f"answer ({longest} tokens) exceeds the model's max_position_embeddings={limit}"
        )
    if cfg.baseline.seq_len + 1 > limit:
        raise ConfigError(
            f"config key 'baseline.seq_len': {cfg.baseline.seq_len} exceeds the model's {limit} positions"
        )
