"""The position pickers of bench/format_costs.py and bench/aside_placement.py: `--at results` takes the first
digit of each number written right after an "=" (the results of a text's own calculations), and the placement
bench keeps only positions whose context ends in a lone space token (how a digit-splitting tokenizer writes a
number)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nextrl.model.tokenizer import train_bpe_tokenizer

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str):
    sys.path.insert(0, str(BENCH))  # aside_placement.py imports format_costs.py from beside it
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


@pytest.fixture(scope="module")
def tok():
    texts = ["She sold 48/2 = 24 clips and paid = $10 for them. Then 3 + 4 = 7 and x=5."] * 20
    return train_bpe_tokenizer(texts, vocab_size=300)


def test_results_are_the_first_digits_after_an_equals_sign(tok):
    fc = _bench("format_costs")
    text = "She sold 48/2 = 24 clips and paid = $10 for them. Then 3 + 4 = 7 and x=5."
    args = SimpleNamespace(skip=0, context=256)
    picks = fc.result_positions(tok, 3, text, args)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(d == "doc3" and i == ids for d, i, _ in picks)
    # the slow reference: decode each picked token and what precedes it
    read = [(tok.decode(ids[:p]).rstrip(" $")[-1], tok.decode([ids[p]])) for _, _, p in picks]
    assert read == [("=", "2"), ("=", "1"), ("=", "7"), ("=", "5")]
    # only results inside [skip, context)
    late = fc.result_positions(tok, 3, text, SimpleNamespace(skip=picks[1][2] + 1, context=256))
    assert [p for _, _, p in late] == [p for _, _, p in picks[2:]]


def test_a_lone_space_is_what_precedes_a_spaced_number(tok):
    ap = _bench("aside_placement")
    ids = tok("paid = 24 now", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    two = pieces.index("2")
    assert ap.is_lone_space(tok, ids[two - 1])
    assert not ap.is_lone_space(tok, ids[two])
    assert not any(ap.is_lone_space(tok, i) for i in ids[: two - 1])  # " =" is not a lone space


def test_the_worked_warm_up_shows_worked_sums_before_first_digits_on_some_pages_only():
    ww = _bench("worked_warmup")
    args = SimpleNamespace(tokens=1024, model="gemma-3-270m", worked_fraction=0.35, guess_fraction=0.0)
    cfg = ww.warmup_config(args)
    (source,) = cfg.data.sources
    pages = source.synthetic
    assert (pages.computed_digit, pages.worked_fraction, pages.guess_fraction) == ("first", 0.35, 0.0)
    assert cfg.warmup.tokens == 1024 and cfg.env.format == "aside"
