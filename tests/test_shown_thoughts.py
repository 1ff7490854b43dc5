"""Thoughts shown beside the text (`Document.thoughts`, `synthetic.thoughts: beside`) and the format warm-up
that trains on them (`nextrl.model.warmup`)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nextrl.config import DataConfig, RunConfig, SelectionConfig, load_config
from nextrl.config.schema import EnvConfig, SyntheticConfig
from nextrl.data import Document
from nextrl.data.shown_thoughts import first_token_at, tokenize_document
from nextrl.data.stream import clean
from nextrl.data.synthetic import THINK_CLOSE, THINK_OPEN, synthetic_document
from nextrl.env.formats import AsideFormat, shown_thought_ids
from nextrl.errors import DataError
from nextrl.model.tokenizer import TokenBytes
from nextrl.pipeline import run
from nextrl.positions.index import PositionIndex, select_positions
from tiny_models import parens_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tok():
    return parens_tokenizer()


def _beside(n: int, **kw) -> list[Document]:
    cfg = SyntheticConfig(thoughts="beside", worked_fraction=0.5, guess_fraction=0.2, problems=3, **kw)
    return [synthetic_document(cfg, i) for i in range(n)]


def test_beside_documents_are_the_inline_ones_without_their_thoughts():
    for i in range(40):
        inline = synthetic_document(SyntheticConfig(worked_fraction=0.5, guess_fraction=0.2, problems=3), i)
        beside = synthetic_document(
            SyntheticConfig(worked_fraction=0.5, guess_fraction=0.2, problems=3, thoughts="beside"), i
        )
        assert THINK_OPEN not in beside.text
        rebuilt, last = "", 0  # the inline text, rebuilt by writing each shown thought at its offset
        for offset, body in beside.thoughts:
            rebuilt += beside.text[last:offset] + f"{THINK_OPEN}{body}{THINK_CLOSE}"
            last = offset
        assert rebuilt + beside.text[last:] == inline.text
        assert not (beside.thoughts and beside.spans)  # a page either shows its steps or gives bare results
        assert len(beside.spans) == len(inline.spans)


def test_a_shown_thought_is_the_sequence_the_aside_format_builds_at_that_position(tok):
    """The slow, obvious reference: at a shown thought, the document's tokens are the aside format's prompt
    for the bare context before it, the body, the closing delimiter, then the bare text goes on."""
    ids = shown_thought_ids(EnvConfig(format="aside"), tok)
    fmt = AsideFormat(*ids, thought_tokens=16, answer_tokens=4, eos_ids=(), token_bytes=TokenBytes(tok))
    text = "the cat sat on the mat. the dog ran to the door."
    body = tok("a dog", add_special_tokens=False)["input_ids"]
    for offset in (24, text.index(" ran")):  # before "the" (after a lone " " token) and before " ran"
        doc = Document("d", text, "t", thoughts=((offset, "a dog"),))
        tokens, _ = tokenize_document(doc, tok, ids)
        enc = tok(doc.text, add_special_tokens=False, return_offsets_mapping=True)
        bare, offsets = enc["input_ids"], enc["offset_mapping"]
        t = first_token_at(doc.text, offsets, offset)
        # prompt + thought + close + the space the aside was moved before, then the text goes on
        expected = fmt.prompt(bare[:t]) + body + [ids[1]] + fmt.bridge(bare[:t]) + bare[t:]
        assert tokens.tolist() == expected
        assert tok.decode(tokens.tolist()).replace(" (a dog)", "") == text
    first, _ = tokenize_document(Document("d", text, "t", thoughts=((24, "a dog"),)), tok, ids)
    assert "mat. (a dog) the dog" in tok.decode(first.tolist())  # as a writer puts it, not "mat.  (a dog)the"


def test_computed_positions_move_past_the_thoughts_inserted_before_them(tok):
    ids = shown_thought_ids(EnvConfig(format="aside"), tok)
    text = "the cat sat on the mat. the dog ran to the door."
    doc = Document("d", text, "t", spans=((text.index("door"), len(text) - 1),), thoughts=((4, "a cat"),))
    tokens, positions = tokenize_document(doc, tok, ids)
    bare_tokens, bare_positions = tokenize_document(Document("d", text, "t", spans=doc.spans), tok, ids)
    shift = len(tok("a cat", add_special_tokens=False)["input_ids"]) + 2
    assert positions == [p + shift for p in bare_positions]
    assert tokens[positions[0]] == bare_tokens[bare_positions[0]]
    # cut: a position past max_tokens is dropped with its tokens
    cut, kept = tokenize_document(doc, tok, ids, max_tokens=positions[0])
    assert len(cut) == positions[0] and kept == []


def test_a_format_without_delimiters_cannot_show_thoughts(tok):
    doc = Document("synthetic:0:7", "the cat sat on the mat.", "t", thoughts=((4, "a cat"),))
    with pytest.raises(DataError, match="synthetic:0:7.*env.format"):
        tokenize_document(doc, tok, None)
    assert shown_thought_ids(EnvConfig(format="prompted"), tok) is None


def test_split_documents_keep_their_thoughts():
    text = "aaaaaaa\n" * 8 + "bbbbbbb\n" * 8  # two pieces of 64 characters
    doc = Document("d", text, "t", spans=((66, 70),), thoughts=((64, "x"), (3, "y")))
    pieces = clean(doc, DataConfig(max_chars=64, min_chars=1), log=None)
    assert [p.text for p in pieces] == [text[:64], text[64:]]
    assert [p.thoughts for p in pieces] == [((3, "y"),), ((0, "x"),)]
    assert [p.spans for p in pieces] == [(), ((2, 6),)]


def test_selection_writes_shown_thoughts_and_keeps_positions_out_of_them(tok):
    ids = shown_thought_ids(EnvConfig(format="aside"), tok)
    text = "the cat sat on the mat. " * 6
    doc = Document("d", text, "t", thoughts=((24, "the dog ran to the door"),))
    cfg = SelectionConfig(context=16, min_entropy=0.0, skip_first=1, max_positions_per_doc=500, top_k=8)
    index = select_positions(
        [doc],
        tok,
        tiny_llama(len(tok)),
        cfg,
        DataConfig(heldout_fraction=0.5),
        None,
        torch.device("cpu"),
        thought_ids=ids,
    )
    tokens = index.doc_tokens["d"]
    assert tokens.tolist() == tokenize_document(doc, tok, ids)[0].tolist()
    start = tokens.tolist().index(ids[0])
    end = tokens.tolist().index(ids[1])
    assert index.position and not any(start <= p <= end for p in index.position)


def test_warm_up_trains_on_the_shown_thoughts_and_is_cached(tmp_path, tok, monkeypatch):
    from nextrl.model import warmup as W
    from nextrl.model.pretrain import BaseModel

    cfg = RunConfig.model_validate(
        {
            "data": {
                "sources": [{"kind": "synthetic", "synthetic": {"documents": 40, "thoughts": "beside"}}]
            },
            "env": {"format": "aside"},
            "warmup": {"tokens": 2 * 4 * 32, "seq_len": 32, "batch_size": 4, "lr": 1e-3},
            "pretrain": {"cache_dir": str(tmp_path)},
        }
    )
    ids = shown_thought_ids(cfg.env, tok)
    seen: list[torch.Tensor] = []
    real_train_lm = W.train_lm

    def recording_train_lm(model, batch_fn, **kw):
        seen.extend(batch_fn(s)[0] for s in range(kw["steps"]))
        return real_train_lm(model, batch_fn, **kw)

    monkeypatch.setattr(W, "train_lm", recording_train_lm)
    model = tiny_llama(len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    warmed = W.warm_up(cfg, BaseModel(model, tok, None, {"flops": 0.0}), ids, torch.device("cpu"), None, None)
    assert len(seen) == 2 and any(ids[0] in b.tolist()[0] or ids[0] in b.flatten().tolist() for b in seen)
    assert any(not torch.equal(before[k], v) for k, v in warmed.model.state_dict().items())
    assert warmed.info["warmup_steps"] == 2 and warmed.info["warmup_flops"] > 0
    # a second run with the same shaping config loads the warmed model instead of training again
    seen.clear()
    again = W.warm_up(
        cfg, BaseModel(tiny_llama(len(tok)), tok, None, {}), ids, torch.device("cpu"), None, None
    )
    assert seen == [] and again.info["warmup_steps"] == 2
    for k, v in warmed.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k
    # the cache key changes with what shapes the warmed model
    other = cfg.model_copy(update={"warmup": cfg.warmup.model_copy(update={"lr": 2e-3})})
    assert W.warmup_key(other, ids, 100) != W.warmup_key(cfg, ids, 100)
    assert W.warmup_key(cfg, (ids[1], ids[0]), 100) != W.warmup_key(cfg, ids, 100)
    assert W.warmup_key(cfg, ids, 101) != W.warmup_key(cfg, ids, 100)
    assert np.isfinite(warmed.info["warmup_final_loss"])


def test_a_killed_warm_up_resumes_from_its_checkpoint(tmp_path, tok, monkeypatch):
    """Killed after step 3 of 4 (checkpoint every 2), `resume` goes on from step 2 and ends at the weights an
    unbroken warm-up reaches; a checkpoint of another warm-up is not read; the checkpoints go once cached."""
    from nextrl.model import warmup as W
    from nextrl.model.pretrain import BaseModel
    from nextrl.trainer.checkpoint import StageCheckpoints

    def config(cache: str, lr: float = 1e-3) -> RunConfig:
        return RunConfig.model_validate(
            {
                "data": {
                    "sources": [{"kind": "synthetic", "synthetic": {"documents": 40, "thoughts": "beside"}}]
                },
                "env": {"format": "aside"},
                "warmup": {
                    "tokens": 4 * 4 * 32,
                    "seq_len": 32,
                    "batch_size": 4,
                    "lr": lr,
                    "checkpoint_every": 2,
                },
                "pretrain": {"cache_dir": str(tmp_path / cache)},
            }
        )

    ids = shown_thought_ids(config("a").env, tok)
    init = tiny_llama(len(tok)).state_dict()

    def warm(cfg, resume, ckpt):
        model = tiny_llama(len(tok))
        model.load_state_dict(init)
        base = BaseModel(model, tok, None, {"flops": 0.0})
        kept = StageCheckpoints(ckpt, W.warmup_key(cfg, ids, len(tok)), cfg.warmup.checkpoint_every, resume)
        return W.warm_up(cfg, base, ids, torch.device("cpu"), None, None, kept)

    unbroken = warm(config("a"), False, tmp_path / "run_a" / "checkpoints")
    assert not (tmp_path / "run_a").exists()  # cached: its checkpoints (and their empty folder) are gone

    real_train_lm, started = W.train_lm, []

    def killed_after_step_3(model, batch_fn, **kw):
        started.append(kw["start_step"])

        def batches(step):
            if step == 3 and len(started) == 1:
                raise KeyboardInterrupt
            return batch_fn(step)

        return real_train_lm(model, batches, **kw)

    monkeypatch.setattr(W, "train_lm", killed_after_step_3)
    ckpt = tmp_path / "run_b" / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        warm(config("b"), False, ckpt)
    assert (ckpt / "step-000002").is_dir()
    resumed = warm(config("b"), True, ckpt)
    assert started == [0, 2] and resumed.info["warmup_steps"] == 4
    for k, v in unbroken.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)
    assert not ckpt.exists()

    started.clear()  # a checkpoint left by another warm-up (here another lr) is not resumed from
    with pytest.raises(KeyboardInterrupt):
        warm(config("c", lr=2e-3), False, ckpt)
    warm(config("d"), True, ckpt)
    assert started == [0, 0]


def test_the_units_digit_can_be_the_computed_position():
    """`computed_digit: last`: each span is one digit ending a number whose other digits precede it, and a
    shown thought sits right before that digit; `first` is unchanged."""
    arithmetic = {"add": 1.0, "multiply": 1.0}  # multi-digit results (a list task's item is one character)
    for i in range(30):
        last = synthetic_document(
            SyntheticConfig(tasks=arithmetic, computed_digit="last", thoughts="beside"), i
        )
        first = synthetic_document(SyntheticConfig(tasks=arithmetic, thoughts="beside"), i)
        assert last.text == first.text
        for (a, b), (_, b0) in zip(last.spans, first.spans, strict=True):
            assert (a, b) == (b0 - 1, b0) and last.text[a].isdigit() and not last.text[b].isdigit()
        for (offset, body), (offset0, body0) in zip(last.thoughts, first.thoughts, strict=True):
            assert body == body0 and offset > offset0 and last.text[offset0:offset].isdigit()
            assert not last.text[offset + 1].isdigit()


def test_a_run_without_a_proxy_selects_and_evaluates_the_computed_positions(tmp_path):
    """The micro job on synthetic pages with `selection.proxy: none`: no position is scored, RL and the
    evaluation see only the computed results, and the summary says no entropy was measured."""
    synthetic = (
        "data.sources=[{kind: synthetic, synthetic: {documents: 80, tasks: {add: 1}, digits: 2, problems: 4, "
        "worked_fraction: 0.3, guess_fraction: 0.3}}]"
    )
    cfg = load_config(
        "micro", ["model.dtype=float32", synthetic, "selection.proxy=none", "baseline.enabled=false"]
    )
    summary = run(cfg, tmp_path)
    index = PositionIndex.load(tmp_path / "index")
    assert len(index) > 0 and set(index.bucket) == {"computed"}
    assert summary["selection"].get("mean_entropy") is None  # left out of summary.json
    outcomes = pq.read_table(tmp_path / "eval" / "outcomes.parquet").to_pydict()
    assert set(outcomes["bucket"]) == {"computed"}


def test_no_proxy_on_a_corpus_without_marked_spans_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="selection.proxy 'none' keeps only the `computed` spans"):
        run(load_config("micro", ["model.dtype=float32", "selection.proxy=none"]), tmp_path)


def test_the_trailing_run_an_aside_goes_before_by_hand():
    """Whitespace tokens, and a currency sign with a space before it (Gemma's " $", or " " then "$"), move
    after the thought; a sign glued to a word ("US$") and a lone run of whitespace do not."""
    from nextrl.data.shown_thoughts import before_trailing_space

    def at(*pieces: str) -> int:
        return before_trailing_space(list(range(len(pieces))), lambda i: pieces[i].encode())

    assert at("It", " costs", " $") == 2  # "It costs (…) $10"
    assert at("It", " costs", " $", " ") == 2  # "$ 10"
    assert at("It", " costs", " ", "$") == 2
    assert at("is", " €") == 1 and at("is", " £") == 1 and at("is", " ¥") == 1
    assert at("US", "$") == 2  # no space before the sign: the aside stays after it
    assert at("=", " ") == 1 and at("=", " ", " ") == 1 and at("x", "=") == 2
    assert at(" ", " $") == 2 and at("", " ") == 2  # nothing but whitespace (or a special token) before it
