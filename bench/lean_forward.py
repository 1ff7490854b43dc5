"""The lean forward against the Hugging Face module on a random Gemma-3-270M-shaped model (issue 22's real model:
hidden 640, 18 layers of which every sixth is global and the others slide over 512 tokens, 4 query heads on 1
key/value head of 256, MLP 2048, vocabulary 262,144, tied head). Random weights: the shapes set the time, and
no download is needed.

Two stages of the prefix-sharing sampler, each timed on both forwards with the same inputs and masks:
- prefill: `--prefill` tokens (one prompt) into an empty cache, the tree mask of a chain;
- decode: `--width` new tokens per iteration (the samples of that prompt, one cache row) for 16 iterations
  after the prefill, each seeing the prompt and its own earlier tokens; the median iteration.
The module runs as the sampler's `decode="hf"` path does: a `DynamicCache`, a 4D bool mask per layer type (the
sliding one windowed). The largest difference in the hidden states is printed with the times.

Each stage is timed twice: wall seconds, and the CPU seconds of the calling thread. With one intra-op thread
(`--threads 1`, the default) all the compute runs on that thread, so its CPU time is what the stage costs
whatever else the machine runs (the wall time of a shared machine is not); the best of the rounds is kept.

    python bench/lean_forward.py [--prefill 256] [--width 8] [--repeats 3] [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig

from nextrl.engine.lean_forward import SLIDING, LeanForward
from nextrl.sharing.branch_attention import window_mask
from publish import publish  # bench/publish.py, beside this script


def gemma3_270m_shaped() -> Gemma3ForCausalLM:
    """gemma-3-270m's config.json shapes, random weights."""
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=512,
        layer_types=[SLIDING if (i + 1) % 6 else "full_attention" for i in range(18)],
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        max_position_embeddings=32_768,
    )
    cfg._attn_implementation = "sdpa"
    return Gemma3ForCausalLM(cfg).eval()


def module_forward(model):
    """The module as the sampler's Hugging Face path drives it: one mask per layer type."""
    window = model.config.sliding_window

    def forward(ids, pos, mask, cache, k_pos):
        masks = {"full_attention": mask, SLIDING: window_mask(mask, pos, k_pos, window)}
        return model.model(
            input_ids=ids, position_ids=pos, attention_mask=masks, past_key_values=cache, use_cache=True
        ).last_hidden_state

    return forward


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since t0."""
    t1 = clock()
    return t1[0] - t0[0], t1[1] - t0[1]


def run(forward, new_cache, P: int, W: int, steps: int, seed: int = 0):
    """Prefill P tokens, then `steps` iterations of W new tokens: ((wall, CPU) seconds of the prefill, the
    median (wall, CPU) seconds of an iteration, hidden states of the prefill and of the last iteration)."""
    g = torch.Generator().manual_seed(seed)
    V = 262_144
    prompt = torch.randint(0, V, (1, P), generator=g)
    pos = torch.arange(P)[None]
    cache = new_cache()
    with torch.no_grad():
        t = clock()
        first = forward(prompt, pos, torch.ones(P, P, dtype=torch.bool).tril()[None, None], cache, pos)
        prefill = since(t)
        k_pos, times = pos, []
        for k in range(steps):
            L = k_pos.shape[1]
            mask = torch.zeros(1, 1, W, L + W, dtype=torch.bool)
            mask[..., :P] = True  # the prompt
            for j in range(k):  # each sample's own earlier tokens: column P + j * W + sample
                mask[0, 0, torch.arange(W), P + j * W + torch.arange(W)] = True
            mask[..., L:] = torch.eye(W, dtype=torch.bool)
            step_pos = torch.full((1, W), P + k)
            k_pos = torch.cat([k_pos, step_pos], dim=1)
            ids = torch.randint(0, V, (1, W), generator=g)
            t = clock()
            last = forward(ids, step_pos, mask, cache, k_pos)
            times.append(since(t))
    wall, cpu = zip(*times, strict=True)
    return prefill, (statistics.median(wall), statistics.median(cpu)), first, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument(
        "--width", type=int, default=8, help="new tokens per decode iteration (samples of the prompt)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model = gemma3_270m_shaped()
    lean = LeanForward(model)
    lean.refresh()
    P, W, steps = args.prefill, args.width, 16

    def lean_fwd(ids, pos, mask, cache, _k_pos):
        return lean(ids, pos, mask, cache, trunk=ids.shape[1] if cache.length == 0 else 0)

    paths = {"module": (module_forward(model), DynamicCache), "lean": (lean_fwd, lean.new_cache)}
    rounds: dict[str, list] = {name: [] for name in paths}
    states = {}
    for r in range(args.repeats + 1):  # the first round warms up
        for name, (fwd, new_cache) in paths.items():
            pre, dec, first, last = run(fwd, new_cache, P, W, steps)
            if r:
                rounds[name].append((pre, dec))
            states[name] = (first, last)
    err = max((a - b).abs().max().item() for a, b in zip(states["lean"], states["module"], strict=True))

    def best(name: str, stage: int, kind: int) -> float:
        return min(x[stage][kind] for x in rounds[name])

    def row(what: str, stage: int) -> str:
        m_cpu, l_cpu = best("module", stage, 1), best("lean", stage, 1)
        m_wall, l_wall = best("module", stage, 0), best("lean", stage, 0)
        return (
            f"| {what} | {m_cpu * 1e3:.1f} ms | {l_cpu * 1e3:.1f} ms | {m_cpu / l_cpu:.2f}x | "
            f"{m_wall * 1e3:.1f} / {l_wall * 1e3:.1f} ms |"
        )

    publish(
        [
            f"### Gemma 3 in the lean forward: a random Gemma-3-270M-shaped model ({time.strftime('%Y-%m-%d')})",
            "",
            f"- command: `python bench/lean_forward.py --prefill {P} --width {W} --repeats {args.repeats} "
            f"--threads {args.threads}`",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
            f"{torch.get_num_threads()}, fp32; gemma-3-270m's shapes (18 layers, 15 sliding over 512 and 3 "
            "global, vocabulary 262,144), random weights; best of "
            f"{args.repeats} after a warm-up round; load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after (a shared machine: CPU seconds of the calling thread are the figure)",
            "",
            "| stage | Hugging Face module (CPU) | lean forward (CPU) | speed-up | wall, module / lean |",
            "|---|---|---|---|---|",
            row(f"prefill, {P} tokens", 0),
            row(f"decode iteration, {W} tokens on a {P}-token prompt (median of {steps})", 1),
            "",
            f"- largest difference in the hidden states (prefill and last iteration): {err:.1e}",
        ],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
