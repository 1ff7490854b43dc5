"""pass@k on GSM8K, MATH-500, HumanEval and MBPP through nextrl's own environments (math: math-verify; code:
the sandbox), from the local files in ../shared/data.

    python bench/passk.py --oracle                       # the reference solutions as the "model"
    python bench/passk.py --model runs/x/models/rl -n 4 --k 1 --k 4 --problems 50

`--oracle` answers every problem with its reference solution (GSM8K's worked answer with `#### n` written as
`\\boxed{n}`, MATH's solution, HumanEval's canonical solution, MBPP's code), tokenized and scored exactly as a
model's completion would be: what it does not credit is what the environments' extraction, equivalence or
sandbox get wrong (or what the data set's references get wrong). `--model` samples a checkpoint instead.
For the code sets, "tests run the old way" counts the records whose tests the trusted verdict cannot decide
(`nextrl.env.verdict`), which run in the program as before.

A base model (no chat template) sees the environment's plain prompt. Two options give it the usual base-model
format: `--fewshot N` puts N solved examples before each problem, written in the same prompt format (GSM8K
and MATH-500: the first N problems of GSM8K's train split with their worked answers; MBPP: its records 2, 3,
4, ... (the few-shot prompts of Austin et al. 2021), which are then left out of the evaluation; HumanEval:
none, its prompt is already code to continue); `--cut` ends each completion where the model starts another
example (`STOPS`: the next "Solve the problem" for math, the stop sequences of Chen et al. 2021 for
HumanEval, the next docstring, assert, print or main guard for MBPP), as a stop sequence would. No reference
solution of the four sets is cut by them (tests/test_bench_passk.py).

    python bench/passk.py --model gemma-3-270m --fewshot 4 --cut -n 4 --k 1 --k 4 --problems 32"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from nextrl.config import load_config
from nextrl.engine.base import Rollout
from nextrl.env import build_environment
from nextrl.env.code import prompt_text
from nextrl.env.math import INSTRUCTION
from nextrl.eval.passk import evaluate_pass_at_k
from publish import publish  # bench/publish.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CALCULATOR = re.compile(r"<<[^>]*>>")
GSM8K_TRAIN = DATA / "gsm8k" / "train.jsonl"  # the math sets' solved examples
MBPP_SHOT_IDS = (2, 3, 4, 5, 6, 7, 8, 9, 10)  # MBPP's few-shot prompts: the first N of its records 2-10
# where a base model's completion has ended: the text from the first of these on is cut (--cut)
STOPS = {
    "math": ("Solve the problem",),
    "humaneval": ("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
    "mbpp": ('\n"""', "\nassert", "\nprint", "\nif __name__"),  # MBPP's own code has top-level classes
}
SETS = {  # name: (environment, file, its reward spec)
    "gsm8k": ("math", DATA / "gsm8k" / "test.jsonl", "correct"),
    "math500": ("math", DATA / "math" / "math500_test.jsonl", "correct"),
    "humaneval": ("code", DATA / "humaneval" / "HumanEval.jsonl.gz", "passed"),
    "mbpp": ("code", DATA / "mbpp" / "mbpp.jsonl", "passed"),
}


def reference(record: dict) -> str:
    """The data set's own solution, written as a completion of the environment's prompt."""
    if "canonical_solution" in record:  # HumanEval: the body after the prompt's signature
        return record["canonical_solution"]
    if "code" in record and "test_list" in record:  # MBPP
        return record["code"].replace("\r\n", "\n")
    if "####" in record.get("answer", ""):  # GSM8K
        work, _, final = record["answer"].rpartition("####")
        return f"{work.strip()}\nThe answer is \\boxed{{{final.strip()}}}."
    return record["solution"]  # MATH: ends in \boxed{...}


def shots_text(name: str, fewshot: int, records: list[dict]) -> str:
    """`fewshot` solved examples in the prompt format of set `name`, each followed by a blank line ("" for
    HumanEval and for 0)."""
    if fewshot == 0 or name == "humaneval":
        return ""
    if name == "mbpp":
        by_id = {r["task_id"]: r for r in records}
        shots = [by_id[i] for i in MBPP_SHOT_IDS[:fewshot]]
        return "".join(prompt_text(r) + reference(r) + "\n\n" for r in shots)
    with open(GSM8K_TRAIN, encoding="utf-8") as f:
        shots = [json.loads(line) for line, _ in zip(f, range(fewshot), strict=False)]
    # without GSM8K's calculator notes (<<48/2=24>>), which no test answer needs
    return "".join(
        INSTRUCTION.format(question=r["question"].strip()) + "\n" + CALCULATOR.sub("", reference(r)) + "\n\n"
        for r in shots
    )


