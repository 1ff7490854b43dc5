"""Is `torch.compile` worth it here? The default (tiny) model's forward, eager against compiled (inductor), on one
fixed shape: compile seconds, then seconds per call of each. An RL step's shapes change every step (prefix trees
of new positions, branches of new lengths), so a compiled path pays its compile for every new shape bucket;
this prints the break-even number of calls.

`--decode` measures the sampler's decode instead: nextrl's lean forward (`engine/lean_forward.py`) over a
prefix of `--length` tokens in `--batch` cache rows, then 16 iterations of `--width` new tokens per row (the
cache grows each iteration, as in a real decode), eager against `torch.compile(dynamic=True)` of the same
forward (one graph for every cache length; the elementwise work of each layer fused around the cache write).

    python bench/compile_forward.py [--batch 8] [--length 600] [--backward] [--no-write]
    python bench/compile_forward.py --decode --batch 2 --length 512 --width 12
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

# a cold compile, as a run on a fresh machine pays it (inductor caches compiled graphs on disk across runs)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nextrl-inductor-"))

import torch  # noqa: E402

from nextrl.config import load_config  # noqa: E402
from nextrl.model.pretrain import prepare_base  # noqa: E402
from publish import publish  # noqa: E402  (bench/publish.py, beside this script)


def timed(fn, ids, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(ids)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=600)
    ap.add_argument("--backward", action="store_true", help="forward + backward of the mean logit (training)")
    ap.add_argument("--decode", action="store_true", help="a decode iteration of the lean forward instead")
    ap.add_argument("--width", type=int, default=12, help="--decode: new tokens per row and iteration")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    model = prepare_base(load_config("tiny")).model
    if args.decode:
        return decode(model, args)
    model.train(args.backward)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length))

    def step(x):  # returns its result: a compiled function whose output is unused is optimised away
        if args.backward:
            model.zero_grad(set_to_none=True)
            loss = model.model(input_ids=x).last_hidden_state.float().pow(2).mean()
            loss.backward()
            return loss.detach()
        with torch.no_grad():
            return model.model(input_ids=x).last_hidden_state

    for _ in range(2):
        step(ids)
    eager = timed(step, ids, args.repeats)
    compiled = torch.compile(step, dynamic=False)
    t = time.perf_counter()
    compiled(ids)
    compile_s = time.perf_counter() - t
    fast = timed(compiled, ids, args.repeats)
    saved = eager - fast
    what = "forward + backward" if args.backward else "forward"
    publish(
        [
            f"### torch.compile on the tiny model's {what} ({time.strftime('%Y-%m-%d')})",
            "",
            f"- command: `python bench/compile_forward.py --batch {args.batch} --length {args.length}"
            + (" --backward" if args.backward else "")
            + "`",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
            f"{torch.get_num_threads()}, fp32; shape [{args.batch}, {args.length}]",
            f"- eager {eager:.3f} s per call, compiled {fast:.3f} s ({eager / fast:.2f}x); compile {compile_s:.1f} s, "
            + (
                f"repaid after {compile_s / saved:.0f} calls of this one shape"
                if saved > 0
                else "never repaid (not faster)"
            ),
        ],
        write=not args.no_write,
    )


def decode(model, args) -> None:
    """Seconds per decode iteration of the lean forward, eager and compiled, on the same cache and tokens."""
    from nextrl.engine.lean_forward import LeanForward

    model.eval()
    lean = LeanForward(model)
    lean.refresh()
    R, P, W, V = args.batch, args.length, args.width, model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, V, (R, P), generator=g)
    steps = [torch.randint(0, V, (R, W), generator=g) for _ in range(16)]

    def run(fwd) -> tuple[list[float], torch.Tensor]:
        """Prefill, then 16 timed iterations; each new token sees the prefix, its own row's earlier new
        tokens and itself."""
        cache = lean.new_cache()
        with torch.no_grad():
            fwd(prompt, torch.arange(P).expand(R, P), torch.ones(P, P, dtype=torch.bool).tril().expand(R, 1, P, P),
                cache)  # fmt: skip
            times = []
            for k, ids in enumerate(steps):
                L = cache.length
                mask = torch.ones(R, 1, W, L + W, dtype=torch.bool)
                mask[..., L:] = torch.eye(W, dtype=torch.bool)
                t = time.perf_counter()
                h = fwd(ids, torch.full((R, W), P + k), mask, cache)
                times.append(time.perf_counter() - t)
        return times, h

    run(lean)
    eager = min(sorted(run(lean)[0])[8] for _ in range(args.repeats))  # median iteration, best of repeats
    compiled = torch.compile(lean.__call__, dynamic=True)
    t = time.perf_counter()
    first, h_compiled = run(compiled)
    compile_s = time.perf_counter() - t - sum(first[1:])
    fast = min(sorted(run(compiled)[0])[8] for _ in range(args.repeats))
    err = (h_compiled - run(lean)[1]).abs().max().item()
    saved = eager - fast
    publish(
        [
            f"### torch.compile on the lean decode forward ({time.strftime('%Y-%m-%d')})",
            "",
            f"- command: `python bench/compile_forward.py --decode --batch {R} --length {P} --width {W}`",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
            f"{torch.get_num_threads()}, fp32; {R} cache rows of a {P}-token prefix, {W} new tokens per row and "
            "iteration, 16 iterations",
            f"- eager {eager * 1e3:.2f} ms per iteration, compiled (dynamic shapes) {fast * 1e3:.2f} ms "
            f"({eager / fast:.2f}x); compile {compile_s:.1f} s, "
            + (
                f"repaid after {compile_s / saved:.0f} iterations"
                if saved > 0
                else "never repaid (not faster)"
            )
            + f"; largest difference in the hidden states {err:.1e}",
        ],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
