"""The positive control: seeded documents whose next tokens are the result of a short serial computation.

Each document is a short page (an invoice, a score sheet, a recipe, a shopping list) of ordinary sentences,
and each sentence ends in the result of a computation on numbers or items it mentions: multi-digit addition
and multiplication with carries, running totals, counting items, reversing or sorting a short list. A small
model cannot do these in one forward pass, but can with written steps, so they are the tokens where a thought
must help. A fraction of documents (`worked_fraction`) shows the steps inside `<think> … </think>` right
before the result, as worked solutions appear on the web; another (`guess_fraction`) shows a guess there
("about 47", right only by chance), as unhelpful reasoning does; the rest give the bare result. With
`thoughts: beside` the shown thoughts stay out of the text (`Document.thoughts`) and are inserted at token
level in the run's own thought delimiters (`nextrl.data.shown_thoughts`), which is how a pretrained model's
pages are written for its format. A model
pretrained on both learns the procedure but not that it pays: that is what RL has to teach.

The characters of each result's first item are returned as `Document.spans`; selection turns the first token
they cover into a position of the `computed` bucket: the place where a worked solution shows its steps (only
in documents without worked steps: after a shown thought the result is a copy).

Everything is a pure function of (seed, document index), so the corpus is the same on every machine and run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from nextrl.config.schema import SYNTHETIC_TASKS, SyntheticConfig
from nextrl.data.documents import Document

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eva", "Finn", "Gita", "Hugo", "Iris", "Jon", "Kira", "Leo", "Mia"]
_GOODS = ["lamp", "rug", "chair", "kettle", "jacket", "clock", "bike", "desk", "radio", "tent", "stool"]
_FRUIT = ["fig", "plum", "pear", "lime", "kiwi", "date", "apple", "grape", "melon", "peach", "mango"]
_TEAMS = ["Rovers", "United", "Harriers", "Wanderers", "Athletic", "Rangers", "City", "Albion"]
_TITLES = {
    "add": ["Receipt", "Match report", "Kitchen notes", "Travel log"],
    "multiply": ["Order sheet", "Stock count", "Packing list"],
    "running_total": ["Score sheet", "Savings diary", "Step counter"],
    "count": ["Shopping list", "Market day", "Pantry check"],
    "reverse": ["Lock codes", "Puzzle page"],
    "sort": ["Class register", "Puzzle page"],
}


class Piece:
    """One problem: `before` text, the worked `steps` (thought body) and the `result` pieces.

    `result` is the result's text in pieces; the first piece is the computed one (the position of the thought)."""

    def __init__(self, before: str, steps: str, result: list[str], after: str):
        self.before, self.steps, self.result, self.after = before, steps, result, after


def _number(rng: np.random.Generator, digits: int) -> int:
    lo = 10 ** (digits - 1) if digits > 1 else 1
    return int(rng.integers(lo, 10**digits))


def _column_steps(a: int, b: int, op: str) -> str:
    """The operands, then right-to-left column steps with carries: addition '47+38: 7+8=15 4+3+1=8',
    multiplication by one digit '24x6: 6x4=24 6x2+2=14'. Echoing the operands first puts every digit a step
    needs at a fixed offset inside the thought, so each step is a local operation."""
    steps, carry = [f"{a}+{b}:" if op == "+" else f"{a}x{b}:"], 0
    da = [int(c) for c in reversed(str(a))]
    if op == "+":
        db = [int(c) for c in reversed(str(b))]
        for i in range(max(len(da), len(db))):
            x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
            s = x + y + carry
            steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}")
            carry = s // 10
    else:
        for x in da:
            s = b * x + carry
            steps.append(f"{b}x{x}" + (f"+{carry}" if carry else "") + f"={s}")
            carry = s // 10
    return " ".join(steps)


def _add(rng, cfg: SyntheticConfig) -> Piece:
    # The sum keeps the operands' digit count, so its leading digit depends on the whole carry chain (an
    # overflowing sum would lead with an easy "1"): draw the sum first, then split it.
    lo, hi = (10 ** (cfg.digits - 1) if cfg.digits > 1 else 1), 10**cfg.digits - 1
    total = int(rng.integers(2 * lo, hi + 1))
    a = int(rng.integers(lo, total - lo + 1))
    b = total - a
    n1, g1, g2 = rng.choice(_NAMES), *rng.choice(_GOODS, 2, replace=False)
    t1, t2 = rng.choice(_TEAMS, 2, replace=False)
    before, after = [
        (f"{n1} paid {a} dollars for a {g1} and {b} dollars for a {g2}, ", " dollars in all."),
        (f"The {t1} scored {a} points and the {t2} {b}, so the game saw ", " points."),
        (f"Mix {a} grams of flour with {b} grams of sugar to get ", " grams of dry mix."),
        (f"The first leg is {a} km and the second is {b} km, a trip of ", " km."),
    ][int(rng.integers(4))]
    return Piece(before, _column_steps(a, b, "+"), [str(a + b)], after)


