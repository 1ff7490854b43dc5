"""The math environment: GSM8K- and MATH-style problems, scored by checking the final answer.

Task records (JSONL or Parquet, one problem per record; `env.options` names the file and fields):

    {"question": "Natalia sold 48 clips ...", "answer": "... #### 72"}          GSM8K
    {"problem": "Convert the point ...", "answer": "\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)"}   MATH (or a
                                                                                 "solution" with \\\\boxed{})

The gold answer is the text after `####` (GSM8K), else the `answer` field, else the last `\\boxed{}` of the
`solution`. A gold answer that `math-verify` cannot parse is counted and skipped when the records are read,
never rewarded. A completion's answer is its last `\\boxed{...}`; `correct` is 1 when math-verify finds it
equivalent to the gold (2, 2.0 and 4/2 are all right), `format` is −1 when there is no box.

Options (`env.options`): `path` (required), `question_field` (default: `question`, else `problem`),
`answer_field` (`answer`), `solution_field` (`solution`), `max_tokens` (256, the completion budget).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env.base import Environment, Reward, ScoringModel, Task
from nextrl.env.records import RecordTasks, read_records
from nextrl.errors import ConfigError, DataError
from nextrl.model.tokenizer import end_of_turn_ids

INSTRUCTION = (
    "Solve the problem. Think step by step, then give the final answer as \\boxed{{...}}.\n\n{question}"
)
_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def last_boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` in `text`, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    j = i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def gold_answer(
    record: dict[str, Any], answer_field: str = "answer", solution_field: str = "solution"
) -> str | None:
    """The reference answer of a record (see the module docstring), or None."""
    answer = record.get(answer_field)
    if isinstance(answer, str) and answer.strip():
        m = _GSM8K_ANSWER.search(answer)
        return m.group(1).strip().replace(",", "") if m else answer.strip()
    solution = record.get(solution_field)
    return last_boxed(solution) if isinstance(solution, str) else None


def _verifier():
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ConfigError("env.name 'math' needs math-verify: pip install -e '.[math]'") from None
    return parse, verify


class MathEnv(Environment):
    name = "math"
    reward_components = ("correct", "format")
    correctness = "correct"

    def __init__(self, options: dict[str, Any], tokenizer):
        unknown = set(options) - {"path", "question_field", "answer_field", "solution_field", "max_tokens"}
        if unknown:
            raise ConfigError(f"config key 'env.options': unknown option(s) {sorted(unknown)} for env 'math'")
        if "path" not in options:
            raise ConfigError("config key 'env.options.path': the math environment needs a file of problems")
        self.options, self.tok = options, tokenizer
        self.max_tokens = int(options.get("max_tokens", 256))
        self.eos_ids = end_of_turn_ids(tokenizer)
        self.parse, self.verify = _verifier()

    def make_task(self, record: dict[str, Any], index: int) -> Task:
        field = self.options.get("question_field") or ("question" if "question" in record else "problem")
        question = record.get(field)
        if not isinstance(question, str):
            raise DataError(f"{self.options['path']} record {index}: no text field '{field}'")
        text = INSTRUCTION.format(question=question.strip())
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        else:
            ids = list(self.tok(text + "\n")["input_ids"])
        gold = record["__gold__"]
        return Task(f"math:{index}", ids, domain="math", group_key=None, meta={"gold": gold})

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return SamplingParams.simple(self.max_tokens, n, temperature, top_p, eos_token_ids=self.eos_ids)

    def is_correct(self, gold: str, completion: str) -> tuple[bool, str | None]:
        """(equivalent to the gold?, the boxed answer or None)."""
        answer = last_boxed(completion)
        if answer is None:
            return False, None
        parsed = self.parse("\\boxed{" + answer + "}")
        return bool(parsed) and bool(self.verify(self.parse(gold_latex(gold)), parsed)), answer

    def score(
        self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]], scorer: ScoringModel | None = None
    ) -> list[list[Reward]]:
        out = []
        for task, group in zip(tasks, rollouts, strict=True):
            rewards = []
            for r in group:
                text = self.tok.decode(r.completion_ids, skip_special_tokens=True)
                ok, answer = self.is_correct(task.meta["gold"], text)
                comps = {"correct": float(ok), "format": 0.0 if answer is not None else -1.0}
                rewards.append(Reward(self.total(comps), comps, answer, parsed=answer is not None))
            out.append(rewards)
        return out

    def task_source(self, cfg) -> MathTasks:
        return MathTasks(self, cfg.rl.seed)


def gold_latex(gold: str) -> str:
    """The gold in a form math-verify reads whole: boxed, unless it already is (or is in $…$). Unboxed LaTeX
    such as `2\\sqrt{3}` would otherwise be read by its first number (2)."""
    return gold if ("\\boxed" in gold or gold.strip().startswith("$")) else "\\boxed{" + gold + "}"


class MathTasks(RecordTasks):
    """A `TaskSource` over the records of `env.options.path`. Records whose gold answer is missing or does not
    parse are skipped and counted (`stats()["skipped_gold"]`)."""

    def __init__(self, env: MathEnv, seed: int):
        self.env = env
        o = env.options
        records, skipped = [], 0
        for rec in read_records(o["path"]):
            gold = gold_answer(rec, o.get("answer_field", "answer"), o.get("solution_field", "solution"))
            if gold is None or not env.parse(gold_latex(gold)):
                skipped += 1
                continue
            records.append({**rec, "__gold__": gold})
        if not records:
            raise DataError(f"{o['path']}: no problem with a parseable gold answer ({skipped} skipped)")
        super().__init__(records, env.make_task, seed, {"problems": len(records), "skipped_gold": skipped})
