"""Time the main job end to end and append the figures to docs/benchmarks-history.md.

    python bench/main_job.py                      # default preset, cold cache (pretraining included)
    python bench/main_job.py --preset micro --warm

Every figure written is read from the run's own summary.json or measured here around the run.
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

import torch

from nextrl.config import load_config
from nextrl.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--warm", action="store_true", help="reuse the user's base-model cache instead of a cold one"
    )
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to the history")
    args = ap.parse_args()

    cfg = load_config(args.preset, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.warm:
            os.environ["NEXTRL_CACHE"] = str(Path(tmp) / "cache")
        t0 = time.time()
        summary = run(cfg, Path(tmp) / "run")
        wall = time.time() - t0
    cmd = "python bench/main_job.py " + " ".join(sys.argv[1:])
    v = summary.get("verdict", {})
    rl = summary.get("rl_summary", {})
    lines = [
        f"### main job, preset `{args.preset}` ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, cache {'warm' if args.warm else 'cold'}",
        f"- wall time: **{wall:.0f} s** ({wall / 60:.1f} min); stages: "
        + ", ".join(f"{k} {s:.0f} s" for k, s in summary["stage_seconds"].items()),
        "- steps: " + ", ".join(f"{k} {s}" for k, s in summary["steps"].items()),
        "- tokens/s: " + ", ".join(f"{k} {s:.0f}" for k, s in summary["tokens_per_second"].items()),
        f"- FLOPs: rl {summary['flops']['rl']:.3g}, baseline {summary['flops']['baseline']:.3g}, "
        f"pretrain {summary['flops']['pretrain']:.3g}",
        f"- accuracy (all buckets, {summary['eval_counts']['all']} held-out positions): "
        + "; ".join(
            f"{m} standard {a['standard']['all']:.1%} / with thought {a['with_thought']['all']:.1%}"
            for m, a in summary["accuracy"].items()
        ),
        "- information gain of the model's own thought (nats/position, ± s.e.): "
        + "; ".join(
            f"{m} {g['mean']:+.3f} ± {g['stderr']:.3f}"
            for m, g in summary.get("information_gain", {}).items()
        ),
        f"- RL: reward `{rl.get('reward')}`, advantages {rl.get('advantages')}, loss on {rl.get('loss_tokens')} "
        f"tokens, empty-thought samples {rl.get('empty_thought_samples')}, lm_coef {rl.get('lm_coef')}, "
        f"groups kept/drawn {rl.get('groups_kept')}/{rl.get('groups_drawn')}, signal fraction "
        f"{rl.get('signal_fraction', 0):.2f}, reward first/last "
        f"{rl.get('reward_first', 0):.3f} / {rl.get('reward_last', 0):.3f}, training MFU "
        f"{rl.get('mfu_training', 0):.1%}, generation MFU {rl.get('mfu_rollout', 0):.1%}",
        "- perplexity: " + ", ".join(f"{m} {p:.2f}" for m, p in summary.get("perplexity", {}).items()),
        f"- verdict: {v.get('text', 'n/a')}",
        "",
        *bucket_table(summary),
    ]
    if summary.get("control"):
        c = summary["control"]
        lines += [
            f"- positive control {'PASSED' if c['passed'] else 'FAILED'}: RL with thought on "
            f"{c['n']} '{c['bucket']}' positions {c['rl_with_thought']:.1%}; "
            + "; ".join(
                f"vs {k.removeprefix('vs_')} ({c[k]['mode']}) {c[k]['diff']:+.1%} "
                f"[{c[k]['ci_low']:+.1%}, {c[k]['ci_high']:+.1%}], McNemar p = {c[k]['p_value']:.2g}"
                for k in ("vs_base", "vs_baseline")
                if k in c
            ),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks-history.md"
        if not path.exists():
            path.write_text(
                "# Benchmarks\n\nEvery figure here was printed by the script named in its command line.\n\n"
            )
        with path.open("a") as f:
            f.write(text + "\n")
    json.dump({"wall_seconds": wall, **{k: summary[k] for k in ("stage_seconds", "steps")}}, sys.stderr)


def bucket_table(summary: dict) -> list[str]:
    """Accuracy (± s.e.) per model, mode and bucket, thought length, and with-thought minus standard (paired)."""
    counts = summary["eval_counts"]
    buckets = [b for b in ("easy", "medium", "hard", "computed", "all") if b in counts]
    head = "| model | mode | " + " | ".join(f"{b} (n={counts[b]})" for b in buckets) + " |"
    rows = [head, "|---|---|" + "---|" * len(buckets)]
    for m, modes in summary["accuracy"].items():
        for md, acc in modes.items():
            se = summary.get("accuracy_stderr", {}).get(m, {}).get(md, {})
            cells = [f"{acc[b]:.1%} ± {se.get(b, 0):.1%}" for b in buckets]
            rows.append(f"| {m} | {md} | " + " | ".join(cells) + " |")
        tl, tv = (
            summary.get("thought_length", {}).get(m, {}),
            summary.get("thought_vs_standard", {}).get(m, {}),
        )
        cells = [
            f"{tl.get(b, 0):.1f} tok, {tv[b]['diff']:+.1%} (p={tv[b]['p_value']:.2g})" if b in tv else "-"
            for b in buckets
        ]
        rows.append(f"| {m} | thought length, with − standard | " + " | ".join(cells) + " |")
    return [*rows, ""]


if __name__ == "__main__":
    main()
