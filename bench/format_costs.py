"""What the thought formats nextrl ships cost a pretrained base model before any RL, through nextrl's own code
paths (issue 23, items 2 and 4): `NextTokenEnv` with `env.format=structured` and `env.format=aside`, the
evaluation's engine, with-thought protocol and information gain (`nextrl.eval`).

At random positions of natural text (C4 from ../shared/data, or the Python documentation's prose with `--data
pydoc`), each position's context is its document prefix up to `--context` tokens (after `<bos>`), and for each
format:

- empty: the cost of an empty thought, log p(x | context) − log p(x | after an empty thought), in nats
  (structured: `context <think></think>`; aside: the bare context, so 0 by construction);
- sampled: the information gain of the base model's own thought sampled at temperature 1 (negative: a cost),
  its mean length and the share of thoughts closed at once;
- greedy: standard (bare-context greedy) and with-thought (greedy thought, then greedy answer) accuracy, paired
  (McNemar's exact p), and the information gain of that greedy thought.

Means are over positions with their standard errors (positions of one document share a prefix and are not
fully independent). `<think>`/`</think>` are the tokens nextrl adds to the tokenizer (new embedding rows), as a
user of `env.format=structured` on this model gets them.

With `--mix-weight w ...` the aside format is also measured with its answer read from the mixture
w p(. | context ( thought )) + (1 − w) p(. | context) (`env.mix_weight`), on the same thoughts, once per weight.

    python bench/format_costs.py --data c4 --positions 128
    python bench/format_costs.py --data c4 --positions 128 --per-doc 16 --formats aside --mix-weight 0.03 0.1 0.3

With `--data gsm8k --at results` the positions are the results of GSM8K's worked answers (the first digit after
an "=", the calculator notes removed): natural text where a thought could compute what comes next.

    python bench/format_costs.py --data gsm8k --at results --positions 128 --formats aside --thought-tokens 32 --mix-weight 0.1
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

from nextrl.config import load_config
from nextrl.engine import build_engine
from nextrl.engine.base import Rollout
from nextrl.env import NextTokenEnv
from nextrl.eval.accuracy import mixed_answers, standard_correct, thought_rollouts
from nextrl.eval.info_gain import gains_of_thoughts, information_gain_nats
from nextrl.eval.stats import compare
from nextrl.model.pretrain import prepare_base

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def documents(name: str) -> list[str]:
    if name == "c4":
        path = DATA / "c4_sample" / "c4_en_first1000.jsonl"
        if not path.is_file():
            sys.exit(f"--data c4: {path} is missing (use --data pydoc, which every Python has)")
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    if name == "pydoc":
        from pydoc_data.topics import topics

        return [topics[k] for k in sorted(topics)]
    if name in ("gsm8k", "gsm8k-test"):
        path = DATA / "gsm8k" / ("test.jsonl" if name == "gsm8k-test" else "train.jsonl")
        if not path.is_file():
            sys.exit(f"--data {name}: {path} is missing")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # question and worked answer as plain text: the calculator's <<48/2=24>> notes would give the result away
        return [r["question"] + "\n" + re.sub(r"<<[^>]*>>", "", r["answer"]) for r in rows]
    sys.exit(f"--data: unknown {name!r} (c4, pydoc, gsm8k, gsm8k-test)")


def positions(tok, docs: list[str], args) -> list[tuple[str, list[int], int]]:
    """(doc id, tokens, position): with `--at results`, the results of the text's calculations; otherwise
    `--per-doc` random positions in [--skip, --context) of random documents, so
    one document's positions share their whole prompt prefix (the engine encodes it once)."""
    rng = random.Random(args.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    out = []
    for d in order:
        if args.at == "results":
            out += result_positions(tok, d, docs[d], args)
            if len(out) >= args.positions:
                return out[: args.positions]
            continue
        ids = tok(docs[d], add_special_tokens=False)["input_ids"]
        hi = min(len(ids), args.context)
        if hi - args.skip < args.per_doc:
            continue
        out += [(f"doc{d}", ids, p) for p in sorted(rng.sample(range(args.skip, hi), args.per_doc))]
        if len(out) >= args.positions:
            return out[: args.positions]
    sys.exit(f"--positions {args.positions}: the text has too few documents")


def result_positions(tok, d: int, text: str, args) -> list[tuple[str, list[int], int]]:
    """`--at results`: the first digit of every number written right after an "=" ("= 24", "= $10"), the
    results of the text's own calculations, within the first --context tokens."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, starts = enc["input_ids"], [a for a, _ in enc["offset_mapping"]]
    out = []
    for m in re.finditer(r"= ?\$?(\d)", text):
        at = m.start(1)
        p = next((i for i, a in enumerate(starts) if a >= at), None)
        if p is not None and args.skip <= p < args.context and starts[p] == at:
            out.append((f"doc{d}", ids, p))
    return out


def empty_rollout(env, task) -> Rollout:
    """The format's empty thought for `task`, as the producer's empty samples have it (answer left out)."""
    fmt = env.thought_format
    if fmt.name == "aside":  # no thought: the bare context, an empty thought phase
        return Rollout(list(task.meta["context_ids"]), [], [], [], "stop", phase_starts=[0, 0])
    return Rollout(list(task.prompt_ids), [fmt.close], [0.0], [1], "stop", phase_starts=[0, 1])


def nats(values: list[float]) -> dict[str, float]:
    r = information_gain_nats(values, [0.0] * len(values))
    return {"mean": r["mean"], "stderr": r["stderr"], "n": r["n"]}


def measure(model, tok, cfg, fmt_name: str, picks, args) -> dict:
    env = NextTokenEnv(cfg.env.model_copy(update={"format": fmt_name}), tok)
    fmt = env.thought_format
    tasks = [env.make_task(d, ids, p, args.context) for d, ids, p in picks]
    engine = build_engine(
        cfg.sampling.model_copy(update={"engine": "torch"}), cfg.sharing, model, tok.pad_token_id, None,
        seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    pad, t0 = tok.pad_token_id, time.time()
    out: dict = {"format": fmt_name}
    empty = gains_of_thoughts(model, pad, env, tasks, [empty_rollout(env, t) for t in tasks], None)
    out["empty_thought_cost"] = nats([-g for g in empty])
    # the base model's own thoughts at temperature 1 (only the thought phase: the answer is teacher-forced)
    params = env.sampling_params(1, 1.0, 1.0)
    params = fmt.thought_params(tasks, params.__class__(**{**params.__dict__, "phases": params.phases[:1]}))
    sampled = [g[0] for g in engine.generate([t.prompt_ids for t in tasks], params)]
    closed = [fmt.closed_thought(r)[0] for r in sampled]
    out["sampled_thought"] = {
        "info_gain": nats(gains_of_thoughts(model, pad, env, tasks, sampled, None)),
        "tokens": sum(len(c) for c in closed) / len(closed),
        "closed_at_once": sum(not c for c in closed) / len(closed),
        "examples": [tok.decode(c) for c in closed[:6]],
    }
    std = standard_correct(env, engine, tasks)
    wt, greedy = thought_rollouts(env, engine, tasks, 0.0)
    out["accuracy"] = {
        "standard": sum(std) / len(std),
        "with_thought": sum(wt) / len(wt),
        "paired": compare(wt, std),
        "greedy_info_gain": nats(gains_of_thoughts(model, pad, env, tasks, greedy, None)),
    }
    if fmt_name == "aside":
        out["mixed"] = [mixed(model, tok, cfg, w, tasks, sampled, greedy, std, args) for w in args.mix_weight]
    out["seconds"] = time.time() - t0
    return out


def mixed(model, tok, cfg, weight: float, tasks, sampled, greedy, std, args) -> dict:
    """The aside format with `env.mix_weight=weight`, on the same thoughts as the unmixed rows (the thought
    phase does not depend on the weight): the answer read from the mixture with the bare context's."""
    env = NextTokenEnv(cfg.env.model_copy(update={"format": "aside", "mix_weight": weight}), tok)
    pad = tok.pad_token_id
    empty = gains_of_thoughts(model, pad, env, tasks, [empty_rollout(env, t) for t in tasks], None)
    wt, answered = mixed_answers(model, pad, env, tasks, greedy, None, 0.0, seed=args.seed)
    return {
        "mix_weight": weight,
        "empty_thought_cost": nats([-g for g in empty]),
        "sampled_info_gain": nats(gains_of_thoughts(model, pad, env, tasks, sampled, None)),
        "standard": sum(std) / len(std),
        "with_thought": sum(wt) / len(wt),
        "paired": compare(wt, std),
        "greedy_info_gain": nats(gains_of_thoughts(model, pad, env, tasks, answered, None)),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="c4", help="c4 (../shared/data) or pydoc")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--formats", nargs="+", default=["structured", "aside"])
    p.add_argument("--positions", type=int, default=128)
    p.add_argument("--per-doc", type=int, default=8)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--skip", type=int, default=32, help="first position (tokens of context at least)")
    p.add_argument(
        "--at",
        choices=["random", "results"],
        default="random",
        help="random positions, or the results of the text's calculations (the first digit after an '=')",
    )
    p.add_argument("--thought-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mix-weight",
        type=float,
        nargs="*",
        default=[],
        help="aside format: also read the answer from the mixture with the bare context's at these weights "
        "(env.mix_weight), on the same thoughts",
    )
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = load_config(
        "gemma-cpu",
        [
            f"model.path={args.model}",
            f"env.thought_tokens={args.thought_tokens}",
            f"selection.context={args.context}",
            "env.mix_weight=null",  # the formats' own rows unmixed (gemma-cpu mixes); --mix-weight adds mixed ones
        ],
    )
    base = prepare_base(cfg)
    model, tok = base.model.eval(), base.tokenizer
    picks = positions(tok, documents(args.data), args)
    result = {
        "command": "python bench/format_costs.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "positions": len(picks),
        "documents": len({d for d, _, _ in picks}),
        "formats": [],
    }
    with torch.no_grad():
        for name in args.formats:
            r = measure(model, tok, cfg, name, picks, args)
            result["formats"].append(r)
            print(json.dumps(r, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(result))


def table(result: dict) -> str:
    rows = [
        "| format | empty thought costs (nats) | own sampled thought: info gain (nats) | tokens | closed at once "
        "| standard acc | with-thought acc (greedy) | McNemar p | greedy thought: info gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["formats"]:
        e, s, a = r["empty_thought_cost"], r["sampled_thought"], r["accuracy"]
        rows.append(
            f"| {r['format']} | {e['mean']:.3f} ± {e['stderr']:.3f} | {s['info_gain']['mean']:.2f} ± "
            f"{s['info_gain']['stderr']:.2f} | {s['tokens']:.1f} | {100 * s['closed_at_once']:.0f}% | "
            f"{100 * a['standard']:.1f}% | {100 * a['with_thought']:.1f}% | {a['paired']['p_value']:.2g} | "
            f"{a['greedy_info_gain']['mean']:.2f} ± {a['greedy_info_gain']['stderr']:.2f} |"
        )
    mixes = [(r, m) for r in result["formats"] for m in r.get("mixed", [])]
    if mixes:
        rows += [
            "",
            "| aside, env.mix_weight | empty thought costs (nats) | own sampled thought: info gain (nats) "
            "| standard acc | with-thought acc (greedy) | McNemar p | greedy thought: info gain |",
            "|---|---|---|---|---|---|---|",
        ]
    for _, m in mixes:
        e, s, g = m["empty_thought_cost"], m["sampled_info_gain"], m["greedy_info_gain"]
        rows.append(
            f"| {m['mix_weight']:g} | {e['mean']:.3f} ± {e['stderr']:.3f} | {s['mean']:.3f} ± {s['stderr']:.3f} "
            f"| {100 * m['standard']:.1f}% | {100 * m['with_thought']:.1f}% | {m['paired']['p_value']:.2g} "
            f"| {g['mean']:.3f} ± {g['stderr']:.3f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
