"""The base model: a Hugging Face model from a path, or a tokenizer + small Llama pretrained from scratch on the
corpus (cached by a hash of everything that shapes it, so a second run reuses it)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nextrl import __version__
from nextrl.accounting.flops import FlopModel
from nextrl.config import RunConfig
from nextrl.data import Document, DocumentStream, split_of
from nextrl.data.shown_thoughts import tokenize_document
from nextrl.data.windows import WindowBatches, insert_thought, pack_windows
from nextrl.errors import ConfigError, DataError
from nextrl.model.build import autocast_dtype, build_llama, count_params, load_model
from nextrl.model.gguf import resolve_model_path
from nextrl.model.lm import train_lm
from nextrl.model.optim import build_optimizer, build_scheduler
from nextrl.model.tokenizer import load_tokenizer, think_ids, train_bpe_tokenizer
from nextrl.utils.io import atomic_dir
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.progress import progress


@dataclass
class BaseModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    path: Path | None  # where it is saved (None when loaded from a hub id)
    info: dict[str, Any] = field(default_factory=dict)


def cache_root(cfg: RunConfig) -> Path:
    if cfg.pretrain.cache_dir:
        return Path(cfg.pretrain.cache_dir)
    return Path(os.environ.get("NEXTRL_CACHE", Path.home() / ".cache" / "nextrl"))


def cache_key(cfg: RunConfig) -> str:
    shaping = {
        "version": __version__,
        "data": cfg.data.model_dump(mode="json"),
        "tokenizer": cfg.tokenizer.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "pretrain": cfg.pretrain.model_dump(mode="json", exclude={"cache_dir"}),
        "thought_tokens": cfg.env.thought_tokens,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def train_documents(cfg: RunConfig, max_chars: int | None = None) -> list[Document]:
    """Train-split documents in stream order, up to `max_chars` characters in total."""
    docs, chars = [], 0
    for doc in DocumentStream(cfg.data):
        if split_of(doc.doc_id, cfg.data.heldout_fraction, cfg.data.seed) != "train":
            continue
        docs.append(doc)
        chars += len(doc.text)
        if max_chars is not None and chars >= max_chars:
            break
    return docs


def prepare_base(cfg: RunConfig, logger: MetricsLogger | None = None) -> BaseModel:
    if cfg.model.path:
        key = "tokenizer.path" if cfg.tokenizer.path else "model.path"
        source = resolve_model_path(cfg.model.path, cache_root(cfg))  # a GGUF model: its converted folder
        try:
            # only the structured format writes <think>/</think>: the others keep the model's own vocabulary
            think = cfg.env.format == "structured"
            tok = load_tokenizer(cfg.tokenizer.path or source, cache_root(cfg), think_tokens=think)
        except (OSError, ValueError) as e:  # not found, offline, no tokenizer files
            raise ConfigError(
                f"config key '{key}': cannot load a tokenizer from {cfg.tokenizer.path or cfg.model.path}: {e}"
            ) from None
        model = load_model(source, vocab_size=len(tok))
        path = Path(source) if Path(source).is_dir() else None
        return BaseModel(model, tok, path, {"source": cfg.model.path, "cached": True, "flops": 0.0})
    folder = cache_root(cfg) / f"base-{cache_key(cfg)}"
    if (folder / "base.json").is_file():
        return load_base(folder)
    pretrain_base(cfg, folder, logger)
    return load_base(folder)


def load_base(folder: Path) -> BaseModel:
    info = json.loads((folder / "base.json").read_text())
    tok = load_tokenizer(str(folder), think_tokens=False)  # the vocabulary the folder was saved with
    model = load_model(folder)
    return BaseModel(model, tok, folder, {**info, "cached": True})


def _corpus(cfg: RunConfig) -> tuple[list, Any, np.ndarray]:
    """The pretraining documents, a BPE tokenizer trained on them, and their packed windows."""
    pc = cfg.pretrain
    # ~3.5 characters per BPE token on code; read 1.5x what the token budget needs (epochs repeat otherwise).
    docs = train_documents(cfg, max_chars=int(pc.tokens * 3.5 * 1.5))
    if not docs:
        raise DataError("the corpus has no training documents (data.sources)")
    tok = train_bpe_tokenizer(
        (d.text for d in docs[: cfg.tokenizer.train_documents]),
        cfg.tokenizer.vocab_size,
        cfg.tokenizer.split_digits,
    )
    encoded = []
    for d in progress(desc="tokenize", unit="doc", total=len(docs), iterable=docs):
        # thoughts shown beside the text (`synthetic.thoughts: beside`) in the <think> tokens of the vocabulary
        # trained here, at token level, as selection and the warm-up write them
        encoded.append(tokenize_document(d, tok, think_ids(tok))[0].tolist())
    return docs, tok, pack_windows(encoded, pc.seq_len, tok.eos_token_id)


def _batches_with_thoughts(
    cfg: RunConfig, batches: WindowBatches, tok
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """step -> (tokens, loss mask) of that step's windows, a seeded share of them with thoughts inserted
    (`insert_thought`), so that the base model has seen `<think> … </think>` before RL asks for one."""
    pc = cfg.pretrain
    open_id, close_id = think_ids(tok)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = batches.batch(step).numpy()
        masks = np.ones((tokens.shape[0], tokens.shape[1] - 1), dtype=bool)
        rng = np.random.default_rng([cfg.seed, 7, step])
        for i in range(len(tokens)):
            # a window that already shows a thought (worked steps in the corpus) gets no second one inside it
            if rng.random() < pc.think_insert_prob and not np.isin(tokens[i], (open_id, close_id)).any():
                tokens[i], masks[i] = insert_thought(
                    tokens[i],
                    rng,
                    open_id,
                    close_id,
                    cfg.env.thought_tokens,
                    empty_prob=pc.think_empty_prob,
                    n=pc.thoughts_per_window,
                )
        return torch.from_numpy(tokens), torch.from_numpy(masks)

    return batch_fn


def pretrain_base(cfg: RunConfig, folder: Path, logger: MetricsLogger | None) -> None:
    pc = cfg.pretrain
    t0 = time.time()
    if logger is not None:  # pretraining restarts from step 0 after a kill: log each step once
        logger.restart("pretrain", 0)
    docs, tok, windows = _corpus(cfg)
    model = build_llama(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=cfg.seed)
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    model.to(device)
    batch_fn = _batches_with_thoughts(cfg, WindowBatches(windows, pc.batch_size, seed=cfg.seed), tok)
    steps = math.ceil(pc.tokens / (pc.batch_size * pc.seq_len))
    opt = build_optimizer(model, pc.lr, pc.weight_decay)
    sched = build_scheduler(opt, pc.warmup_steps, steps, "cosine")
    flops_step = FlopModel.from_model(model).train_sequence(pc.seq_len, pc.batch_size)
    stats = train_lm(
        model,
        batch_fn,
        steps=steps,
        start_step=0,
        optimizer=opt,
        scheduler=sched,
        grad_clip=1.0,
        autocast=autocast_dtype(cfg.model, device),
        device=device,
        flops_per_step=flops_step,
        stage="pretrain",
        logger=logger,
    )
    info = {
        "source": "pretrained from scratch",
        "key": folder.name,
        "documents": len(docs),
        "windows": len(windows),
        "params": count_params(model),
        "vocab_size": len(tok),
        "seconds": time.time() - t0,
        "train_seconds": stats["seconds"],
        "steps": steps,
        "tokens": steps * pc.batch_size * pc.seq_len,
        "flops": stats["flops"],
        "tokens_per_second": stats["tokens_per_second"],
        "final_loss": stats["loss"],
    }
    model.to("cpu")
    with atomic_dir(folder) as tmp:
        tok.save_pretrained(str(tmp))
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "base.json").write_text(json.dumps(info, indent=2))
