"""One next-token RL workload, three ways in one process: TRL's GRPOTrainer, nextrl with prefix sharing off,
nextrl with prefix sharing on. Prints samples/s, FLOPs per sample, seconds per step and MFU, and appends the
figures with the exact command to docs/benchmarks-history.md.

    python bench/rl_step.py                            # contexts 256, 512 and 1024
    python bench/rl_step.py --contexts 512 --steps 2 --skip-trl --no-write

The workload is the same for all three: the default preset's pretrained base model (from the cache, pretrained
on first use), documents of the built-in corpus, `--positions` positions per step drawn `--per-prefix` at a time
from one document stripe (seeded uniform positions, so the selection rule plays no part), G samples each, a
thought of up to `--thought` tokens and one answer token, the RPT prefix-match reward, no next-token term and no
empty-thought samples (TRL has neither; `--main-job-terms` keeps the preset's reward, next-token term and
empty-thought samples, for nextrl's stage profile only). Every sample is trained (uniform groups are kept), as
TRL does. One warm-up step per framework is not timed. For nextrl with prefix sharing the report also gives the
seconds, share and MFU of every stage of the step (`bench/stage_times.py`'s table).

The analytic minimum FLOPs of a step is computed here from the tasks, independently of the trainer's counters:
each distinct prompt token once (the trie of the step's prompts), each generated token once in decoding, and the
loss forward + backward (3x) over the trie of prompt + completion without its last token (a target only). nextrl's reported FLOPs come from the
tokens its passes really processed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nextrl.accounting.flops import FlopModel, TokenWork
from nextrl.accounting.peak import matmul_peak
from nextrl.config import load_config
from nextrl.data import DocumentStream
from nextrl.env import NextTokenEnv
from nextrl.model.build import autocast_dtype
from nextrl.model.pretrain import prepare_base
from nextrl.pipeline import build_rl_trainer
from nextrl.positions.context import context_start
from nextrl.positions.index import PositionIndex
from nextrl.sharing.prefix_tree import build_tree
from publish import publish  # bench/publish.py, beside this script
from stage_times import stage_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def build_index(tokenizer, context: int, n_units: int, per_prefix: int, seed: int) -> PositionIndex:
    """`n_units` document stripes with `per_prefix` positions each, from documents long enough to give every
    position a full stripe of context (positions > context, so prompts hold context/2..context tokens)."""
    rng = np.random.default_rng(seed)
    cfg = load_config("tiny")
    index = PositionIndex(doc_tokens={}, doc_split={})
    half = max(1, context // 2)
    for doc in DocumentStream(cfg.data):
        if len(index.position) >= n_units * per_prefix:
            break
        ids = np.array(tokenizer(doc.text)["input_ids"][: 2 * context + 64], dtype=np.int64)
        if len(ids) < 2 * context + 16:
            continue
        # one stripe per document: positions whose prompts start at the same stride multiple
        lo = context + 1
        start = context_start(lo, context)
        stripe = [p for p in range(lo, len(ids) - 8) if context_start(p, context) == start][:half]
        if len(stripe) < per_prefix:
            continue
        index.doc_tokens[doc.doc_id], index.doc_split[doc.doc_id] = ids, "train"
        for p in sorted(rng.choice(stripe, per_prefix, replace=False).tolist()):
            index.doc_id.append(doc.doc_id)
            index.position.append(int(p))
            index.entropy.append(1.0)
            index.bucket.append("medium")
            index.split.append("train")
    if len(index.position) < n_units * per_prefix:
        raise SystemExit(f"the corpus has too few documents of {2 * context + 16}+ tokens for this workload")
    return index


def analytic_min_flops(fm: FlopModel, tasks, rollouts) -> float:
    """Prefix once + branches: the trie of the prompts (prefill), each generated token once (decode), and the
    loss forward + backward over the trie of prompt + completion."""
    prompts = [t.prompt_ids for t in tasks]
    prefill = TokenWork()
    t = build_tree(prompts)
    prefill.add(len(t), sum(t.depth) + len(t), logits=len({tuple(p) for p in prompts}))
    decode, loss = TokenWork(), TokenWork()
    flat = [r for g in rollouts for r in g]
    for r in flat:
        n = max(len(r.completion_ids) - 1, 0)
        decode.add_sequence(n, len(r.prompt_ids) + 1, logits=n)
    # a completion's last token is only a target: the inputs are prompt + completion[:-1]
    seqs = [r.prompt_ids + r.completion_ids[:-1] for r in flat]
    full = build_tree(seqs)
    # each distinct node that predicts a completion token is projected once
    predicting = {
        nodes[len(r.prompt_ids) + j - 1]
        for r, nodes in zip(flat, full.seq_nodes, strict=True)
        for j in range(len(r.completion_ids))
    }  # (identical completion prefixes share nodes here; nextrl's branches do not, so it may exceed this)
    loss.add(len(full), sum(full.depth) + len(full), logits=len(predicting))
    return fm.forward_work(prefill) + fm.forward_work(decode) + 3 * fm.forward_work(loss)


def positions_for(context: int, args) -> int:
    """Positions the RL configs declare: the preset's 1024, or prompt + thought + answer at context 1024 (the
    base model is pretrained at 1024; its rotary positions go on past that)."""
    return max(1024, context + args.thought + 8)


def run_nextrl(base, index, context, args, share: bool, out: Path) -> dict:
    overrides = [
        f"selection.context={context}",
        f"positions.per_step={args.positions}",
        f"positions.per_prefix={args.per_prefix}",
        f"sampling.group_size={args.group_size}",
        f"env.thought_tokens={args.thought}",
        "rl.drop_uniform_groups=false",
        f"rl.micro_batch_size={args.positions * args.group_size}",
        f"sampling.batch_size={args.positions * args.group_size}",
        f"sharing.enabled={str(share).lower()}",
        f"rl.steps={args.steps + 1}",
        f"model.max_position_embeddings={positions_for(context, args)}",
    ]
    if not args.main_job_terms:  # the workload TRL runs too
        overrides += ["reward=prefix_match", "rl.lm_coef=0", "rl.empty_thought_samples=0"]
    cfg = load_config("tiny", overrides)
    autocast = autocast_dtype(cfg.model)
    policy = base.model.__class__(base.model.config)
    policy.load_state_dict(base.model.state_dict())
    trainer = build_rl_trainer(cfg, policy, base.tokenizer, index, out, torch.device("cpu"), autocast)
    fm = FlopModel.from_model(policy)
    steps, minimum = [], []
    for k in range(args.steps + 1):
        m = trainer.step()
        if k == 0:
            continue  # warm-up
        tasks, rollouts = [g.task for g in trainer.last_groups], [g.rollouts for g in trainer.last_groups]
        steps.append(m)
        minimum.append(analytic_min_flops(fm, tasks, rollouts))
    seconds = [m["generation_seconds"] + m["training_seconds"] for m in steps]
    wall = [args.positions * args.group_size / m["samples_per_second"] for m in steps]
    samples = args.positions * args.group_size
    return {
        "seconds_per_step": float(np.mean(wall)),
        "generation_seconds": float(np.mean([m["generation_seconds"] for m in steps])),
        "training_seconds": float(np.mean([m["training_seconds"] for m in steps])),
        "samples_per_second": samples / float(np.mean(wall)),
        "flops_per_sample": float(np.mean([m["flops/per_sample"] for m in steps])),
        "min_flops_per_sample": float(np.mean(minimum)) / samples,
        "mfu_training": float(np.mean([m["mfu/training"] for m in steps])),
        "mfu_rollout": float(np.mean([m["mfu/rollout"] for m in steps])),
        "thought_len": float(np.mean([m["thought/len_mean"] for m in steps])),
        "busy_seconds": float(np.mean(seconds)),
        "steps": steps,
    }


def run_trl(base, index, context, args, out: Path) -> dict:
    from trl_grpo import run_trl_grpo

    cfg = load_config(
        "tiny",
        [
            f"selection.context={context}",
            f"env.thought_tokens={args.thought}",
            f"model.max_position_embeddings={positions_for(context, args)}",
        ],
    )
    env = NextTokenEnv(cfg.env, base.tokenizer)
    tasks = index.tasks(env.make_task, list(range(len(index.position))), context)
    res = run_trl_grpo(
        base.model,
        base.tokenizer,
        tasks,
        env,
        group_size=args.group_size,
        steps=args.steps,
        positions_per_step=args.positions,
        temperature=cfg.sampling.temperature,
        lr=cfg.rl.lr,
        bf16=cfg.model.dtype == "bfloat16",
        out_dir=out,
    )
    fm = FlopModel.from_model(base.model)
    # TRL prefills every sample's prompt and trains every sample's full sequence: the plain count
    plen = float(np.mean([len(t.prompt_ids) for t in tasks]))
    c = args.thought + 2
    # TRL's CPU loss projects every position to the vocabulary (its chunked head), generation only the last
    work = TokenWork()
    work.add_sequence(int(plen), logits=1)  # prefill
    gen = TokenWork()
    gen.add_sequence(c - 1, int(plen) + 1, logits=c - 1)
    loss = TokenWork()
    loss.add_sequence(int(plen) + c, logits=int(plen) + c)
    res["flops_per_sample"] = fm.forward_work(work) + fm.forward_work(gen) + 3 * fm.forward_work(loss)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per framework (after one warm-up)")
    ap.add_argument("--positions", type=int, default=16, help="positions per step")
    ap.add_argument("--per-prefix", type=int, default=8, help="positions per document stripe")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--thought", type=int, default=16)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-plain", action="store_true", help="leave out nextrl without prefix sharing")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to the history")
    ap.add_argument("--main-job-terms", action="store_true", help="nextrl with the tiny preset's reward, "
                    "next-token term and empty-thought samples (not TRL's workload: implies --skip-trl)")  # fmt: skip
    args = ap.parse_args()
    args.skip_trl = args.skip_trl or args.main_job_terms

    base = prepare_base(load_config("tiny"))
    dtype = (
        autocast_dtype(load_config("tiny").model, torch.device("cpu")) or torch.float32
    )  # the runs' own rule
    peak = matmul_peak(torch.device("cpu"), dtype, remeasure=True)  # measured again, the best rate kept
    results: dict[int, dict[str, dict]] = {}
    n_units = args.positions // args.per_prefix * (args.steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        for context in args.contexts:
            index = build_index(base.tokenizer, context, n_units, args.per_prefix, seed=context)
            r: dict[str, dict] = {}
            if not args.skip_trl:
                r["trl"] = run_trl(base, index, context, args, Path(tmp) / f"trl{context}")
            if not args.skip_plain:
                r["nextrl_plain"] = run_nextrl(base, index, context, args, False, Path(tmp) / f"p{context}")
            r["nextrl_shared"] = run_nextrl(base, index, context, args, True, Path(tmp) / f"s{context}")
            results[context] = r
            print(json.dumps({context: {k: {kk: vv for kk, vv in v.items() if kk != "steps"} for k, v in r.items()}},
                             indent=1, default=str))  # fmt: skip
    publish(report(results, args, peak, dtype), write=not args.no_write)


def report(results: dict[int, dict[str, dict]], args, peak: float, dtype: torch.dtype) -> list[str]:
    cmd = "python bench/rl_step.py " + " ".join(sys.argv[1:])
    out = [
        f"### RL step: TRL vs nextrl, prefix sharing off/on ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; measured {str(dtype).removeprefix('torch.')} matmul peak (the runs' dtype) "
        f"{peak / 1e9:.0f} GFLOP/s",
        f"- workload: default (tiny) model, {args.positions} positions/step ({args.per_prefix} per document "
        f"stripe), G = {args.group_size}, thought ≤ {args.thought} tokens + 1 answer token, "
        + (
            "the tiny preset's reward, next-token term and empty-thought samples, "
            if args.main_job_terms
            else "prefix-match reward, "
        )
        + f"{args.steps} timed steps after 1 warm-up",
        "",
        "| context | framework | s/step | samples/s | FLOPs/sample | min FLOPs/sample | train MFU | vs TRL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for context, r in results.items():
        trl = r.get("trl", {}).get("samples_per_second")
        for name, v in r.items():
            ratio = f"{v['samples_per_second'] / trl:.1f}x" if trl else "-"
            out.append(
                f"| {context} | {name} | {v['seconds_per_step']:.2f} | {v['samples_per_second']:.1f} | "
                f"{v['flops_per_sample']:.3g} | {v.get('min_flops_per_sample', float('nan')):.3g} | "
                f"{v.get('mfu_training', float('nan')):.1%} | {ratio} |"
            )
        s, p = r["nextrl_shared"], r.get("nextrl_plain")
        if p is None:
            continue
        out.append(
            f"| {context} | shared / plain | | {s['samples_per_second'] / p['samples_per_second']:.1f}x | "
            f"{s['flops_per_sample'] / p['flops_per_sample']:.2f}x | | | |"
        )
    for context, r in results.items():
        out += ["", f"nextrl with prefix sharing, context {context}, per stage:", ""]
        out += stage_table(r["nextrl_shared"]["steps"], peak)
    return out


if __name__ == "__main__":
    main()
