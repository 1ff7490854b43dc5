"""bench/passk.py's base-model format: the few-shot prefix goes after the BOS, completions are cut where the
next example starts, and no reference solution of the four data sets is cut by the stop strings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from nextrl.engine.base import Rollout

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench():
    sys.path.insert(0, str(BENCH))  # passk.py imports publish.py from beside it
    try:
        spec = importlib.util.spec_from_file_location("bench_passk", BENCH / "passk.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


class CharTokenizer:
    """One id per character (BOS = 1), so that a cut is easy to read back."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == 1))


class EchoEngine:
    """Completes every prompt with `completion`; remembers the prompts it was given."""

    def __init__(self, completion: str):
        self.completion, self.prompts = completion, []

    def generate(self, prompts, params):
        self.prompts = [list(p) for p in prompts]
        ids = [ord(c) for c in self.completion]
        return [
            [Rollout(list(p), ids, [0.5] * len(ids), [1] * len(ids), "length")] * params.n for p in prompts
        ]


class Params:
    n = 2


def test_cut_keeps_the_text_before_the_first_stop():
    passk = _bench()
    assert passk.cut("a\nb\ndef c\nif d", ("\nif", "\ndef")) == "a\nb"
    assert passk.cut("no stop here", ("\nif",)) == "no stop here"
    assert passk.cut("", ("x",)) == ""


def test_base_model_engine_puts_the_shots_after_the_bos_and_cuts_completions():
    passk = _bench()
    tok = CharTokenizer()
    inner = EchoEngine("x = 1\n    return x\ndef next_one():")
    engine = passk.BaseModelEngine(inner, tok, [ord(c) for c in "SHOT"], passk.STOPS["humaneval"])
    prompt = tok("def f():\n")["input_ids"]
    groups = engine.generate([prompt], Params())
    assert inner.prompts == [[1, *[ord(c) for c in "SHOT"], *prompt[1:]]]
    assert len(groups[0]) == 2
    for r in groups[0]:
        assert r.prompt_ids == prompt  # the scored task's own prompt, without the shots
        assert tok.decode(r.completion_ids) == "x = 1\n    return x"
        assert r.finish_reason == "stop" and len(r.logprobs) == len(r.completion_ids)
    # nothing to cut: the completion is kept as sampled
    kept = passk.BaseModelEngine(EchoEngine("y"), tok, [], ("\nif",)).generate([[5]], Params())[0][0]
    assert kept.completion_ids == [ord("y")] and kept.logprobs == [0.5] and kept.finish_reason == "length"


@pytest.mark.parametrize("name", ["gsm8k", "math500", "humaneval", "mbpp"])
def test_no_reference_solution_is_cut(name):
    passk = _bench()
    path = passk.SETS[name][1]
    if not path.exists():
        pytest.skip(f"{path} is absent")
    from nextrl.env.records import read_records

    stops = passk.STOPS["math" if passk.SETS[name][0] == "math" else name]
    refs = [passk.reference(r) for r in read_records(str(path))]
    assert [r for r in refs if passk.cut(r, stops) != r] == []


def test_shots_are_solved_examples_in_the_prompt_format():
    passk = _bench()
    if not (passk.GSM8K_TRAIN.exists() and passk.SETS["mbpp"][1].exists()):
        pytest.skip("GSM8K's train split or MBPP is absent")
    from nextrl.env.records import read_records

    math = passk.shots_text("math500", 2, [])
    assert (
        math.count("Solve the problem.") == 2
        and math.count("The answer is \\boxed{") == 2
        and "<<" not in math
        and math.endswith("\n\n")
    )
    mbpp_records = read_records(str(passk.SETS["mbpp"][1]))
    mbpp = passk.shots_text("mbpp", 3, mbpp_records)
    assert mbpp.count('"""') == 6 and mbpp.count("assert ") == 3
    assert passk.shots_text("humaneval", 3, []) == "" and passk.shots_text("gsm8k", 0, []) == ""
