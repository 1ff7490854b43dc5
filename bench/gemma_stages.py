"""Every stage of the main job on a real model, timed on its own: seconds and MFU (model FLOPs over the measured
fp32 matmul peak) of position selection, the RL step's stages, the baseline's next-token step and evaluation.

    python bench/gemma_stages.py --model gemma-3-270m
    python bench/gemma_stages.py --model gemma-3-270m --steps 1 --eval-positions 8 --no-write

The workload is the issue's (22): the `qwen-gpu` preset on this CPU in fp32 with context 256, the structured
format, a thought of up to 16 tokens, G = 4 plus one empty-thought sample, 8 positions per step (4 per
document stripe), reward prefix match + 0.1 x information gain, next-token term 1.0 (`--set key=value` changes
any of it). Documents come from the built-in corpus, positions are seeded uniform ones (`bench/rl_step.py`'s
`build_index`), so selection plays no part in what the RL step sees.

- selection: `score_document` on `--select-docs` documents of 512 tokens; its FLOPs are the least the stage
  needs, the same whatever the code does: the body over every window token, the vocabulary head only at the
  positions scored (so a head run over every token shows as a lower MFU).
- RL step: `RLTrainer.step()`, one warm-up step then `--steps` timed; per stage `time/<stage>_s` and
  `flops/<stage>` as the trainer logs them (`bench/stage_times.py`'s table).
- baseline: one next-token step (`nextrl.model.lm.lm_loss`, AdamW) on `--lm-batch` x 256 tokens: forward,
  backward, optimizer.
- evaluation: what `nextrl.eval.heldout.evaluate_models` runs per position (standard prediction, thought then
  answer, information gain of the thought), FLOPs from the engine's work counts; perplexity apart, per token.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nextrl.accounting.flops import FlopModel, TokenWork  # noqa: E402
from nextrl.accounting.peak import matmul_peak  # noqa: E402
from nextrl.config import load_config  # noqa: E402
from nextrl.engine import build_engine  # noqa: E402
from nextrl.env import NextTokenEnv  # noqa: E402
from nextrl.eval.accuracy import standard_correct, thought_rollouts  # noqa: E402
from nextrl.eval.info_gain import gains_of_thoughts  # noqa: E402
from nextrl.eval.perplexity import perplexity  # noqa: E402
from nextrl.model.build import autocast_dtype  # noqa: E402
from nextrl.model.lm import lm_loss  # noqa: E402
from nextrl.model.pretrain import prepare_base  # noqa: E402
from nextrl.pipeline import build_rl_trainer  # noqa: E402
from nextrl.positions.index import score_document  # noqa: E402
from publish import publish  # noqa: E402  (bench/publish.py)
from rl_step import build_index  # noqa: E402
from stage_times import stage_table  # noqa: E402

WORKLOAD = [
    "device=cpu",
    "model.dtype=float32",
    "selection.context=256",
    "env.format=structured",
    "env.thought_tokens=16",
    "sampling.group_size=4",
    "sampling.temperature=1.0",
    "rl.empty_thought_samples=1",
    "positions.per_step=8",
    "positions.per_prefix=4",
    "rl.micro_batch_size=8",
    "rl.lm_coef=1.0",
    "reward=prefix_match+0.1*info_gain",
]


CPU_SECONDS: dict[float, float] = {}  # wall seconds of a `timed` call -> the process's CPU seconds in it


def timed(fn):
    """(fn(), wall seconds); the CPU seconds of the call are kept for `row` (on a shared machine the wall
    time counts the cores other jobs took; the CPU time does not)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    dt = time.perf_counter() - t0
    CPU_SECONDS[dt] = time.process_time() - c0
    return out, dt


def row(
    stage: str, seconds: float, flops: float, peak: float, per: str = "", cpu: float | None = None
) -> str:
    mfu = f"{flops / seconds / peak:.1%}" if flops and seconds > 0 else "–"
    cpu = CPU_SECONDS.get(seconds) if cpu is None else cpu
    line = f"| {stage} | {seconds:.2f} | {'' if cpu is None else f'{cpu:.2f}'} | {per} | {mfu} |"
    print(line, flush=True)
    return line


