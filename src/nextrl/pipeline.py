"""The main job, stage by stage: base model -> positions -> RL -> FLOP-matched baseline -> evaluation -> report.

Each stage writes its output into the run folder; with `resume=True` finished stages are read back and
unfinished ones continue from their last checkpoint, so an interrupted run loses at most one checkpoint interval.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nextrl import __version__
from nextrl.accounting.flops import FlopModel
from nextrl.config import RunConfig
from nextrl.data import DocumentStream, check_sources
from nextrl.data.windows import WindowBatches, pack_windows
from nextrl.engine import build_engine
from nextrl.env import Adaptation, MixtureTaskSource, NextTokenEnv, build_environment
from nextrl.env.formats import shown_thought_ids
from nextrl.env.mixed_environment import MixedEnvironment
from nextrl.errors import DataError, RunFolderError
from nextrl.eval.heldout import control_check, evaluate_models, verdict
from nextrl.model.build import autocast_dtype, resolve_device
from nextrl.model.lm import train_lm
from nextrl.model.optim import build_optimizer, build_scheduler
from nextrl.model.pretrain import BaseModel, prepare_base
from nextrl.model.warmup import warm_up, warmup_key
from nextrl.positions import PositionIndex, position_tasks, select_positions
from nextrl.preflight import check_context, preflight
from nextrl.report import summary_table, write_report
from nextrl.run_folder import RunLock, check_foreign, prepare_run_folder
from nextrl.summary import RLRunSummary, RunSummary, SummaryError
from nextrl.trainer.checkpoint import StageCheckpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from nextrl.trainer.rl import RLTrainer
from nextrl.utils.io import atomic_dir, atomic_write_text
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.seed import seed_everything


def select_stage(cfg: RunConfig, base: BaseModel, out: Path, device, autocast) -> PositionIndex:
    folder = out / "index"
    if (folder / "positions.parquet").is_file() and (folder / "documents.parquet").is_file():
        return PositionIndex.load(folder)
    docs = []
    stream = DocumentStream(cfg.data)
    for doc in stream:
        docs.append(doc)
        if len(docs) >= cfg.selection.max_documents:
            break
    proxy = None if cfg.selection.proxy == "none" else base.model
    if cfg.selection.proxy not in ("base", "none"):
        from nextrl.model.build import load_model

        proxy = load_model(cfg.selection.proxy, key="selection.proxy").to(device)
    index = select_positions(
        docs,
        base.tokenizer,
        proxy,
        cfg.selection,
        cfg.data,
        autocast,
        device,
        seed=cfg.seed,
        thought_ids=shown_thought_ids(cfg.env, base.tokenizer),
    )
    index.skipped = {k: v for k, v in stream.stats.as_dict().items() if v}  # bad inputs, by reason
    if not index.rows("train"):
        if proxy is None:
            raise DataError(
                "selection kept no training positions: selection.proxy 'none' keeps only the `computed` spans a "
                "corpus marks (the synthetic source), and these documents mark none; set selection.proxy: base"
            )
        raise DataError("selection kept no training positions: lower selection.min_entropy or add documents")
    if not index.rows("heldout"):
        raise DataError(
            "selection kept no held-out positions: raise data.heldout_fraction or selection.max_documents"
        )
    index.save(folder)
    return index


def save_model(model, tokenizer, folder: Path) -> None:
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))


def build_rl_trainer(
    cfg: RunConfig,
    policy,
    tokenizer,
    index: PositionIndex,
    out_dir: Path,
    device,
    autocast,
    logger: MetricsLogger | None = None,
    model_path: Path | None = None,
) -> RLTrainer:
    """The RL trainer of a run: the environment `cfg.env.name` names, the index's training positions as its
    task source, the configured engine, in this process or on Ray workers (`placement`). `policy` is trained
    in place; `model_path` is the folder it was loaded from (an engine that loads its own copy, vLLM, needs
    it)."""
    env = build_environment(cfg, tokenizer)
    if isinstance(env, MixedEnvironment):  # each environment its own tasks, shared by the mixture's weights
        sources = {n: e.task_source(cfg) or position_tasks(cfg, index, e) for n, e in env.envs.items()}
        adapt = cfg.env.mixture_adapt
        source = MixtureTaskSource(sources, env.weights, Adaptation(**adapt.model_dump()) if adapt else None)
    else:
        source = env.task_source(cfg) or position_tasks(cfg, index, env)
    # on Ray the workers hold the configured engine; the driver's only states what the producer serves
    local = cfg.placement.kind == "local"
    engine = build_engine(
        cfg.sampling if local else cfg.sampling.model_copy(update={"engine": "torch"}),
        cfg.sharing,
        policy,
        tokenizer.pad_token_id,
        autocast,
        seed=cfg.rl.seed,
        model_path=model_path,
    )
    producer = None
    if cfg.placement.kind == "ray":  # rollouts on Ray actors; the learner stays here
        from nextrl.distributed.ray_producer import RayProducer

        producer = RayProducer(cfg, policy, tokenizer, source, env, autocast, out_dir, model_path)
    trainer = RLTrainer(
        cfg, policy, tokenizer, source, env, engine, out_dir, device, autocast, logger, producer
    )
    # data-parallel learner ranks beside the driver's; sharded ones (FSDP2) form a group even alone
    if cfg.placement.learners > 1 or cfg.placement.shard == "fsdp":
        from nextrl.distributed.learner_group import attach_learner_group

        attach_learner_group(cfg, trainer.learner, tokenizer.pad_token_id, autocast)
    return trainer


def rl_stage(
    cfg: RunConfig,
    base: BaseModel,
    index: PositionIndex,
    out: Path,
    device,
    autocast,
    logger: MetricsLogger,
    resume: bool,
    stop_after: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    policy = copy.deepcopy(base.model).to(device)
    trainer = build_rl_trainer(
        cfg, policy, base.tokenizer, index, out / "rl", device, autocast, logger, model_path=base.path
    )
    if resume:
        trainer.maybe_resume()
    try:
        trainer.train(stop_after=stop_after)
    finally:
        trainer.close()
    return policy, trainer.summary()


def baseline_stage(
    cfg: RunConfig,
    base: BaseModel,
    index: PositionIndex,
    out: Path,
    device,
    autocast,
    logger: MetricsLogger,
    flops_budget: float,
    resume: bool,
) -> tuple[Any, dict[str, Any]]:
    """Continue the base model with plain next-token loss on the same training documents, for the RL run's FLOPs."""
    bc = cfg.baseline
    model = copy.deepcopy(base.model).to(device)
    train_docs = [t for d, t in index.doc_tokens.items() if index.doc_split[d] == "train"]
    windows = pack_windows(train_docs, bc.seq_len, base.tokenizer.eos_token_id)
    fm = FlopModel.from_model(model)
    batch = bc.batch_size
    sequences = flops_budget / fm.train_sequence(bc.seq_len, 1)  # what the budget buys
    steps = max(1, round(sequences / batch))
    if abs(steps * batch - sequences) > 0.1 * sequences:
        # a budget of a few batches (a short RL stage): whole steps of the configured batch would miss it by
        # more than 10%, so the batch shrinks to match (never below one sequence)
        batch = max(1, round(sequences / steps))
    batches = WindowBatches(windows, batch, seed=cfg.seed + 1)
    flops_step = fm.train_sequence(bc.seq_len, batch)
    steps = max(1, round(flops_budget / flops_step))
    opt = build_optimizer(model, bc.lr, 0.0)
    sched = build_scheduler(opt, 0, steps, "constant")
    ckpt = out / "baseline" / "checkpoints"
    start = 0
    if resume and (path := latest_checkpoint(ckpt)) is not None:
        start = load_checkpoint(path, model, opt, sched)["step"]
    logger.restart("baseline", start)
    every = max(1, cfg.rl.checkpoint_every)

    def on_step(done: int) -> None:
        if done % every == 0 or done == steps:
            save_checkpoint(ckpt, done, model, base.tokenizer, opt, sched, {})

    stats = train_lm(
        model,
        lambda s: (batches.batch(s), None),
        steps=steps,
        start_step=start,
        optimizer=opt,
        scheduler=sched,
        grad_clip=cfg.rl.grad_clip,
        autocast=autocast,
        device=device,
        flops_per_step=flops_step,
        stage="baseline",
        logger=logger,
        on_step=on_step,
    )
    return model, {**stats, "flops": flops_step * steps, "steps": steps, "batch_size": batch}


