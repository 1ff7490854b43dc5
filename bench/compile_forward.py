"""Is `torch.compile` worth it here? The default (tiny) model's forward, eager against compiled (inductor), on one
fixed shape: compile seconds, then seconds per call of each. An RL step's shapes change every step (prefix trees
of new positions, branches of new lengths), so a compiled path pays its compile for every new shape bucket;
this prints the break-even number of calls.

    python bench/compile_forward.py [--batch 8] [--length 600] [--backward] [--no-write]
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
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    model = prepare_base(load_config("tiny")).model
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


if __name__ == "__main__":
    main()
