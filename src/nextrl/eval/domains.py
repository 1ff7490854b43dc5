"""Checkpoints on every configured domain: the table `nextrl eval` prints and `nextrl merge` ends with.

Each environment of the config (the one `env.name` names, or each of `env.mixture`) is a domain. Its problems
are its own task source (math, code: `env.options.path`), or, for the next-token environment, the held-out
positions of a run's index (`--run RUN_DIR`). Every model is scored with pass@k (`nextrl.eval.passk`) on the
same problems, through the same environment that trains on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nextrl.config.reward_spec import RewardSpec
from nextrl.engine import build_engine
from nextrl.env.base import Environment, Task
from nextrl.env.model_scored import MODEL_SCORED
from nextrl.env.registry import build_environment
from nextrl.errors import UsageError
from nextrl.eval.passk import evaluate_pass_at_k
from nextrl.positions.index import PositionIndex


class NothingToEvaluate(UsageError):
    """No domain of the config has problems, or the models have no tokenizer: `nextrl merge` then ends without
    its table (the merge stands), `nextrl eval` fails."""


class HeldoutPositions:
    """A task source over the first held-out positions of an index, in index order (no training state)."""

    def __init__(self, index: PositionIndex, env: Environment, context: int):
        self.index, self.env, self.context = index, env, context
        self.rows, self.cursor = index.rows("heldout"), 0

    def take(self, n: int, step: int) -> list[Task]:
        rows = self.rows[self.cursor : self.cursor + n]  # each held-out position once, then no more
        self.cursor += len(rows)
        return self.index.tasks(self.env.make_task, rows, self.context)

    def visit(self, task, rewards, signal, uncertainty) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"heldout": len(self.rows)}

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = state["cursor"]


@dataclass
class DomainTable:
    """pass@k of each model (rows) on each domain (columns); `skipped` says why a domain has no column."""

    ks: list[int]
    samples: int
    cells: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # model -> domain -> result
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(d for row in self.cells.values() for d in row))

    def render(self) -> str:
        """The table as text: one row per model, one column per domain and k (mean ± standard error)."""
        cols = [(d, k) for d in self.domains for k in self.ks]
        names = short_names(list(self.cells))
        width = max([len("model")] + [len(n) for n in names.values()])
        head = "model".ljust(width) + "".join(f"{d} pass@{k}".rjust(20) for d, k in cols)
        lines = [head]
        for model, row in self.cells.items():
            cells = ""
            for d, k in cols:
                r = row.get(d, {}).get(f"pass@{k}")
                cells += (f"{r['mean']:.1%} ± {r['stderr']:.1%}" if r else "–").rjust(20)
            lines.append(names[model].ljust(width) + cells)
        counts = {
            d: next(iter(r[d]["problems"] for r in self.cells.values() if d in r)) for d in self.domains
        }
        lines.append(
            "("
            + ", ".join(f"{d}: {n} problems" for d, n in counts.items())
            + f"; {self.samples} samples each)"
        )
        lines += [f"{d}: not evaluated, {why}" for d, why in self.skipped.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"ks": self.ks, "samples": self.samples, "cells": self.cells, "skipped": self.skipped}


def short_names(paths: list[str]) -> dict[str, str]:
    """The fewest trailing path parts that tell the paths apart: runs/a/models/rl -> models/rl."""
    parts = {p: Path(p).parts for p in paths}
    for n in range(1, max((len(x) for x in parts.values()), default=1) + 1):
        names = {p: "/".join(x[-n:]) for p, x in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    return {p: p for p in paths}


def without_model_scored(cfg):
    """`cfg` with the model-scored terms (info_gain, likelihood) left out of every reward spec: pass@k reads only
    a sample's correctness, and those terms would need a scoring model bound to the environment (and an fp32
    EMA copy of it) for a number nobody reads. A spec of model-scored terms only becomes `prefix_match`, the
    next-token environment's correctness (the only environment that has such terms)."""

    def strip(spec: str) -> str:
        kept = [(name, w) for name, w in RewardSpec.parse(spec).terms if name not in MODEL_SCORED]
        return str(RewardSpec(kept)) if kept else "prefix_match"

    by_env = {name: strip(spec) for name, spec in cfg.reward.by_env.items()}
    reward = cfg.reward.model_copy(update={"spec": strip(cfg.reward.spec), "by_env": by_env})
    return cfg.model_copy(update={"reward": reward})


def domain_sources(cfg, tokenizer, index: PositionIndex | None) -> tuple[dict[str, tuple], dict[str, str]]:
    """(name -> (environment, its task source, the source's starting state)) for each domain that has
    problems, and (name -> why) for each that has none. Each source is built once (a math source parses every
    gold answer) and rewound to its starting state for every model. The environments score without their
    model-scored reward terms (`without_model_scored`)."""
    cfg = without_model_scored(cfg)
    env = build_environment(cfg, tokenizer)
    envs = dict(env.envs) if hasattr(env, "envs") else {cfg.env.name: env}
    found, skipped = {}, {}
    for name, e in envs.items():
        source = e.task_source(cfg)
        if source is None and hasattr(e, "make_task") and index is not None:
            source = HeldoutPositions(index, e, cfg.selection.context)
        if source is None:
            skipped[name] = "no problems of its own: give --run RUN_DIR for its held-out positions"
        else:
            found[name] = (e, source, source.state_dict())
    return found, skipped


def check_ks(ks: Sequence[int], samples: int) -> None:
    if any(k < 1 or k > samples for k in ks):
        raise UsageError(f"every --k must be between 1 and --samples ({samples}): {list(ks)}")


def evaluate_domains(
    cfg,
    models: Sequence[tuple[str, Any]],
    tokenizer,
    index: PositionIndex | None,
    samples: int,
    ks: Sequence[int],
    problems: int,
    temperature: float = 0.8,
) -> DomainTable:
    """pass@k of each (name, model) on each domain of `cfg` (every model on the same problems)."""
    check_ks(ks, samples)
    found, skipped = domain_sources(cfg, tokenizer, index)
    if not found:
        raise NothingToEvaluate(
            "no configured domain has problems to evaluate: "
            + "; ".join(f"{d}: {why}" for d, why in skipped.items())
        )
    table = DomainTable(list(ks), samples, skipped=skipped)
    for name, model in models:
        model.eval()
        sampling = cfg.sampling.model_copy(update={"engine": "torch"})  # any checkpoint, loaded here
        engine = build_engine(sampling, cfg.sharing, model, tokenizer.pad_token_id, None, seed=cfg.seed)
        row = table.cells.setdefault(name, {})
        for domain, (env, source, start) in found.items():
            source.load_state_dict(start)  # every model on the same problems
            with torch.no_grad():
                row[domain] = evaluate_pass_at_k(env, engine, source, problems, samples, ks, temperature)
    return table


def load_checkpoints(paths: Sequence[Path]):
    """(name, model) of each Hugging Face folder, and the tokenizer of the first (all must share it)."""
    from nextrl.model.build import load_model
    from nextrl.model.tokenizer import load_tokenizer

    tok, out = None, []
    for path in paths:
        if not (Path(path) / "config.json").is_file():
            raise UsageError(f"{path} is not a Hugging Face model folder (no config.json)")
        if tok is None:
            try:
                tok = load_tokenizer(str(path), think_tokens=False)  # as the folder was saved
            except (OSError, ValueError) as e:
                raise NothingToEvaluate(f"{path}: no tokenizer to load ({e})") from None
        out.append((str(path), load_model(path, vocab_size=len(tok), key=f"model {path}")))
    return tok, out