def cut(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the first of `stops` (all of it when none occurs)."""
    return text[: min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))]


class BaseModelEngine:
    """Wraps an engine for a base model: `shot_ids` go before each prompt (after its BOS, if any), and each
    completion is cut at the first of `stops` (re-tokenized; the environments score the decoded text)."""

    def __init__(self, engine, tokenizer, shot_ids: list[int], stops: tuple[str, ...]):
        self.engine, self.tok, self.shot_ids, self.stops = engine, tokenizer, shot_ids, stops

    def with_shots(self, prompt: list[int]) -> list[int]:
        bos = self.tok.bos_token_id
        if bos is not None and prompt[:1] == [bos]:
            return [bos, *self.shot_ids, *prompt[1:]]
        return [*self.shot_ids, *prompt]

    def generate(self, prompts, params) -> list[list[Rollout]]:
        groups = self.engine.generate([self.with_shots(list(p)) for p in prompts], params)
        return [[self.cut(list(p), r) for r in g] for p, g in zip(prompts, groups, strict=True)]

    def cut(self, prompt: list[int], r: Rollout) -> Rollout:
        text = self.tok.decode(r.completion_ids, skip_special_tokens=True)
        kept = cut(text, self.stops)
        if not self.stops or kept == text:
            return Rollout(
                prompt, r.completion_ids, r.logprobs, r.action_mask, r.finish_reason, phase_starts=[0]
            )
        ids = self.tok(kept, add_special_tokens=False)["input_ids"]
        return Rollout(prompt, ids, [0.0] * len(ids), [1] * len(ids), "stop", phase_starts=[0])


class OracleEngine:
    """A `RolloutEngine` that answers each prompt with its task's reference solution, n times."""

    def __init__(self, tokenizer, tasks_by_prompt: dict[tuple[int, ...], dict]):
        self.tok, self.by_prompt = tokenizer, tasks_by_prompt

    def generate(self, prompts, params) -> list[list[Rollout]]:
        out = []
        for p in prompts:
            ids = self.tok(reference(self.by_prompt[tuple(p)]), add_special_tokens=False)["input_ids"]
            out.append(
                [Rollout(list(p), ids, [0.0] * len(ids), [1] * len(ids), "stop", phase_starts=[0])] * params.n
            )
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--oracle", action="store_true", help="answer with the reference solutions")
    who.add_argument(
        "--model", help="a Hugging Face model folder with its tokenizer, a .gguf file, or gemma-3-270m"
    )
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("-n", "--samples", type=int, default=1)
    ap.add_argument("--k", type=int, action="append")
    ap.add_argument("--problems", type=int, default=100_000, help="at most this many per set")
    ap.add_argument("--max-tokens", type=int, default=256, help="completion budget of a sampled model")
    ap.add_argument(
        "--fewshot", type=int, default=0, help="solved examples before each problem (base models)"
    )
    ap.add_argument("--cut", action="store_true", help="cut each completion where the next example starts")
    ap.add_argument("--batch-size", type=int, help="samples per forward of the sampler (sampling.batch_size)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ks = args.k or [1]
    from nextrl.model.tokenizer import load_tokenizer

    tok = load_tokenizer(str(args.model or DATA / "qwen3_tokenizer"))
    model = None
    if args.model:
        from nextrl.model.build import load_model

        model = load_model(args.model, vocab_size=len(tok)).eval()
    rows = []
    for name in args.sets:
        env_name, path, spec = SETS[name]
        budget = 4096 if args.oracle else args.max_tokens  # the oracle's solutions are never cut
        cfg = load_config(
            "micro",
            [
                f"env.name={env_name}",
                f"env.options={{path: '{path}', max_tokens: {budget}}}",
                f"reward={spec}",
                *([f"sampling.batch_size={args.batch_size}"] if args.batch_size else []),
            ],
        )
        env = build_environment(cfg, tok)
        source = env.task_source(cfg)
        if args.oracle:
            records = source.records
            engine = OracleEngine(
                tok, {tuple(env.make_task(r, i).prompt_ids): r for i, r in enumerate(records)}
            )
        else:
            from nextrl.engine import build_engine

            engine = build_engine(cfg.sampling, cfg.sharing, model, tok.pad_token_id, None, seed=0)
            if args.fewshot or args.cut:
                shots = shots_text(name, args.fewshot, source.records)
                if name == "mbpp":  # the shots are not evaluated
                    source.records = [
                        r for r in source.records if r["task_id"] not in MBPP_SHOT_IDS[: args.fewshot]
                    ]
                stops = STOPS["math" if env_name == "math" else name] if args.cut else ()
                engine = BaseModelEngine(
                    engine, tok, tok(shots, add_special_tokens=False)["input_ids"], stops
                )
        t = time.time()
        with torch.no_grad():
            res = evaluate_pass_at_k(env, engine, source, args.problems, args.samples, ks, batch=32)
        stats = source.stats()
        skipped = stats.get("skipped_gold", 0)
        old_way = stats.get("tests_run_in_sandbox")  # code: records the trusted verdict cannot decide
        rows.append((name, res, time.time() - t, skipped, old_way))
        print(name, {k: v for k, v in res.items()}, f"{time.time() - t:.1f} s", flush=True)
    who = "reference solutions (--oracle)" if args.oracle else f"`{args.model}`"
    cmd = "python bench/passk.py " + " ".join(a for a in sys.argv[1:] if a != "--no-write")
    lines = [
        f"### pass@k through the environments: {who} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `{cmd}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; tokenizer: {Path(tok.name_or_path).name}",
        "",
        "| set | problems | gold answers skipped | tests run the old way | "
        + " | ".join(f"pass@{k}" for k in ks)
        + " | seconds |",
        "|---|---|---|---|" + "---|" * len(ks) + "---|",
    ]
    for name, res, sec, skipped, old_way in rows:
        cells = " | ".join(f"{res[f'pass@{k}']['mean']:.1%} ± {res[f'pass@{k}']['stderr']:.1%}" for k in ks)
        old = "—" if old_way is None else str(old_way)
        lines.append(f"| {name} | {res['problems']} | {skipped} | {old} | {cells} | {sec:.0f} |")
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
