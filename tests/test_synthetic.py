"""The positive control's documents: seeded, correct results at the spans, correct worked steps, mixing."""

import re

import pytest

from nextrl.config import load_config
from nextrl.config.schema import SYNTHETIC_TASKS, SyntheticConfig
from nextrl.data import DocumentStream
from nextrl.data.synthetic import synthetic_document


def _problems(text: str):
    """(sentence, worked steps or None, result) for each problem line of a document."""
    out = []
    for line in text.splitlines()[1:]:
        m = re.search(r"<think>(.*?)</think>", line)
        out.append((line, m.group(1) if m else None))
    return out


def _expected(line: str) -> str:
    """The result a problem asks for, computed independently of the generator from the question: the line up
    to its result (or up to its shown steps)."""
    nums = [int(x) for x in re.findall(r"\d+", line.split("<think>")[0])]
    if "read backwards" in line:
        return " ".join(reversed(re.search(r"code ([\d ]+) read", line).group(1).split()))
    if "Sorted" in line:
        return " ".join(sorted(re.search(r"numbers ([\d ]+) read", line).group(1).split()))
    if "bought" in line:
        listing = re.search(r"bought (.*): that is", line).group(1)
        return str(len(re.split(r", | and ", listing)))
    if "crates of" in line or "rows of" in line or "each, taking" in line:
        return str(nums[0] * nums[1])
    if "in the rounds" in line or "over the weeks" in line:
        return str(sum(nums))
    return str(nums[0] + nums[1])


@pytest.mark.parametrize("worked", [0.0, 1.0])
def test_results_are_right_and_spans_mark_them(worked):
    cfg = SyntheticConfig(worked_fraction=worked, items=6, problems=5, seed=3)
    for i in range(60):
        doc = synthetic_document(cfg, i)
        probs = _problems(doc.text)
        assert len(probs) == cfg.problems
        if worked:
            assert doc.spans == ()  # after shown steps the result is a copy, not a computation
            for line, steps in probs:
                assert steps is not None
                after = line.split("</think>")[1]
                assert after.startswith(_expected(line)), line
        else:
            assert len(doc.spans) == cfg.problems and "<think>" not in doc.text
            for (line, _), (a, b) in zip(probs, doc.spans, strict=True):
                question = doc.text[doc.text.rfind("\n", 0, a) + 1 : a]
                assert line.startswith(question)
                want = _expected(question)
                assert doc.text[a:b] == want.split(" ")[0], line
                assert doc.text[a:].startswith(want)


def test_worked_steps_are_the_computation():
    cfg = SyntheticConfig(worked_fraction=1.0, tasks={"add": 1, "multiply": 1, "running_total": 1}, seed=1)
    checked = 0
    for i in range(40):
        for line, steps in _problems(synthetic_document(cfg, i).text):
            if "+" in steps or "x" in steps:  # column steps: every "x+y(+c)=s" / "bxd(+c)=s" is arithmetic
                echo, steps = steps.split(" ", 1)
                assert echo.endswith(":") and echo[:-1].replace("x", "+").split("+")[0] in line
                for step in steps.split():
                    lhs, rhs = step.split("=")
                    terms = lhs.replace("x", "*")
                    assert eval(terms) == int(rhs), step  # noqa: S307 - digits and + * only
                    checked += 1
                # the last step's sum and the earlier steps' units digits spell the result
                sums = [int(s.split("=")[1]) for s in steps.split()]
                assert str(sums[-1]) + "".join(str(x % 10) for x in reversed(sums[:-1])) == _expected(line)
            else:  # running totals
                assert steps.split()[-1] == _expected(line)
    assert checked > 100


def test_deterministic_and_seeded():
    cfg = SyntheticConfig()
    assert synthetic_document(cfg, 5) == synthetic_document(cfg, 5)
    assert synthetic_document(cfg, 5) != synthetic_document(SyntheticConfig(seed=1), 5)


def test_addition_never_overflows_and_difficulty_scales():
    for digits in (1, 2, 3):
        cfg = SyntheticConfig(tasks={"add": 1}, digits=digits, worked_fraction=0.0)
        for i in range(30):
            doc = synthetic_document(cfg, i)
            for a, _ in doc.spans:
                end = a
                while end < len(doc.text) and doc.text[end].isdigit():
                    end += 1
                assert len(doc.text[a:end]) == digits  # the sum keeps the operands' digit count


def test_unknown_task_is_a_config_error():
    with pytest.raises(ValueError, match="unknown task"):
        SyntheticConfig(tasks={"add": 1, "divide": 1})
    assert set(SyntheticConfig().tasks) == set(SYNTHETIC_TASKS)


def test_interleave_mixes_by_weight():
    cfg = load_config(
        "micro",
        [
            "data.sources=[{kind: synthetic, weight: 3, synthetic: {documents: 30}}, "
            "{kind: stdlib, max_documents: 10}]",
            "data.mix=interleave",
        ],
    )
    sources = [d.source for d in DocumentStream(cfg.data)]
    assert len(sources) == 40
    first = sources[:20]
    assert first.count("synthetic") == 15 and first.count("stdlib") == 5
    # sequential (the default) reads the first source to its end
    cfg2 = cfg.model_copy(update={"data": cfg.data.model_copy(update={"mix": "sequential"})})
    assert [d.source for d in DocumentStream(cfg2.data)][:30] == ["synthetic"] * 30
