"""The vocabulary head on Gemma-shaped sizes: the plain head (full logits, log_softmax, gather, autograd) vs
`nextrl.model.head.picked_logprobs` (vocabulary chunks, the logits recomputed in backward or held), forward + backward,
and selection's top-k entropy (full logits vs row chunks). Seconds (best of `--repeats`, the variants
interleaved so that a busy neighbour slows both), MFU of the model FLOPs (2·rows·H·V forward, twice that
backward) against the measured fp32 matmul peak, and the peak extra memory the head allocates.

    python bench/head_chunks.py                           # hidden 640, vocab 262144, rows 64 256 1024
    python bench/head_chunks.py --rows 64 256 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from nextrl.accounting.peak import matmul_peak
from nextrl.model.head import picked_logprobs, topk_entropy, topk_entropy_of_hidden

sys.path.insert(0, str(Path(__file__).resolve().parent))
from publish import publish  # noqa: E402  (bench/publish.py, beside this script)


def plain_loss(h, w, tgt, temperature):
    logp = torch.log_softmax((h @ w.T) / temperature, dim=-1)
    return logp.gather(-1, tgt[:, None]).squeeze(-1).sum()


def chunked_loss(h, w, tgt, temperature, chunk, keep):
    return picked_logprobs(
        h, w, tgt, temperature, chunk=chunk or None, keep_bytes=1 << 62 if keep else 0
    ).sum()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def train_case(loss_fn, h, w, tgt):
    def run():
        hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
        loss_fn(hh, ww, tgt).backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 65536])
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    peak = matmul_peak(torch.device("cpu"), torch.float32, remeasure=True)
    w = torch.randn(args.vocab, args.hidden) * 0.02
    lines = [
        f"### The vocabulary head on Gemma-shaped sizes ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `python bench/head_chunks.py {' '.join(sys.argv[1:])}`".replace(" `", " `").rstrip(),
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, fp32 matmul "
        f"peak {peak / 1e9:.0f} GFLOP/s; hidden {args.hidden}, vocab {args.vocab}, temperature "
        f"{args.temperature}; best of {args.repeats}",
        "",
        "| rows | what | variant | seconds | MFU |",
        "|---|---|---|---|---|",
    ]
    for rows in args.rows:
        h = torch.randn(rows, args.hidden)
        tgt = torch.randint(0, args.vocab, (rows,))
        T = args.temperature
        cases = {"plain (full logits)": train_case(lambda a, b, t, T=T: plain_loss(a, b, t, T), h, w, tgt)}
        for c in args.chunks:
            for keep in (False, True):
                cases[f"chunks of {c or 'auto'}, {'logits held' if keep else 'recomputed'}"] = train_case(
                    lambda a, b, t, c=c, k=keep, T=T: chunked_loss(a, b, t, T, c, k), h, w, tgt
                )
        best = {k: float("inf") for k in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                best[name] = min(best[name], timed(fn))
        flops = 3 * 2 * rows * args.hidden * args.vocab  # forward + backward (grad hidden, grad weight)
        for name, sec in best.items():
            lines.append(f"| {rows} | log-prob fwd+bwd | {name} | {sec:.3f} | {flops / sec / peak:.0%} |")
        ent = {
            "full logits": lambda h=h: topk_entropy(h @ w.T, 16),
            "row chunks 128": lambda h=h: topk_entropy_of_hidden(h, w, 16, chunk=128),
        }
        best = {k: float("inf") for k in ent}
        for _ in range(args.repeats):
            for name, fn in ent.items():
                best[name] = min(best[name], timed(fn))
        for name, sec in best.items():
            lines.append(f"| {rows} | top-16 entropy | {name} | {sec:.3f} | {flops / 3 / sec / peak:.0%} |")
        print("\n".join(lines[-len(cases) - len(ent) :]), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    lines += ["", f"(peak resident memory of the whole benchmark {rss:.1f} GB)"]
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