def selection_rows(model, docs: list[np.ndarray], context: int, fm: FlopModel, peak: float) -> list[str]:
    """score_document per document; FLOPs: every window token through the body, the head at scored rows."""
    seconds, cpu, flops = 0.0, 0.0, 0.0
    half = context // 2
    for tokens in docs:
        ent, dt = timed(lambda t=tokens: score_document(model, t, context, 16, None, torch.device("cpu")))
        seconds += dt
        cpu += CPU_SECONDS[dt]
        n = len(tokens)
        starts = list(range(0, max(n - context, 0) + 1, half))
        if starts[-1] + context < n:
            starts.append(n - context)
        work = TokenWork()
        for _ in starts:
            work.add_sequence(min(context, n))
        work.logits = int(np.isfinite(ent).sum())
        flops += fm.forward_work(work)
    per = f"{seconds / len(docs):.2f} s / document of {len(docs[0])} tokens"
    return [row("selection", seconds, flops, peak, per, cpu)]


def lm_rows(model, tokens: torch.Tensor, fm: FlopModel, peak: float) -> list[str]:
    """One baseline next-token step: forward, backward, AdamW (after one untimed step)."""
    opt = torch.optim.AdamW(
        model.parameters(), lr=0.0
    )  # timed, not trained: the RL step gets the model as loaded
    times = {}
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        loss, times["forward"] = timed(lambda: lm_loss(model, tokens, None, None))
        _, times["backward"] = timed(loss.backward)
        _, times["optimizer"] = timed(opt.step)
    opt.zero_grad(set_to_none=True)
    del opt
    work = TokenWork()
    for _ in range(len(tokens)):
        work.add_sequence(tokens.size(1) - 1, logits=tokens.size(1) - 1)
    f = fm.forward_work(work)
    size = f"{len(tokens)} x {tokens.size(1) - 1} tokens"
    return [
        row("baseline lm forward", times["forward"], f, peak, size),
        row("baseline lm backward", times["backward"], 2 * f, peak),
        row("baseline optimizer", times["optimizer"], 0, peak),
        row(
            "baseline step", sum(times.values()), 3 * f, peak, "", sum(CPU_SECONDS[t] for t in times.values())
        ),
    ]


