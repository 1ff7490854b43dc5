"""What a thought costs a pretrained base model before any RL, for several thought formats (issue 23, item 2).

At random held-out positions of natural English text (at least `--min-context` tokens of left context, a
context window of `--context` tokens), the log-prob of the true next token and the greedy next-token accuracy
are read from the bare context (standard) and, for each format, after an empty thought (`open close`) and after
the model's own thought (up to `--thought-tokens` tokens sampled at temperature 1, or greedy with
`--greedy-thoughts`). The cost of a format is the paired mean of log p(true | bare) - log p(true | thought) in
nats; intervals are 95%, from standard errors clustered by text chunk (the positions of one chunk share a
prefill and are not independent).

Formats: new tokens with their embeddings initialised to the mean embedding (what `resize_token_embeddings`
does) or to "---" (Quiet-STaR); delimiters from the model's own vocabulary (no new tokens); every one of them
also under Quiet-STaR's mixing head (`nextrl.model.mixing_head`), at initialisation and after fitting the head
alone on `--train-positions` positions of training text (disjoint documents). "Exactly no thought when empty"
costs 0 by construction when the thought is empty; with a thought, it costs what its delimiters cost.

    python bench/thought_formats.py --data c4 --positions 512 --out /tmp/thought_formats.json
    python bench/thought_formats.py --data pydoc --positions 64 --train-positions 32   # any machine

Needs the Gemma 3 270M base model (`pip install -e '.[gemma]'`); other models via `--model` (tied embeddings).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nextrl.eval import thought_formats as tf
from nextrl.model.mixing_head import MixingHead, fit_mixing_head, mixed_log_probs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# name: (open, close) as text of the model's vocabulary, each one token; None: new tokens (rows given below)
VOCAB_DELIMITERS = {
    "unused": ("<unused0>", "<unused1>"),
    "turns": ("<start_of_turn>", "<end_of_turn>"),
    "newlines": ("\n", "\n"),
    "parens": (" (", ")"),
    "brackets": (" [", "]"),
    "em_dashes": (" —", " —"),
}


# ---------------------------------------------------------------- data


def load_documents(name: str, seed: int) -> tuple[list[str], list[str]]:
    """(train documents, held-out documents): disjoint. WikiText-2 trains on its valid split and holds out its
    test split; C4 and the Python docs are split 25/75 by a seeded shuffle of their documents."""
    if name == "wikitext2":
        return _wikitext_articles(DATA / "wikitext2" / "valid.txt"), _wikitext_articles(
            DATA / "wikitext2" / "test.txt"
        )
    if name == "c4":
        path = DATA / "c4_sample" / "c4_en_first1000.jsonl"
        if not path.is_file():
            sys.exit(f"--data c4: {path} is missing (use --data pydoc, which every Python has)")
        docs = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    elif name == "pydoc":
        from pydoc_data.topics import topics

        docs = [topics[k] for k in sorted(topics)]
    else:
        sys.exit(f"--data: unknown data set {name!r} (c4, wikitext2, pydoc)")
    random.Random(seed).shuffle(docs)
    n_train = len(docs) // 4
    return docs[:n_train], docs[n_train:]


def _wikitext_articles(path: Path) -> list[str]:
    if not path.is_file():
        sys.exit(f"--data wikitext2: {path} is missing (use --data pydoc, which every Python has)")
    articles, current = [], []
    for line in path.read_text().splitlines():
        if re.fullmatch(r" = [^=].* = ", line) and current:
            articles.append("\n".join(current))
            current = []
        current.append(line)
    articles.append("\n".join(current))
    return [a for a in articles if a.strip()]


@dataclass
class Chunk:
    ids: torch.Tensor  # [BOS] + up to `context` document tokens
    positions: list[int]  # t: predict ids[t] from ids[:t]


def sample_chunks(tok, docs, n_positions, args, seed) -> list[Chunk]:
    """`per_chunk` random positions in each of ceil(n / per_chunk) random chunks of `context` tokens."""
    bos = [tok.bos_token_id] if args.bos and tok.bos_token_id is not None else []
    first = len(bos) + args.min_context  # the first t with min_context document tokens before it
    spans = []
    for d, doc in enumerate(docs):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), args.context):
            n = min(args.context, len(ids) - s) + len(bos)  # chunk length; t ranges over [first, n)
            if n - first >= args.per_chunk:
                spans.append((d, s, ids[s : s + args.context]))
    rng = random.Random(seed)
    n_chunks = math.ceil(n_positions / args.per_chunk)
    if len(spans) < n_chunks:
        sys.exit(
            f"--positions {n_positions}: the text has only {len(spans)} chunks of {args.per_chunk} positions"
        )
    chunks = []
    for _, _, ids in rng.sample(spans, n_chunks):
        chunk = torch.tensor(bos + ids)
        chunks.append(Chunk(chunk, sorted(rng.sample(range(first, len(chunk)), args.per_chunk))))
    return chunks


# ---------------------------------------------------------------- formats


def build_formats(model, tok, names: list[str]) -> tf.FormatBatch:
    vocab = model.get_input_embeddings().num_embeddings
    dashes = tok("---", add_special_tokens=False)["input_ids"]
    known = {
        "new_mean": lambda: tf.new_token_format("new_mean", vocab, *[tf.mean_embedding(model)] * 2),
        "new_dashes": lambda: tf.new_token_format("new_dashes", vocab, *[tf.embedding_of(model, dashes)] * 2),
    }
    for name, (o, c) in VOCAB_DELIMITERS.items():
        known[name] = lambda name=name, o=o, c=c: tf.DelimiterFormat(
            name, _one_token(tok, o), _one_token(tok, c)
        )
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"--formats: unknown {unknown}; known: {sorted(known)}")
    return tf.FormatBatch([known[n]() for n in names], vocab, model.config.hidden_size)


def _one_token(tok, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        sys.exit(f"delimiter {text!r} is {len(ids)} tokens for this tokenizer; formats need single tokens")
    return ids[0]


# ---------------------------------------------------------------- measurement


def measure(model, fb, chunks, args, n_thought, heads=None, log_every=8) -> dict:
    """Per position and format: the true token's log-prob and greedy hit, bare / empty / thought (and mixed
    under each head in `heads`), and the hidden states a mixing head reads."""
    gen = torch.Generator().manual_seed(args.seed)
    n_fmt, vocab = len(fb.formats), fb.vocab_size
    rec: dict[str, list] = {k: [] for k in ("chunk", "target", "std_hit", "bare", "empty", "thought", "h")}
    rec["thought_len"], rec["closed"], rec["examples"] = [], [], []
    done, t0 = 0, time.perf_counter()
    for c, chunk in enumerate(chunks):
        hidden, cache = tf.prefill(model, chunk.ids)
        for t in chunk.positions:
            y = int(chunk.ids[t])
            h_bare = hidden[t - 1].expand(n_fmt, -1)
            bare = tf.log_probs(model, hidden[t - 1], fb)
            readings = {"empty": tf.read_empty(model, fb, tf.prefix_cache(cache, t, n_fmt))}
            if done < n_thought:
                readings["thought"] = tf.read_after_thought(
                    model,
                    fb,
                    tf.prefix_cache(cache, t, n_fmt),
                    args.thought_tokens,
                    args.greedy_thoughts,
                    gen,
                )
            rec["chunk"].append(c)
            rec["target"].append(y)
            rec["std_hit"].append(int(bare[0, :vocab].argmax()) == y)
            rec["bare"].append(_scores(bare, bare, y, h_bare, None, h_bare))
            rec["h"].append({"bare": h_bare[0].clone()})
            for kind, r in readings.items():
                rec[kind].append(_scores(r.logp, bare, y, r.hidden, heads, h_bare))
                rec["h"][-1][kind] = r.hidden.clone()
            if "thought" in readings:
                rec["thought_len"].append([len(th) for th in readings["thought"].thoughts])
                rec["examples"].append(readings["thought"].thoughts)
            done += 1
        if (c + 1) % log_every == 0 or c + 1 == len(chunks):
            rate = (time.perf_counter() - t0) / done
            print(
                f"  {done} positions, {rate:.2f} s/position, {rate * (len(chunks) * args.per_chunk - done) / 60:.1f} min left",
                flush=True,
            )
    return rec


def _scores(logp, bare, y, h_after, heads, h_bare) -> dict:
    """log p(y) and greedy hit per format [B]; under each mixing head, the same for the mixed distribution."""
    out = {"logp": logp[:, y].clone(), "hit": logp.argmax(-1) == y}
    for name, per_format in (heads or {}).items():
        z = torch.stack([head(h_after[b], h_bare[b]) for b, head in enumerate(per_format)])
        mixed = mixed_log_probs(z, logp, bare)
        out[f"{name}_logp"], out[f"{name}_hit"] = mixed[:, y].clone(), mixed.argmax(-1) == y
        out[f"{name}_w"] = torch.sigmoid(z)
    return out


def fit_heads(rec, fb, args) -> tuple[list[MixingHead], dict]:
    """One mixing head per format, fitted on the training positions' empty and sampled thoughts together."""
    heads, report = [], {}
    for b, f in enumerate(fb.formats):
        h_after, h_bare, la, lb = [], [], [], []
        for kind in ("empty", "thought"):
            for i, s in enumerate(rec[kind]):
                h_after.append(rec["h"][i][kind][b])
                h_bare.append(rec["h"][i]["bare"])
                la.append(s["logp"][b])
                lb.append(rec["bare"][i]["logp"][b])
        torch.manual_seed(args.seed)
        head = MixingHead(fb.hidden_size, args.head_width, args.init_weight)
        with torch.enable_grad():
            losses = fit_mixing_head(
                head,
                torch.stack(h_after),
                torch.stack(h_bare),
                torch.stack(la),
                torch.stack(lb),
                args.fit_steps,
                args.fit_lr,
            )
        heads.append(head.eval())
        report[f.name] = {
            "examples": len(la),
            "loss_init": losses[0],
            "loss_fitted": losses[-1],
            "bare_nll": -float(torch.stack(lb).mean()),
        }
    return heads, report