def _multiply(rng, cfg: SyntheticConfig) -> Piece:
    a, b = _number(rng, cfg.digits), int(rng.integers(2, 10))
    g = rng.choice(_GOODS)
    before, after = [
        (f"{b} crates of {a} eggs hold ", " eggs."),
        (f"The shop sold {b} {g}s at {a} dollars each, taking ", " dollars."),
        (f"{b} rows of {a} seats make ", " seats."),
    ][int(rng.integers(3))]
    return Piece(before, _column_steps(a, b, "x"), [str(a * b)], after)


def _items(rng, cfg: SyntheticConfig) -> int:
    return int(rng.integers(3, cfg.items + 1))


def _listing(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1]


def _running_total(rng, cfg: SyntheticConfig) -> Piece:
    xs = [int(x) for x in rng.integers(1, 10, _items(rng, cfg))]
    name = rng.choice(_NAMES)
    totals = np.cumsum(xs).tolist()
    before, after = [
        (f"{name} scored {_listing([str(x) for x in xs])} in the rounds, a total of ", "."),
        (f"{name} saved {_listing([str(x) for x in xs])} dollars over the weeks, ", " dollars in all."),
    ][int(rng.integers(2))]
    return Piece(before, " ".join(str(t) for t in totals), [str(totals[-1])], after)


def _count(rng, cfg: SyntheticConfig) -> Piece:
    k = _items(rng, cfg)
    words = [str(w) for w in rng.choice(_FRUIT, k)]
    name = rng.choice(_NAMES)
    steps = " ".join(f"{w}{i}" for i, w in enumerate(words, start=1))
    return Piece(f"{name} bought {_listing(words)}: that is ", steps, [str(k)], " pieces of fruit.")


def _reverse(rng, cfg: SyntheticConfig) -> Piece:
    xs = [str(x) for x in rng.integers(0, 10, _items(rng, cfg))]
    steps = " ".join(f"{i}:{x}" for i, x in reversed(list(enumerate(xs, start=1))))
    result = [p for x in reversed(xs) for p in (x, " ")][:-1]
    return Piece(f"The code {' '.join(xs)} read backwards is ", steps, result, ".")


def _sort(rng, cfg: SyntheticConfig) -> Piece:
    xs = [str(x) for x in rng.integers(0, 10, _items(rng, cfg))]
    rest, steps = list(xs), []
    while rest:  # selection sort, one minimum per step: "7294>2 794>4 79>7 9>9"
        m = min(rest)
        steps.append("".join(rest) + ">" + m)
        rest.remove(m)
    result = [p for x in sorted(xs) for p in (x, " ")][:-1]
    return Piece(f"Sorted, the numbers {' '.join(xs)} read ", " ".join(steps), result, ".")


MAKERS: dict[str, Callable[[np.random.Generator, SyntheticConfig], Piece]] = {
    "add": _add,
    "multiply": _multiply,
    "running_total": _running_total,
    "count": _count,
    "reverse": _reverse,
    "sort": _sort,
}
assert set(MAKERS) == set(SYNTHETIC_TASKS)


def synthetic_document(cfg: SyntheticConfig, index: int) -> Document:
    """Document `index` of the corpus: `cfg.problems` problems of tasks drawn by weight."""
    rng = np.random.default_rng([cfg.seed, index])
    names = sorted(cfg.tasks)
    w = np.array([cfg.tasks[n] for n in names], dtype=np.float64)
    kinds = [names[int(i)] for i in rng.choice(len(names), cfg.problems, p=w / w.sum())]
    u = rng.random()
    style = (
        "worked"
        if u < cfg.worked_fraction
        else "guess"
        if u < cfg.worked_fraction + cfg.guess_fraction
        else ""
    )
    text = rng.choice(_TITLES[kinds[0]]) + f" {int(rng.integers(1, 1000))}\n"
    spans: list[tuple[int, int]] = []
    thoughts: list[tuple[int, str]] = []
    for kind in kinds:
        p = MAKERS[kind](rng, cfg)
        text += p.before
        # the computed token: the result's first character, or its last one (`computed_digit`), whose digits
        # before it are then part of the context
        lead = p.result[0][:-1] if cfg.computed_digit == "last" else ""
        text += lead
        body = None
        if style == "worked":
            body = p.steps
        elif style == "guess":  # a number of the result's length, right only by chance
            first = p.result[0]
            guess = "".join(str(int(rng.integers(1 if k == 0 else 0, 10))) for k in range(len(first)))
            body = f"about {guess if first.isdigit() else first}"
        else:  # the first result item: where a worked solution shows its steps
            spans.append((len(text), len(text) + len(p.result[0]) - len(lead)))
        if body is not None and cfg.thoughts == "inline":
            text += f"{THINK_OPEN}{body}{THINK_CLOSE}"
        elif body is not None:  # beside the text, before the result's first token
            thoughts.append((len(text), body))
        text += "".join(p.result)[len(lead) :]
        text += p.after + "\n"
    return Document(f"synthetic:{cfg.seed}:{index}", text, "synthetic", tuple(spans), tuple(thoughts))


def read_synthetic(cfg: SyntheticConfig) -> Iterator[Document]:
    for i in range(cfg.documents):
        yield synthetic_document(cfg, i)
