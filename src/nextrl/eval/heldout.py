"""The evaluation stage: every model on the same held-out positions, outcomes kept per position, paired tests.

For each model: the standard prediction (greedy next token from the bare context), the with-thought
prediction (greedy thought, then the answer; where the format mixes, `env.mix_weight`, the answer is the
argmax of the mixture of the after-thought and bare-context distributions) with its thought length, and, in a format whose answer directly
follows the thought (structured, aside), the information gain of that same thought; plus held-out perplexity. All generation and scoring goes through the
prefix-sharing paths (positions are sorted so the positions of one document stripe are adjacent and share
their prefix). Per-position outcomes are written to `eval/outcomes.parquet`, so any other comparison can be
made later without re-running the models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nextrl.engine import build_engine
from nextrl.eval.accuracy import (
    mixed_answers,
    per_bucket,
    standard_correct,
    thought_length,
    thought_rollouts,
)
from nextrl.eval.info_gain import gains_of_thoughts, information_gain_nats
from nextrl.eval.perplexity import perplexity
from nextrl.eval.stats import compare, power_note, stderr
from nextrl.model.tokenizer import document_prefix
from nextrl.positions.index import PositionIndex
from nextrl.utils.io import atomic_write_with
from nextrl.utils.progress import progress

MODES = ("standard", "with_thought")
CHUNK = 256  # positions per engine call: bounds the prefix trees held in memory at once


def eval_rows(index: PositionIndex, positions: int, seed: int) -> list[int]:
    """A seeded, bucket-balanced sample of held-out rows, sorted by (document, position) so that stripes are
    adjacent (they share their prefix in the engine).

    Each bucket gets an equal share of `positions` (a bucket with fewer rows gives its unused share to the
    others), so a rare bucket (`computed`, `easy`) is measured with as much power as a common one; 'all' is
    then the mean over this balanced sample, not over the population of positions."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for r in index.rows("heldout"):
        by.setdefault(index.bucket[r], []).append(r)
    pools = {b: [rows[i] for i in rng.permutation(len(rows))] for b, rows in sorted(by.items())}
    take = dict.fromkeys(pools, 0)
    left = positions
    while left > 0:
        open_ = [b for b in pools if take[b] < len(pools[b])]
        if not open_:
            break
        share = max(left // len(open_), 1)
        for b in open_:
            k = min(share, len(pools[b]) - take[b], left)
            take[b] += k
            left -= k
    rows = [r for b, pool in pools.items() for r in pool[: take[b]]]
    return sorted(rows, key=lambda r: (index.doc_id[r], index.position[r]))


def evaluate_models(
    cfg, models: dict[str, Any], tokenizer, env, index: PositionIndex, device, autocast, out: Path | None
) -> tuple[dict[str, Any], dict[str, dict[str, list[bool]]], list[str]]:
    """(summary figures, outcomes[model][mode] per position, bucket per position); the outcomes are also
    written to `out/eval/outcomes.parquet`."""
    rows = eval_rows(index, cfg.eval.positions, cfg.seed + 2)
    tasks = index.tasks(env.make_task, rows, cfg.selection.context)
    buckets = [t.meta["bucket"] for t in tasks]
    heldout_docs = [t for d, t in index.doc_tokens.items() if index.doc_split[d] == "heldout"]
    outcomes: dict[str, dict[str, list[bool]]] = {}
    lengths: dict[str, list[int]] = {}
    gains: dict[str, list[float]] = {}
    result: dict[str, Any] = {"perplexity": {}}
    fmt = getattr(env, "thought_format", None)
    teacher_forced = fmt is not None and fmt.teacher_forced
    bar = progress(total=len(models) * len(tasks), desc="eval", unit="pos")
    for name, model in models.items():
        bar.set_postfix(model=name)
        model.to(device)
        engine = (
            build_engine(  # nextrl's own engine for every model evaluated (vLLM serves training rollouts)
                cfg.sampling.model_copy(update={"engine": "torch"}),
                cfg.sharing,
                model,
                tokenizer.pad_token_id,
                autocast,
                seed=cfg.seed,
                batch_size=cfg.eval.batch_size,
            )
        )
        std, wt, ln, gn = [], [], [], []
        for s in range(0, len(tasks), CHUNK):
            chunk = tasks[s : s + CHUNK]
            std += standard_correct(env, engine, chunk)
            ok, rollouts = with_thought(cfg, model, tokenizer.pad_token_id, env, engine, chunk, autocast)
            wt += ok
            ln += [thought_length(r) for r in rollouts]
            if teacher_forced:  # nats per position that the model's own (greedy) thought buys
                gn += gains_of_thoughts(
                    model, tokenizer.pad_token_id, env, chunk, rollouts, autocast, cfg.sharing.max_tree_nodes
                )
            bar.update(len(chunk))
        outcomes[name] = {"standard": std, "with_thought": wt}
        lengths[name], gains[name] = ln, gn
        result["perplexity"][name] = perplexity(
            model,
            heldout_docs,
            cfg.selection.context,
            cfg.eval.perplexity_tokens,
            autocast,
            prefix_ids=document_prefix(tokenizer),
        )
    bar.close()
    result |= summarize(outcomes, buckets, lengths, gains)
    if out is not None:
        write_outcomes(out / "eval" / "outcomes.parquet", tasks, outcomes, lengths, gains)
    return result, outcomes, buckets


def with_thought(cfg, model, pad_id: int, env, engine, tasks, autocast):
    """The with-thought protocol on `tasks`: (whether each answer is right, the rollouts). Where the format
    mixes (`env.mix_weight`), the answer after the thought is read from the mixture with the bare context's."""
    ok, rollouts = thought_rollouts(env, engine, tasks, cfg.eval.thought_temperature)
    if getattr(env, "thought_format", None) is None or env.thought_format.mix_weight is None:
        return ok, rollouts
    return mixed_answers(
        model, pad_id, env, tasks, rollouts, autocast, cfg.eval.thought_temperature,
        cfg.sharing.max_tree_nodes, cfg.seed,
    )  # fmt: skip


def summarize(
    outcomes: dict[str, dict[str, list[bool]]],
    buckets: list[str],
    lengths: dict[str, list[int]],
    gains: dict[str, list[float]],
) -> dict[str, Any]:
    """Accuracy, its standard error and thought length per model, mode and bucket; information gain per model;
    and the paired comparison of each model's with-thought against its standard prediction per bucket."""
    counts: dict[str, int] = {"all": len(buckets)}
    for b in buckets:
        counts[b] = counts.get(b, 0) + 1
    names = sorted(set(buckets))
    acc, se, thinking = {}, {}, {}
    for m, modes in outcomes.items():
        acc[m] = {md: per_bucket(buckets, v) for md, v in modes.items()}
        se[m] = {md: {b: stderr(_select(v, buckets, b)) for b in ["all", *names]} for md, v in modes.items()}
        # paired, per bucket: does the model's thought help or hurt its own prediction?
        thinking[m] = {
            b: compare(_select(modes["with_thought"], buckets, b), _select(modes["standard"], buckets, b))
            for b in ["all", *names]
        }
    out: dict[str, Any] = {
        "accuracy": acc,
        "accuracy_stderr": se,
        "eval_counts": dict(sorted(counts.items())),
        "thought_length": {m: per_bucket(buckets, v) for m, v in lengths.items() if v},
        # a thought of one token is its close alone: the model skipped thinking there
        "empty_thoughts": {m: float(np.mean([n <= 1 for n in v])) for m, v in lengths.items() if v},
        "thought_vs_standard": thinking,
        "information_gain": {},
    }
    for m, g in gains.items():
        g = [x for x in g if not math.isnan(x)]
        if g:
            out["information_gain"][m] = information_gain_nats(g, [0.0] * len(g))
    return out


def _select(values, buckets, bucket: str) -> list:
    return (
        list(values) if bucket == "all" else [v for v, b in zip(values, buckets, strict=True) if b == bucket]
    )


def write_outcomes(path: Path, tasks, outcomes, lengths, gains) -> None:
    cols: dict[str, list] = {"model": [], "task_id": [], "bucket": [], "mode": [], "correct": []}
    extra: dict[str, list] = {"thought_length": [], "information_gain": []}
    for m, modes in outcomes.items():
        for md, vals in modes.items():
            for k, (t, v) in enumerate(zip(tasks, vals, strict=True)):
                cols["model"].append(m)
                cols["task_id"].append(t.task_id)
                cols["bucket"].append(t.meta["bucket"])
                cols["mode"].append(md)
                cols["correct"].append(bool(v))
                thinking = md == "with_thought"
                extra["thought_length"].append(lengths[m][k] if thinking and lengths.get(m) else None)
                extra["information_gain"].append(gains[m][k] if thinking and gains.get(m) else None)
    table = pa.table({**cols, **extra})
    atomic_write_with(path, lambda p: pq.write_table(table, p))


def best_mode(outcomes: dict[str, list[bool]], buckets: list[str], bucket: str) -> str:
    """The mode with the higher accuracy on `bucket` (standard on a tie)."""
    return max(
        MODES, key=lambda md: (np.mean(_select(outcomes[md], buckets, bucket) or [0.0]), md == "standard")
    )


def verdict(outcomes, buckets: list[str], bucket: str = "all", seed: int = 0) -> dict[str, Any]:
    """RL against the FLOP-matched baseline, each at its best mode on `bucket`, paired on the same positions
    (McNemar's exact test, paired-bootstrap 95% interval of the difference); also RL against the base. RL
    "beats" the baseline only when it is ahead and the test says p < 0.01."""
    sel = {m: {md: _select(v, buckets, bucket) for md, v in modes.items()} for m, modes in outcomes.items()}
    modes = {m: best_mode(outcomes[m], buckets, bucket) for m in outcomes}
    rl, bl = sel["rl"][modes["rl"]], sel["baseline"][modes["baseline"]]
    vs_baseline = compare(rl, bl, seed=seed)
    vs_base = compare(rl, sel["base"][modes["base"]], seed=seed)
    n = len(rl)
    acc = {m: float(np.mean(sel[m][modes[m]])) if n else math.nan for m in sel}
    significant = vs_baseline["p_value"] < 0.01
    beats = acc["rl"] > acc["baseline"] and significant  # a gap inside the noise is no win
    where = "all held-out positions" if bucket == "all" else f"the held-out '{bucket}' positions"
    text = (
        f"RL {'beat' if beats else 'did not beat'} the FLOP-matched baseline: RL {acc['rl']:.1%} "
        f"({modes['rl']}) vs baseline {acc['baseline']:.1%} ({modes['baseline']}) next-token accuracy on "
        f"{n} of {where} (base model {acc['base']:.1%}, {modes['base']}). Difference "
        f"{vs_baseline['diff']:+.1%} (95% interval {vs_baseline['ci_low']:+.1%} to {vs_baseline['ci_high']:+.1%}), "
        f"McNemar p = {vs_baseline['p_value']:.2g}: "
        + ("significant at p < 0.01." if significant else "not significant at p < 0.01.")
        + f" Power: {power_note(n, vs_baseline['detectable'])}."
    )
    return {
        "rl_beats_baseline": bool(beats),
        "significant": bool(significant),
        "metric": f"best mode, bucket '{bucket}'",
        "bucket": bucket,
        "n": n,
        "rl": acc["rl"],
        "rl_mode": modes["rl"],
        "baseline": acc["baseline"],
        "baseline_mode": modes["baseline"],
        "base": acc["base"],
        "base_mode": modes["base"],
        "diff": vs_baseline["diff"],
        "ci_low": vs_baseline["ci_low"],
        "ci_high": vs_baseline["ci_high"],
        "p_value": vs_baseline["p_value"],
        "test": "McNemar exact (paired), bootstrap 95% interval",
        "vs_base": vs_base,
        "text": text,
        "detectable": vs_baseline["detectable"],
    }


def control_check(
    outcomes, buckets: list[str], bucket: str = "computed", margin: float = 0.05, seed: int = 0
):
    """The positive control's pass rule: RL's with-thought accuracy on the `computed` positions is at least
    `margin` above the base model's with-thought accuracy and above the FLOP-matched baseline's best mode on
    the same positions, each significant under McNemar's exact test (p < 0.01). None without such positions."""
    if bucket not in buckets or "rl" not in outcomes:
        return None
    rl = _select(outcomes["rl"]["with_thought"], buckets, bucket)
    out: dict[str, Any] = {
        "bucket": bucket,
        "n": len(rl),
        "margin": margin,
        "rl_with_thought": float(np.mean(rl)),
    }
    passed = True
    for other, mode in (("base", "with_thought"), ("baseline", None)):
        if other not in outcomes:
            continue
        mode = mode or best_mode(outcomes[other], buckets, bucket)
        c = compare(rl, _select(outcomes[other][mode], buckets, bucket), seed=seed)
        ok = c["diff"] >= margin and c["p_value"] < 0.01
        out[f"vs_{other}"] = {"mode": mode, **c, "passed": bool(ok)}
        passed &= ok
    out["passed"] = bool(passed)
    return out