# ---------------------------------------------------------------- statistics


def clustered(values: list[float], clusters: list[int]) -> dict:
    """Mean, its standard error clustered by `clusters` (CR1), and the 95% interval."""
    x, g = torch.tensor(values, dtype=torch.float64), torch.tensor(clusters)
    n, mean = len(x), float(x.mean())
    sums = torch.zeros(int(g.max()) + 1, dtype=torch.float64).index_add_(0, g, x - mean)
    k = int((torch.bincount(g) > 0).sum())
    se = math.sqrt(float((sums**2).sum()) * k / max(k - 1, 1)) / n
    return {"mean": mean, "se": se, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "n": n}


def summarize(rec, fb, heads: list[str]) -> dict:
    out = {"standard_accuracy": clustered([float(h) for h in rec["std_hit"]], rec["chunk"])}
    out["standard_logp"] = clustered([float(s["logp"][0]) for s in rec["bare"]], rec["chunk"])
    for b, f in enumerate(fb.formats):
        row = {}
        for kind in ("empty", "thought"):
            n = len(rec[kind])
            if not n:
                continue
            clusters = rec["chunk"][:n]
            std = [float(h) for h in rec["std_hit"][:n]]
            for variant in ["plain", *heads]:
                key = "" if variant == "plain" else f"{variant}_"
                cost = [float(rec["bare"][i]["logp"][b] - rec[kind][i][f"{key}logp"][b]) for i in range(n)]
                hit = [float(rec[kind][i][f"{key}hit"][b]) for i in range(n)]
                row[f"{kind}/{variant}"] = {
                    "cost_nats": clustered(cost, clusters),
                    "accuracy": clustered(hit, clusters),
                    "accuracy_minus_standard": clustered(
                        [a - s for a, s in zip(hit, std, strict=True)], clusters
                    ),
                    "standard_accuracy": sum(std) / n,
                }
                if variant != "plain":
                    row[f"{kind}/{variant}"]["mean_w"] = (
                        sum(float(rec[kind][i][f"{key}w"][b]) for i in range(n)) / n
                    )
            if kind == "thought":
                lens = [r[b] for r in rec["thought_len"]]
                row["thought_tokens_mean"] = sum(lens) / len(lens)
        out[f.name] = row
    return out