def eval_stage(
    cfg: RunConfig, models: dict[str, Any], tokenizer, index: PositionIndex, device, autocast, out: Path
):
    """Summary figures, per-position outcomes and their buckets (see `nextrl.eval.heldout`)."""
    env = NextTokenEnv(cfg.env, tokenizer)
    return evaluate_models(cfg, models, tokenizer, env, index, device, autocast, out)


def run(cfg: RunConfig, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Run the whole main job into `out`; returns the summary (also written to summary.json)."""
    out = Path(out)
    t0 = time.time()
    check_foreign(out)
    preflight(cfg, out, resume)
    with RunLock(out):
        prepare_run_folder(out, cfg, resume)
        return _run(cfg, out, resume, t0)


def _run(cfg: RunConfig, out: Path, resume: bool, t0: float) -> dict[str, Any]:
    check_sources(cfg.data)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    autocast = autocast_dtype(cfg.model, device)
    logger = MetricsLogger(out)
    stage_seconds: dict[str, float] = {}
    try:
        done = _stages(cfg, out, resume, device, autocast, logger, stage_seconds)
    finally:
        logger.close()
    fields = _summary_fields(cfg, out, done, stage_seconds, wall_seconds=time.time() - t0)
    kept = out / "summary.invalid.json"  # written only when the figures do not fit the schema
    try:
        summary = RunSummary.from_dict(fields, kept)
    except SummaryError:  # keep a long run's figures all the same; the error names every bad key
        atomic_write_text(kept, json.dumps(fields, indent=2, default=str) + "\n")
        raise
    summary.write(out / "summary.json")
    write_report(out)
    return summary.model_dump(mode="json")


@dataclass
class _Stages:
    """What the stages of a run produced, for its summary."""

    base: BaseModel
    index: PositionIndex
    rl_summary: dict[str, Any]
    models: dict[str, Any]  # base, baseline (when enabled), rl
    baseline_stats: dict[str, Any]
    evaluation: dict[str, Any]
    outcomes: Any
    buckets: Any


@contextmanager
def _timed(seconds: dict[str, float], stage: str):
    t = time.time()
    yield
    seconds[stage] = time.time() - t


def _stages(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    device,
    autocast,
    logger: MetricsLogger,
    seconds: dict[str, float],
) -> _Stages:
    """Pretrain (or load) the base model, select positions, RL, the FLOP-matched baseline, evaluation; each
    stage's seconds into `seconds`, each trained model saved under out/models."""
    with _timed(seconds, "pretrain"):
        base = prepare_base(cfg, logger)
        check_context(cfg, base.model)
        base.model.to(device)
    if cfg.warmup.tokens:
        with _timed(seconds, "warmup"):
            ids = shown_thought_ids(cfg.env, base.tokenizer)
            tag, every = warmup_key(cfg, ids, len(base.tokenizer)), cfg.warmup.checkpoint_every
            kept = StageCheckpoints(out / "warmup" / "checkpoints", tag, every, resume)
            base = warm_up(cfg, base, ids, device, autocast, logger, kept)
    with _timed(seconds, "selection"):
        index = select_stage(cfg, base, out, device, autocast)
    with _timed(seconds, "rl"):
        policy, rl_summary = rl_stage(cfg, base, index, out, device, autocast, logger, resume)
        save_model(policy, base.tokenizer, out / "models" / "rl")
    with _timed(seconds, "baseline"):
        models = {"base": base.model, "rl": policy}
        baseline_stats: dict[str, Any] = {}
        if cfg.baseline.enabled:
            baseline, baseline_stats = baseline_stage(
                cfg, base, index, out, device, autocast, logger, rl_summary["flops_total"], resume
            )
            save_model(baseline, base.tokenizer, out / "models" / "baseline")
            models = {"base": base.model, "baseline": baseline, "rl": policy}
    with _timed(seconds, "eval"):
        evaluation, outcomes, buckets = eval_stage(cfg, models, base.tokenizer, index, device, autocast, out)
    return _Stages(base, index, rl_summary, models, baseline_stats, evaluation, outcomes, buckets)


def _summary_fields(
    cfg: RunConfig, out: Path, done: _Stages, stage_seconds: dict[str, float], wall_seconds: float
) -> dict[str, Any]:
    """The run's summary.json, before its schema checks it."""
    base, rl_summary, baseline_stats = done.base, done.rl_summary, done.baseline_stats
    flops_rl = rl_summary["flops_total"]
    return {
        "nextrl_version": __version__,
        "preset": cfg.preset,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run_dir": str(out),
        "models": list(done.models),
        **done.evaluation,
        "flops": {
            "pretrain": base.info.get("flops", 0.0),
            "warmup": base.info.get("warmup_flops"),
            "rl": flops_rl,
            "baseline": baseline_stats.get("flops", 0.0),
            "rl_breakdown": rl_summary["flops"],
        },
        "wall_seconds": wall_seconds,
        "stage_seconds": stage_seconds,
        "steps": {
            "pretrain": base.info.get("steps", 0),
            "warmup": base.info.get("warmup_steps"),
            "rl": rl_summary["steps"],
            "baseline": baseline_stats.get("steps", 0),
        },
        "tokens_per_second": {
            "pretrain": base.info.get("tokens_per_second", 0.0),
            "warmup": base.info.get("warmup_tokens_per_second"),
            "rl": _rl_tokens_per_second(out),
            "baseline": baseline_stats.get("tokens_per_second", 0.0),
        },
        "selection": {**done.index.stats(), "curriculum": cfg.curriculum.model_dump(), **_pool(rl_summary)},
        # the schema's RLRunSummary names the keys of the trainer's summary that summary.json keeps
        "rl_summary": {k: rl_summary[k] for k in RLRunSummary.model_fields if k in rl_summary},
        "base_model": {k: v for k, v in base.info.items() if isinstance(v, str | int | float | bool)},
        "config": cfg.model_dump(mode="json"),
        "verdict": _flop_matched(
            verdict(done.outcomes, done.buckets, seed=cfg.seed), flops_rl, baseline_stats
        )
        if "baseline" in done.models
        else None,
        "control": control_check(done.outcomes, done.buckets, seed=cfg.seed),
    }


def _flop_matched(v: dict[str, Any], flops_rl: float, baseline: dict[str, Any]) -> dict[str, Any]:
    """The verdict says so when the baseline could not be given the RL run's FLOPs (within 25%): one sequence
    of the baseline already costs more than the whole RL stage."""
    ratio = baseline.get("flops", 0.0) / max(flops_rl, 1e-9)
    v["flop_matched"] = bool(0.75 <= ratio <= 1.25)
    if not v["flop_matched"]:
        v["text"] = (
            f"Not FLOP-matched: the baseline used x{ratio:.2f} of the RL run's FLOPs (its smallest step costs "
            f"more than the RL stage), so this comparison is not the intended one. " + v["text"]
        )
    return v


POOL_KEYS = ("active", "active_units", "active_by_bucket", "retired", "retired_by_reason", "visits")


def _pool(rl_summary: dict[str, Any]) -> dict[str, Any]:
    """Retirement and visit counts of the curriculum's position pool (absent without a curriculum), and what
    any other task source counts (problems given, a mixture's sources and shares) under `rl_task_source`."""
    counts = rl_summary.get("positions") or {}
    pool: dict[str, Any] = {f"rl_positions_{k}": v for k, v in counts.items() if k in POOL_KEYS}
    rest = {k: v for k, v in counts.items() if k not in POOL_KEYS}
    if rest:
        pool["rl_task_source"] = rest
    return pool


def _rl_tokens_per_second(out: Path) -> float:
    """Mean of the logged per-step RL throughput (prompt + generated + trained tokens per second)."""
    vals = []
    path = out / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("stage") == "rl" and "tokens_per_second" in row:
                vals.append(row["tokens_per_second"])
    return float(np.mean(vals)) if vals else 0.0


__all__ = ["RunFolderError", "run", "summary_table"]
