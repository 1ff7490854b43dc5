"""The format warm-up (`warmup`): continued pretraining of the base model on the training documents, with the
thoughts they show written in the run's thought delimiters, before selection and RL.

Why: a model nextrl pretrains sees thoughts in its pretraining windows; a pretrained model has never seen one
in its format. Gemma 3 270M with three worked examples in context still wrote wrong column arithmetic and
answered 0 of 30 computed positions right after its thought. Pages that show worked steps, in the format the
policy will write, teach it the procedure and that the text goes on after the thought; whether thinking pays
is left for RL. The warmed model is the run's `base`, and it is cached (a second run reuses it).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Protocol

import torch

from nextrl import __version__
from nextrl.accounting.flops import FlopModel
from nextrl.config import RunConfig
from nextrl.data.shown_thoughts import tokenize_document
from nextrl.data.windows import WindowBatches, pack_windows
from nextrl.errors import DataError
from nextrl.model.lm import train_lm
from nextrl.model.optim import build_optimizer, build_scheduler
from nextrl.model.pretrain import BaseModel, cache_root, load_base, train_documents
from nextrl.utils.io import atomic_dir
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.progress import progress


class Resumable(Protocol):
    """Where a stage keeps its unfinished training (`nextrl.trainer.checkpoint.StageCheckpoints`)."""

    def restore(self, model, optimizer, scheduler) -> int: ...

    def save(self, done: int, steps: int, model, optimizer, scheduler) -> None: ...

    def discard(self) -> None: ...


def warmup_key(cfg: RunConfig, thought_ids: tuple[int, int] | None, vocab_size: int) -> str:
    """A hash of everything that shapes the warmed model (the vocabulary too: the structured format adds
    `<think>`/`</think>` rows to a pretrained model's embeddings, the others do not)."""
    shaping = {
        "version": __version__,
        "base": cfg.model.path or cfg.model.model_dump(mode="json"),
        "vocab_size": vocab_size,
        "pretrain": None if cfg.model.path else cfg.pretrain.model_dump(mode="json", exclude={"cache_dir"}),
        "data": cfg.data.model_dump(mode="json"),
        "warmup": cfg.warmup.model_dump(mode="json", exclude={"checkpoint_every"}),
        "thought_ids": thought_ids,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def warm_up(
    cfg: RunConfig,
    base: BaseModel,
    thought_ids: tuple[int, int] | None,
    device: torch.device,
    autocast: torch.dtype | None,
    logger: MetricsLogger | None,
    resumable: Resumable | None = None,
) -> BaseModel:
    """The base model after `cfg.warmup.tokens` tokens of continued pretraining (loaded from the cache when a
    run with the same shaping config made it). `thought_ids` are the format's delimiters (None for a format
    without them: then a document that shows thoughts is a DataError). `resumable` (the run's checkpoints of
    this warm-up, `nextrl.trainer.checkpoint.StageCheckpoints`) keeps the unfinished warm-up and gives the step
    to go on from; it is discarded once the warmed model is in the cache."""
    folder = cache_root(cfg) / f"warm-{warmup_key(cfg, thought_ids, len(base.tokenizer))}"
    if (folder / "base.json").is_file():
        warmed = load_base(folder)
        warmed.model.to(device)
        return warmed
    t0 = time.time()
    windows = _windows(cfg, base.tokenizer, thought_ids)
    stats = train_on_windows(cfg, base.model, windows, device, autocast, logger, resumable)
    info = {
        **base.info,
        "source": f"{base.info.get('source', cfg.model.path)} after a format warm-up of {stats['tokens']} tokens",
        "key": folder.name,
        "seconds": time.time() - t0,
        "warmup_tokens": stats["tokens"],
        "warmup_steps": stats["steps"],
        "warmup_flops": stats["flops"],
        "warmup_final_loss": stats["loss"],
        "warmup_tokens_per_second": stats["tokens_per_second"],
    }
    base.model.to("cpu")
    with atomic_dir(folder) as tmp:
        base.tokenizer.save_pretrained(str(tmp))
        base.model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "base.json").write_text(json.dumps(info, indent=2))
    base.model.to(device)
    if resumable is not None:
        resumable.discard()  # the cache holds the finished warm-up now
    return BaseModel(base.model, base.tokenizer, folder, {**info, "cached": False})


def _windows(cfg: RunConfig, tokenizer, thought_ids: tuple[int, int] | None):
    """Packed training windows of the training documents, thoughts shown beside the text inserted."""
    wc = cfg.warmup
    # read ~4 characters per wanted token (digits are single tokens, so fewer); epochs repeat when short
    docs = train_documents(cfg, max_chars=wc.tokens * 4)
    if not docs:
        raise DataError("the corpus has no training documents for the warm-up (data.sources)")
    encoded = [
        tokenize_document(d, tokenizer, thought_ids)[0].tolist()
        for d in progress(desc="warm-up tokenize", unit="doc", total=len(docs), iterable=docs)
    ]
    return pack_windows(encoded, wc.seq_len, tokenizer.eos_token_id)


def train_on_windows(
    cfg: RunConfig, model, windows, device, autocast, logger, resumable: Resumable | None = None
) -> dict[str, float]:
    """`cfg.warmup`'s continued pretraining on packed token windows (the warm-up's loop, for callers that build
    their own windows, such as bench/aside_warmup.py). The batches are a function of the step, so a resumed
    warm-up sees the same windows as one that was never killed."""
    wc = cfg.warmup
    steps = math.ceil(wc.tokens / (wc.batch_size * wc.seq_len))
    batches = WindowBatches(windows, wc.batch_size, seed=cfg.seed + 2)
    opt = build_optimizer(model, wc.lr, 0.0)
    sched = build_scheduler(opt, wc.warmup_steps, steps, "cosine")
    flops_step = FlopModel.from_model(model).train_sequence(wc.seq_len, wc.batch_size)
    start = resumable.restore(model, opt, sched) if resumable is not None else 0
    if logger is not None:
        logger.restart("warmup", start)
    stats = train_lm(
        model,
        lambda s: (batches.batch(s), None),
        steps=steps,
        start_step=start,
        optimizer=opt,
        scheduler=sched,
        grad_clip=1.0,
        autocast=autocast,
        device=device,
        flops_per_step=flops_step,
        stage="warmup",
        logger=logger,
        on_step=None if resumable is None else lambda done: resumable.save(done, steps, model, opt, sched),
    )
    model.eval()
    return {**stats, "tokens": steps * wc.batch_size * wc.seq_len}
