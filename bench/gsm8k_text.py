"""GSM8K's worked answers as a plain-text corpus for `nextrl run` (natural English with calculations in it):
each line of the output is {"text": question + newline + answer}, the calculator's <<48/2=24>> notes removed
(they would give each result away), the same text bench/format_costs.py --data gsm8k reads.

    python bench/gsm8k_text.py --out /tmp/gsm8k_text.jsonl --documents 2000
    nextrl run --preset gemma-cpu --set 'data.sources=[{kind: jsonl, path: /tmp/gsm8k_text.jsonl}]' --out runs/gsm8k

Needs ../shared/data/gsm8k.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import format_costs  # noqa: E402  (the bench scripts' readers)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--documents", type=int, default=None, help="the first N problems (default: all)")
    args = p.parse_args(argv)
    docs = format_costs.documents("gsm8k" if args.split == "train" else "gsm8k-test")[: args.documents]
    with open(args.out, "w") as f:
        for text in docs:
            f.write(json.dumps({"text": text}) + "\n")
    print(f"{len(docs)} documents -> {args.out}")


if __name__ == "__main__":
    main()
