"""Peak resident memory per learner rank, unsharded and with FSDP2 over 1, 2 and 4 ranks, beside the planner's
prediction (`nextrl.plan.cost.memory`, whose learner term is `learner_state_bytes`, the trainer's rule).

    python bench/fsdp_memory.py                      # a random Gemma 3 270M-shaped model, ranks 1 2 4
    python bench/fsdp_memory.py --ranks 1 2 --steps 2

Each configuration is its own `torchrun --standalone` launch on CPU (gloo). A rank builds the model whole
(random weights, as the trainer's ranks receive the policy whole), shards it with `nextrl.model.fsdp`
(`placement.shard=fsdp`; `none` keeps it whole), then takes `--steps` AdamW steps the way the learner does:
its share of the micro-batches (idle passes where it has fewer), the loss read as base model then head,
clipping, the step, and the gather of the whole weights that feeds the rollout side (`stream_full_weights`; the
ranks only take part, none keeps the copy). Per rank: resident memory after imports, after the build, after
sharding, and the peak during training (VmHWM, reset after sharding via /proc/self/clear_refs) — the peak over
the whole process includes the build. Rank 0 of a run additionally holds the driver's rollout-side copy
(4 B/param in fp32), not counted here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GiB = 2**30


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def gemma3_270m_shape():
    """Gemma 3 270M's text shape (hidden 640, 18 layers, 4 heads of 256, 1 KV head, MLP 2048, vocab 262144,
    tied), random weights."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=262_144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32_768,
        sliding_window=512, tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    return Gemma3ForCausalLM(config)


def model_shape():
    from nextrl.plan.profiles import ModelShape

    return ModelShape("gemma3-270m-shape", hidden=640, layers=18, heads=4, kv_heads=1, head_dim=256,
                      intermediate=2048, vocab=262_144, tied=True)  # fmt: skip


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from nextrl.model.fsdp import (
        base_forward,
        idle_pass,
        local_state_numel,
        padded_share,
        shard_policy,
        stream_full_weights,
    )
    from nextrl.model.optim import build_optimizer, clip_grad

    torch.set_num_threads(1)
    rss = {"imports": status_kib("VmRSS")}
    sharded = args.shard == "fsdp"
    rank, world = 0, 1
    if sharded:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = gemma3_270m_shape().train()
    params = sum(p.numel() for p in model.parameters())
    rss["built"] = status_kib("VmRSS")
    if sharded:
        shard_policy(model, None)
    optimizer = build_optimizer(model, 1e-4, 0.1)
    rss["sharded"] = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: training, not the build
    torch.manual_seed(1)
    vocab = model.config.vocab_size
    chunks = [torch.randint(0, vocab, (args.batch, args.seq)) for _ in range(args.micro_batches)]
    for _ in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        for ids in padded_share(chunks, rank, world):
            if ids is None:
                idle_pass(model, 0)
                continue
            hidden = base_forward(model)(input_ids=ids).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
            (loss / len(chunks)).backward()
        clip_grad(model.parameters(), 1.0)
        optimizer.step()
        if sharded:
            stream_full_weights(model, None)
    rss["training_peak"] = status_kib("VmHWM")
    rss["process_peak"] = max(rss["training_peak"], rss["built"])  # VmHWM was reset; the build's RSS stands
    out = {"rank": rank, "world": world, "params": params, "local_numel": local_state_numel(model)}
    out.update({f"{k}_kib": v for k, v in rss.items()})
    Path(args.out).with_suffix(f".{rank}.json").write_text(json.dumps(out))
    if sharded:
        dist.destroy_process_group()


def launch(shard: str, ranks: int, args, folder: Path) -> list[dict]:
    out = folder / f"{shard}-{ranks}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    me = [str(Path(__file__).resolve()), "--worker", "--shard", shard, "--out", str(out)]
    me += ["--steps", str(args.steps), "--micro-batches", str(args.micro_batches)]
    me += ["--batch", str(args.batch), "--seq", str(args.seq)]
    if shard == "fsdp":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            *me,
        ]
    else:
        cmd = [sys.executable, *me]
    subprocess.run(cmd, check=True, env=env)
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{shard}-{ranks}.*.json"))]


def planner_bytes(shard: str, ranks: int, args) -> tuple[float, float]:
    """The planner's learner memory per rank: its rule in fp32 as this bench trains (the largest unit's
    weights, gradients and reduce-scatter buffer at 12 B/param), and `memory()`'s learner figure (a GPU run:
    bf16 units at 8 B/param, plus the activations of one micro-batch)."""
    from nextrl.plan.cost import Workload, learner_state_bytes, memory
    from nextrl.plan.profiles import Hardware

    m = model_shape()
    w = Workload(context=args.seq, thought=0, answer=0, micro_batch=args.batch, recompute=False, shard=shard)
    hw = Hardware("cpu", 1.0, 1.0, memory_bytes=1e12, gpus_per_node=1)
    fp32 = learner_state_bytes(m.params, ranks, shard, m.largest_unit_params, unit_bytes_per_param=12.0)
    return fp32, memory(m, w, hw, ranks).learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--shard", default="fsdp")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    print(f"model: random Gemma 3 270M shape, {model_shape().params / 1e6:.1f}M params (planner's count)")
    print(
        f"{args.steps} steps of {args.micro_batches} micro-batches of {args.batch} x {args.seq} tokens, fp32, CPU"
    )
    print()
    print("| shard | ranks | rank | after imports | after build (whole) | after sharding | training peak | "
          "16 B x params held | planner rule, fp32 | planner memory() (GPU, bf16) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("none", 1)] + [("fsdp", n) for n in args.ranks]
        for shard, ranks in runs:
            plan_fp32, plan_gpu = planner_bytes(shard, ranks, args)
            for r in launch(shard, ranks, args, Path(tmp)):
                cells = [r[f"{k}_kib"] * 1024 / GiB for k in ("imports", "built", "sharded", "training_peak")]
                held = 16 * r["local_numel"] / GiB
                print(f"| {shard} | {ranks} | {r['rank']} | " + " | ".join(f"{c:.2f}" for c in cells)
                      + f" | {held:.2f} | {plan_fp32 / GiB:.2f} | {plan_gpu / GiB:.2f} |", flush=True)  # fmt: skip
    print("\n(GiB; resident memory per process, Linux VmRSS / VmHWM)")


if __name__ == "__main__":
    main()
