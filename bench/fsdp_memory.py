"""Peak resident memory per learner rank, unsharded and with FSDP2 over 1, 2 and 4 ranks, beside the planner's
prediction (`nextrl.plan.cost.memory`, whose learner term is `learner_state_bytes`, the trainer's rule).

    python bench/fsdp_memory.py                      # a random Llama of 264M params, ranks 1 2 4
    python bench/fsdp_memory.py --shape gemma3 --ranks 1 2   # Gemma 3 270M's shape (63% embedding)

Each configuration is its own `torchrun --standalone` launch on CPU (gloo). A rank builds the model whole
(random weights, as the trainer's ranks receive the policy whole), shards it with `nextrl.model.fsdp`
(`placement.shard=fsdp`; `none` keeps it whole), then takes `--steps` AdamW steps the way the learner does:
its share of the micro-batches (idle passes where it has fewer), the loss read as base model then head,
clipping, the step, and the gather of the whole weights that feeds the rollout side
(`stream_full_weights`; the ranks only take part, none keeps the copy). Per rank: resident memory after
imports, after the build, after sharding, and the peak during training (VmHWM, reset after sharding and at
every step via /proc/self/clear_refs; the build's peak is not in it). Rank 0 of a run additionally holds the
driver's rollout-side copy (4 B/param in fp32), not counted here.
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


def llama_264m():
    """A Llama of 264M params whose blocks hold most of them (18 x 12.8M; a 32000 x 1024 tied embedding),
    random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32_000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=18,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
        tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


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


def model_shape(shape: str):
    from nextrl.plan.profiles import ModelShape

    if shape == "llama":
        return ModelShape("llama-264m", hidden=1024, layers=18, heads=16, kv_heads=16, head_dim=64,
                          intermediate=2816, vocab=32_000, tied=True)  # fmt: skip
    return ModelShape("gemma3-270m-shape", hidden=640, layers=18, heads=4, kv_heads=1, head_dim=256,
                      intermediate=2048, vocab=262_144, tied=True)  # fmt: skip


BUILD = {"llama": llama_264m, "gemma3": gemma3_270m_shape}


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
    model = BUILD[args.shape]().train()
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
    step_peaks = []  # each step's own peak: a growth from step to step would be a leak
    for _ in range(args.steps):
        Path("/proc/self/clear_refs").write_text("5")
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
        step_peaks.append(status_kib("VmHWM"))
    rss["training_peak"] = max(step_peaks)
    rss["process_peak"] = max(rss["training_peak"], rss["built"])  # VmHWM was reset; the build's RSS stands
    out = {"rank": rank, "world": world, "params": params, "local_numel": local_state_numel(model)}
    out["step_peaks_gib"] = [round(k * 1024 / GiB, 2) for k in step_peaks]
    out.update({f"{k}_kib": v for k, v in rss.items()})
    Path(args.out).with_suffix(f".{rank}.json").write_text(json.dumps(out))
    if sharded:
        dist.destroy_process_group()


def launch(shard: str, ranks: int, args, folder: Path) -> list[dict]:
    out = folder / f"{shard}-{ranks}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    me = [str(Path(__file__).resolve()), "--worker", "--shard", shard, "--out", str(out)]
    me += ["--steps", str(args.steps), "--micro-batches", str(args.micro_batches)]
    me += ["--batch", str(args.batch), "--seq", str(args.seq), "--shape", args.shape]
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

    m = model_shape(args.shape)
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
    parser.add_argument("--shape", choices=sorted(BUILD), default="llama")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--shard", default="fsdp")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    m = model_shape(args.shape)
    print(f"model: {m.name}, random weights, {m.params / 1e6:.1f}M params (planner's count), largest unit "
          f"{m.largest_unit_params / 1e6:.1f}M; {args.steps} steps of {args.micro_batches} micro-batches of "
          f"{args.batch} x {args.seq} tokens, fp32, CPU\n")  # fmt: skip
    print(" | ".join(["| shard", "ranks", "rank", *COLUMNS]) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for shard, ranks in [("none", 1)] + [("fsdp", n) for n in args.ranks]:
            planned = planner_bytes(shard, ranks, args)
            for r in launch(shard, ranks, args, Path(tmp)):
                print(row(shard, ranks, r, planned), flush=True)
    print(
        f"\n(GiB; resident memory per process, Linux VmRSS / VmHWM; the model counts {r['params'] / 1e6:.1f}M)"
    )


COLUMNS = ["after imports", "after build (whole)", "after sharding", "training peak", "by step",
           "16 B x params held", "planner rule, fp32", "planner memory() (GPU, bf16)"]  # fmt: skip


def row(shard: str, ranks: int, r: dict, planned: tuple[float, float]) -> str:
    measured = [r[f"{k}_kib"] * 1024 / GiB for k in ("imports", "built", "sharded", "training_peak")]
    cells = [f"{c:.2f}" for c in measured] + [", ".join(f"{g:.2f}" for g in r["step_peaks_gib"])]
    cells += [f"{g:.2f}" for g in (16 * r["local_numel"] / GiB, planned[0] / GiB, planned[1] / GiB)]
    return f"| {shard} | {ranks} | {r['rank']} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