def table(summary, fb, heads) -> str:
    lines = [
        "| format | thought | cost, nats (95% CI) | accuracy | accuracy - standard, points (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for f in fb.formats:
        for kind in ("empty", "thought"):
            for variant in ["plain", *heads]:
                r = summary[f.name].get(f"{kind}/{variant}")
                if r is None:
                    continue
                c, a, d = r["cost_nats"], r["accuracy"], r["accuracy_minus_standard"]
                name = f.name if variant == "plain" else f"{f.name} + mixing head ({variant})"
                lines.append(
                    f"| {name} | {kind} (n={c['n']}) | {c['mean']:.3f} ({c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}) "
                    f"| {100 * a['mean']:.1f}% | {100 * d['mean']:+.1f} ({100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}) |"
                )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="c4", choices=["c4", "wikitext2", "pydoc"])
    p.add_argument("--model", default="gemma-3-270m", help="a model folder, .gguf file or packaged name")
    p.add_argument("--positions", type=int, default=512, help="held-out positions")
    p.add_argument(
        "--thought-positions",
        type=int,
        default=None,
        help="of those, how many also sample a thought (default all)",
    )
    p.add_argument(
        "--train-positions",
        type=int,
        default=256,
        help="positions of training text that fit the mixing heads",
    )
    p.add_argument(
        "--train-thought-positions",
        type=int,
        default=None,
        help="of those, how many sample a thought (default all)",
    )
    p.add_argument(
        "--per-chunk", type=int, default=4, help="positions per chunk of text (they share a prefill)"
    )
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--min-context", type=int, default=64)
    p.add_argument("--thought-tokens", type=int, default=16)
    p.add_argument("--greedy-thoughts", action="store_true", help="greedy thoughts (default: temperature 1)")
    p.add_argument("--no-bos", dest="bos", action="store_false", help="no BOS token before each chunk")
    p.add_argument("--formats", nargs="+", default=["new_mean", "new_dashes", *VOCAB_DELIMITERS])
    p.add_argument(
        "--init-weight", type=float, default=0.03, help="the mixing head's weight on the thought at init"
    )
    p.add_argument("--head-width", type=int, default=32)
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--fit-lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a loaded 2-core machine 7x faster than 2)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nextrl.model.gguf import resolve_model_path

    t_start = time.perf_counter()
    path = resolve_model_path(args.model, key="--model")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if not model.config.get_text_config().tie_word_embeddings:
        sys.exit("--model: the new-token formats assume tied input/output embeddings (as in Gemma)")
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    if window and args.context + 1 + args.thought_tokens + 2 >= window:
        sys.exit(f"--context {args.context} + thought must stay inside the model's sliding window ({window})")
    fb = build_formats(model, tok, args.formats)
    train_docs, eval_docs = load_documents(args.data, args.seed)
    train_chunks = sample_chunks(tok, train_docs, args.train_positions, args, args.seed + 1)
    eval_chunks = sample_chunks(tok, eval_docs, args.positions, args, args.seed)
    n_eval = len(eval_chunks) * args.per_chunk
    n_thought = n_eval if args.thought_positions is None else args.thought_positions
    print(
        f"{args.data}: {n_eval} held-out positions ({n_thought} with thoughts), {args.train_positions} to fit the heads; formats {args.formats}",
        flush=True,
    )

    print("fitting the mixing heads:", flush=True)
    n_train_thought = (
        args.train_positions if args.train_thought_positions is None else args.train_thought_positions
    )
    train = measure(model, fb, train_chunks, args, n_thought=n_train_thought)
    fitted, fit_report = fit_heads(train, fb, args)
    init = [MixingHead(fb.hidden_size, args.head_width, args.init_weight).eval() for _ in fb.formats]
    print("held-out positions:", flush=True)
    heads = {"init": init, "fitted": fitted}
    rec = measure(model, fb, eval_chunks, args, n_thought, heads=heads)
    summary = summarize(rec, fb, list(heads))
    text = table(summary, fb, list(heads))
    std = summary["standard_accuracy"]
    print(
        f"\nstandard: accuracy {100 * std['mean']:.1f}%, mean log p(true) {summary['standard_logp']['mean']:.3f}"
    )
    print(text)
    examples = [{f.name: tok.decode(th[b]) for b, f in enumerate(fb.formats)} for th in rec["examples"][:4]]
    result = {
        "command": "python bench/thought_formats.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "seconds": time.perf_counter() - t_start,
        "summary": summary,
        "mixing_head_fit": fit_report,
        "thought_examples": examples,
        "table": text,
        "per_position": {
            "chunk": rec["chunk"],
            "std_hit": rec["std_hit"],
            "bare_logp": [s["logp"].tolist() for s in rec["bare"]],
            **{f"{k}_logp": [s["logp"].tolist() for s in rec[k]] for k in ("empty", "thought")},
        },
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