def eval_rows(cfg, model, tokenizer, index, fm: FlopModel, peak: float, positions: int) -> list[str]:
    env = NextTokenEnv(cfg.env, tokenizer)  # as `nextrl.pipeline.eval_stage` builds it
    rows = list(range(len(index.position)))[:positions]
    tasks = index.tasks(env.make_task, rows, cfg.selection.context)
    engine = build_engine(
        cfg.sampling.model_copy(update={"engine": "torch"}),
        cfg.sharing,
        model,
        tokenizer.pad_token_id,
        None,
        seed=cfg.seed,
        batch_size=cfg.eval.batch_size,
    )

    def work_flops() -> float:
        return sum(fm.forward_work(w) for w in getattr(engine, "last_work", {}).values())

    out = []
    _, dt = timed(lambda: standard_correct(env, engine, tasks))
    std_f = work_flops()
    (ok, rollouts), dt2 = timed(lambda: thought_rollouts(env, engine, tasks, cfg.eval.thought_temperature))
    wt_f = work_flops()
    pad = tokenizer.pad_token_id
    _, dt3 = timed(
        lambda: gains_of_thoughts(model, pad, env, tasks, rollouts, None, cfg.sharing.max_tree_nodes)
    )
    n = len(tasks)
    out.append(row("eval: standard", dt, std_f, peak, f"{dt / n:.3f} s / position"))
    out.append(row("eval: thought + answer", dt2, wt_f, peak, f"{dt2 / n:.3f} s / position"))
    out.append(row("eval: information gain", dt3, 0, peak, f"{dt3 / n:.3f} s / position"))
    total = dt + dt2 + dt3
    cpu = sum(CPU_SECONDS[t] for t in (dt, dt2, dt3))
    out.append(row("eval (all three)", total, 0, peak, f"{total / n:.3f} s / position, {n} positions", cpu))
    docs = [index.doc_tokens[d] for d in dict.fromkeys(index.doc_id)]
    tokens = 4 * cfg.selection.context
    _, dtp = timed(lambda: perplexity(model, docs, cfg.selection.context, tokens, None))
    w = TokenWork()
    for _ in range(tokens // cfg.selection.context):
        w.add_sequence(cfg.selection.context, logits=cfg.selection.context)
    out.append(row("eval: perplexity", dtp, fm.forward_work(w), peak, f"{tokens} tokens"))
    return out


def train_stages(cfg, model, tok, index, fm: FlopModel, peak: float, args, steps: list[dict]) -> list[str]:
    """Selection, the baseline's step and the RL steps (their metrics appended to `steps`)."""
    context = cfg.selection.context
    docs = list(index.doc_tokens.values())
    model.eval()
    lines = selection_rows(model, [d[:512] for d in docs[: args.select_docs]], context, fm, peak)
    model.train()
    lm_tokens = torch.from_numpy(np.stack([d[: context + 1] for d in docs[: args.lm_batch]]))
    lines += lm_rows(model, lm_tokens, fm, peak)
    cpu = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_rl_trainer(cfg, model, tok, index, Path(tmp), torch.device("cpu"), None)
        for k in range(args.steps + 1):
            m, dt = timed(trainer.step)
            print(f"RL step {k}: {m['step_seconds']:.1f} s", flush=True)
            if k:
                steps.append(m)
                cpu.append(CPU_SECONDS[dt])
        del trainer
    samples = cfg.positions.per_step * (cfg.sampling.group_size + cfg.rl.empty_thought_samples)
    step_s = float(np.mean([m["step_seconds"] for m in steps]))
    step_f = float(np.mean([m["flops/step"] for m in steps]))
    lines.append(row("RL step", step_s, step_f, peak, f"{samples} samples", float(np.mean(cpu))))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="model.path: a packaged name, .gguf or HF folder")
    ap.add_argument("--preset", default="qwen-gpu")
    ap.add_argument("--set", action="append", default=[], help="more config overrides, key=value")
    ap.add_argument("--steps", type=int, default=2, help="timed RL steps (after one warm-up)")
    ap.add_argument("--select-docs", type=int, default=2)
    ap.add_argument("--lm-batch", type=int, default=4)
    ap.add_argument("--eval-positions", type=int, default=16)
    ap.add_argument("--eval-only", action="store_true", help="only the model load and the evaluation")
    ap.add_argument("--label", default="", help="a note for the table's title (e.g. which code)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cfg = load_config(
        args.preset, [*WORKLOAD, f"model.path={args.model}", f"rl.steps={args.steps + 1}", *args.set]
    )
    torch.manual_seed(cfg.seed)
    peak = matmul_peak(torch.device("cpu"), torch.float32, remeasure=True)
    base, load_s = timed(lambda: prepare_base(cfg))
    model, tok = base.model, base.tokenizer
    if autocast_dtype(cfg.model, torch.device("cpu")) is not None:
        raise SystemExit("this benchmark runs fp32 (model.dtype=float32)")
    fm = FlopModel.from_model(model)
    context = cfg.selection.context
    per_prefix = cfg.positions.per_prefix
    n_units = cfg.positions.per_step // per_prefix * (args.steps + 1) + args.eval_positions // per_prefix + 1
    index = build_index(tok, context, n_units, per_prefix, seed=context)
    lines = [row("model load", load_s, 0, peak, str(cfg.model.path))]
    steps: list[dict] = []
    if not args.eval_only:
        lines += train_stages(cfg, model, tok, index, fm, peak, args, steps)
    model.eval()
    eval_lines = eval_rows(cfg, model, tok, index, fm, peak, args.eval_positions)
    samples = cfg.positions.per_step * (cfg.sampling.group_size + cfg.rl.empty_thought_samples)
    step_s = float(np.mean([m["step_seconds"] for m in steps])) if steps else float("nan")
    out = [
        f"### Per stage on {cfg.model.path} {args.label} ({time.strftime('%Y-%m-%d')})".replace("  ", " "),
        "",
        f"- command: `python bench/gemma_stages.py {' '.join(sys.argv[1:])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (measured; the load average "
        f"was {os.getloadavg()[0]:.1f} at the end: other jobs shared the cores)",
        f"- workload: {cfg.env.format} format, context {context}, thought <= {cfg.env.thought_tokens}, G = "
        f"{cfg.sampling.group_size} + {cfg.rl.empty_thought_samples} empty-thought, {cfg.positions.per_step} "
        f"positions per step ({samples} samples), reward {cfg.reward.spec}, lm_coef {cfg.rl.lm_coef}; "
        f"{len(steps)} timed RL steps after 1 warm-up, {step_s:.1f} s per step",
        "",
        "| stage | wall s | CPU s (2 threads) | per | MFU (wall) |",
        "|---|---|---|---|---|",
        *lines,
        *eval_lines,
        "",
        *(["RL step by stage (`time/<stage>_s`, means over the timed steps):", ""] if steps else []),
        *(stage_table(steps, peak) if steps else []),
    ]
    publish(out, write=not args.no_write)


if __name__ == "__main__":
    main()
