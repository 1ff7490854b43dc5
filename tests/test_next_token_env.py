"""NextTokenEnv on a real byte-level BPE: tasks from a document, sampling phases, rewards from hand-built rollouts."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from nextrl.config.schema import EnvConfig, RewardConfig
from nextrl.engine.base import Phase, Rollout
from nextrl.env import NextTokenEnv, build_prompt, parse_boxed_answer
from nextrl.errors import ConfigError
from nextrl.model.tokenizer import train_bpe_tokenizer
from nextrl.positions.context import context_start

DOC = "the cat sat on the mat. the café owner looked at the big house. 日本の先生 ran to the river."
# The tokenization of DOC by the fixture's tokenizer, checked in `test_fixture_tokenization`; positions below
# refer to it. "é" is one 2-byte token; "日" (3 bytes) is split after its second byte.
# fmt: off
PIECES = ["the", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", ".", "Ġthe", "Ġcaf", "Ã©", "Ġowner", "Ġlooked", "Ġat",
          "Ġthe", "Ġbig", "Ġhouse", ".", "Ġ", "æĹ", "¥æľ¬ã", "ģ®å", "ħĪ", "çĶ", "Ł", "Ġran", "Ġto", "Ġthe",
          "Ġriver", "."]
# fmt: on
SAT = 2  # position of " sat"
NIHON = 18  # position of b"\xe6\x97" (first two bytes of "日")


@pytest.fixture(scope="module")
def tok():
    subj = [
        "the cat",
        "the dog",
        "a bird",
        "my friend",
        "the old man",
        "our teacher",
        "the café owner",
        "日本の先生",
    ]
    verbs = ["sat on", "ran to", "looked at", "walked past", "slept near"]
    objs = ["the mat", "the door", "a tree", "the river", "the big house"]
    texts = [f"{s} {v} {o}." for s in subj for v in verbs for o in objs]
    return train_bpe_tokenizer(texts + [t.capitalize() for t in texts], vocab_size=350)


@pytest.fixture(scope="module")
def doc(tok) -> list[int]:
    return tok(DOC)["input_ids"]


def tid(tok, piece: str) -> int:
    return tok.convert_tokens_to_ids(piece)


def ro(
    completion: list[int], phase_starts: list[int], forced: tuple[int, ...] = (), finish: str = "stop"
) -> Rollout:
    return Rollout(
        prompt_ids=[],
        completion_ids=completion,
        logprobs=[0.0] * len(completion),
        action_mask=[0 if k in forced else 1 for k in range(len(completion))],
        finish_reason=finish,
        phase_starts=phase_starts,
    )


def test_fixture_tokenization(tok, doc):
    assert tok.convert_ids_to_tokens(doc) == PIECES


def test_make_task_structured(tok, doc):
    env = NextTokenEnv(EnvConfig(thought_tokens=4, target_tokens=3), tok)
    task = env.make_task("d1", doc, position=8, context=6, bucket="hard")
    open_, close = tid(tok, "<think>"), tid(tok, "</think>")
    assert task.prompt_ids == doc[3:8] + [open_]  # start: the first multiple of 6 // 2 leaving <= 6 tokens
    assert close not in task.prompt_ids
    assert (task.task_id, task.group_key, task.domain) == ("d1@8", "d1", "text")
    m = task.meta
    assert (m["position"], m["bucket"], m["context_ids"]) == (8, "hard", doc[3:8])
    assert m["target_ids"] == doc[8:11]
    assert m["target_bytes"] == b" caf\xc3\xa9 owner"  # " caf", "é", " owner"
    assert m["boundaries"] == [4, 6, 12]


def test_context_truncation_and_range(tok, doc):
    env = NextTokenEnv(EnvConfig(thought_tokens=4), tok)
    assert env.make_task("d", doc, position=3, context=10).prompt_ids[:-1] == doc[:3]  # fewer than `context`
    assert env.make_task("d", doc, position=0, context=10).prompt_ids == [tid(tok, "<think>")]
    last = env.make_task("d", doc, position=len(doc) - 1, context=2)
    assert last.meta["target_ids"] == doc[-1:]  # the continuation is cut at the document end
    assert last.meta["boundaries"] == [1]
    with pytest.raises(ValueError):
        env.make_task("d", doc, position=len(doc), context=2)
    as_numpy = env.make_task(np.str_("d"), np.array(doc), position=np.int64(5), context=3)
    assert as_numpy == env.make_task("d", doc, position=5, context=3)
    assert type(as_numpy.meta["position"]) is int and type(as_numpy.meta["target_ids"][0]) is int


def test_sampling_phases(tok):
    close, eos = tid(tok, "</think>"), tok.eos_token_id
    sp = NextTokenEnv(EnvConfig(thought_tokens=6, answer_tokens=2), tok).sampling_params(8, 0.8, 0.95)
    assert sp.phases == (Phase(6, stop_token_ids=(close,), force_on_length=(close,)), Phase(2))
    assert (sp.n, sp.temperature, sp.top_p, sp.eos_token_ids) == (8, 0.8, 0.95, (eos,))
    assert sp.max_new_tokens == 6 + 1 + 2
    sp0 = NextTokenEnv(EnvConfig(thought_tokens=0, answer_tokens=1), tok).sampling_params(4, 1.0, 1.0)
    assert sp0.phases == (Phase(1),)
    spp = NextTokenEnv(EnvConfig(format="prompted", thought_tokens=100), tok).sampling_params(2, 0.7, 1.0)
    assert spp.phases == (Phase(132),)
    assert spp.eos_token_ids == (eos,)


def test_structured_rewards(tok, doc):
    # a missing answer is penalised by the format term (-1) with a positive weight
    env = NextTokenEnv(
        EnvConfig(thought_tokens=3, answer_tokens=1), tok, RewardConfig(spec="prefix_match+0.5*format")
    )
    task = env.make_task("d", doc, position=SAT, context=8)
    close, eos = tid(tok, "</think>"), tok.eos_token_id
    a, b = tid(tok, "Ġcat"), tid(tok, "Ġmat")  # arbitrary thought tokens
    rollouts = [
        ro([a, close, tid(tok, "Ġsat")], [0, 2]),  # sampled </think>, right answer
        ro([a, b, a, close, tid(tok, "Ġsat")], [0, 4], forced=(3,)),  # forced </think>, right answer
        ro([a, close, tid(tok, "Ġmat")], [0, 2]),  # wrong answer
        ro([a, close, tid(tok, "Ġ")], [0, 2]),  # ends inside " sat"
        ro([a, eos], [0], finish="eos"),  # eos inside the thought: no answer phase
        ro([a, close, eos], [0, 2], finish="eos"),  # answer phase produced only eos
    ]
    rewards = env.score([task], [rollouts])[0]
    assert [r.total for r in rewards] == [1.0, 1.0, 0.0, 0.0, -0.5, -0.5]
    assert [r.parsed for r in rewards] == [True, True, True, True, False, False]
    assert [r.components["prefix_match"] for r in rewards] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert [r.components["format"] for r in rewards] == [0.0, 0.0, 0.0, 0.0, -1.0, -1.0]
    assert [r.answer for r in rewards] == [" sat", " sat", " mat", " ", None, None]
    assert env.answer_bytes(task, rollouts[0]) == b" sat"
    with pytest.raises(ValueError):  # an engine that records no phases is a bug, not a missing answer
        env.answer_bytes(task, ro([a, close, tid(tok, "Ġsat")], []))
    with pytest.raises(ValueError):
        env.score([task], [])


def test_multi_token_answer_is_byte_level(tok, doc):
    env = NextTokenEnv(EnvConfig(thought_tokens=2, answer_tokens=4), tok)
    task = env.make_task("d", doc, position=SAT, context=8)  # continuation " sat", " on", " the", ...
    close = tid(tok, "</think>")
    sp, s, a, t = (tid(tok, p) for p in ["Ġ", "s", "a", "t"])
    answers = {
        (tid(tok, "Ġsat"), tid(tok, "Ġon")): 1.0,  # two true tokens, ends on a boundary
        (sp, s, a, t): 1.0,  # " sat" spelled byte by byte: same bytes, same reward
        (sp, s, a): 0.0,  # " sa" ends inside " sat"
        (tid(tok, "Ġsat"), sp): 0.0,  # " sat " ends inside " on"
    }
    rollouts = [ro([close, *ans], [0, 1]) for ans in answers]
    assert [r.total for r in env.score([task], [rollouts])[0]] == list(answers.values())


def test_multibyte_target(tok, doc):
    env = NextTokenEnv(EnvConfig(thought_tokens=0, answer_tokens=2, target_tokens=2), tok)
    task = env.make_task("d", doc, position=NIHON, context=4)
    assert task.meta["target_bytes"] == "日本の".encode()[:7]  # b"\xe6\x97" + b"\xa5\xe6\x9c\xac\xe3"
    assert task.meta["boundaries"] == [2, 7]
    ids = [tid(tok, "æĹ")]
    assert env.score([task], [[ro(ids, [0])]])[0][0].total == 1.0  # a true, if mid-character, boundary
    nichi = tok("日", add_special_tokens=False)["input_ids"]  # the whole 3-byte character ends inside a token
    assert env.token_bytes.join(nichi) == b"\xe6\x97\xa5"
    assert env.score([task], [[ro(nichi[:2], [0])]])[0][0].total == 0.0


def test_no_thought_budget(tok, doc):
    env = NextTokenEnv(EnvConfig(thought_tokens=0), tok, RewardConfig(spec="prefix_match+format"))
    task = env.make_task("d", doc, position=SAT, context=2)
    assert task.prompt_ids == doc[:2] + [tid(tok, "<think>"), tid(tok, "</think>")]
    sat = tid(tok, "Ġsat")
    assert env.answer_bytes(task, ro([sat], [0])) == b" sat"
    assert env.answer_bytes(task, ro([sat], [])) == b" sat"  # one phase: starts at 0 even if unrecorded
    rewards = env.score([task], [[ro([sat], [0]), ro([tok.eos_token_id], [0], finish="eos")]])[0]
    assert [(r.total, r.parsed) for r in rewards] == [(1.0, True), (-1.0, False)]


def test_standard_prediction(tok, doc):
    env = NextTokenEnv(EnvConfig(), tok)
    task = env.make_task("d", doc, position=SAT, context=8)
    assert env.standard_prediction_correct(task, tid(tok, "Ġsat"))
    assert not env.standard_prediction_correct(task, tid(tok, "Ġ"))
    assert not env.standard_prediction_correct(task, tid(tok, "Ġcat"))
    assert not env.standard_prediction_correct(task, tok.eos_token_id)  # 0 bytes: never correct


def test_prompted_task_and_rewards(tok, doc):
    env = NextTokenEnv(
        EnvConfig(format="prompted", max_answer_chars=8), tok, RewardConfig(spec="prefix_match+0.25*format")
    )
    task = env.make_task("d", doc, position=SAT, context=2)
    assert tok.decode(task.prompt_ids) == build_prompt("the cat")
    assert task.prompt_ids == tok(build_prompt("the cat"))["input_ids"]
    assert task.meta["target_ids"][0] == tid(tok, "Ġsat")

    def completion(text: str) -> Rollout:
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return ro(ids, [0], finish="eos")

    texts = [
        "a cat usually sits</think> so \\boxed{ sat}",  # right, leading space kept
        "</think>\\boxed{sat}",  # no leading space: wrong
        "</think>\\boxed{ sat on}",  # two true tokens
        "\\boxed{ sat} but no end of thought",  # no </think>
        "</think>\\boxed{ sat on the mat}",  # longer than max_answer_chars
        "</think>\\boxed{ sat",  # unterminated
    ]
    rewards = env.score([task], [[completion(t) for t in texts]])[0]
    assert [r.total for r in rewards] == [1.0, 0.0, 1.0, -0.25, -0.25, -0.25]
    assert [r.answer for r in rewards] == [" sat", "sat", " sat on", None, None, None]


def test_prompted_chat_template(tok, doc):
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    env = NextTokenEnv(EnvConfig(format="prompted"), chat_tok)
    task = env.make_task("d", doc, position=SAT, context=2)
    assert chat_tok.decode(task.prompt_ids) == "[user] " + build_prompt("the cat") + "\n[assistant] "


def test_structured_needs_think_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(["plain text only"], trainer=trainer)
    bare = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    with pytest.raises(ValueError, match="think"):
        NextTokenEnv(EnvConfig(format="structured"), bare)
    assert NextTokenEnv(EnvConfig(format="prompted"), bare).name == "next_token"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("</think>\\boxed{ the}", " the"),  # leading space preserved
        ("</think>\\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),  # nested braces
        ("</think>\\boxed{a} then \\boxed{b}", "b"),  # last box wins
        ("think \\boxed{a}</think> \\boxed{b}", "b"),  # boxes inside the thought are ignored
        ("\\boxed{a}</think> no box", None),  # boxed only before </think>
        ("\\boxed{a}", None),  # no </think>
        ("</think>\\boxed{a", None),  # unterminated
        ("</think>\\boxed{a} \\boxed{b", None),  # the last box is unterminated
        ("</think>\\boxed{}", ""),  # an empty box parses (and scores 0)
        ("</think>\\boxed{{x}}", "{x}"),
    ],
)
def test_parse_boxed_answer(text, expected):
    assert parse_boxed_answer(text) == expected


def test_parse_boxed_answer_length_limit():
    assert parse_boxed_answer("</think>\\boxed{abcd}", max_answer_chars=4) == "abcd"
    assert parse_boxed_answer("</think>\\boxed{abcde}", max_answer_chars=4) is None


def test_context_start_stripes():
    # reference: the smallest multiple of the stride that leaves at most `context` tokens
    for context in (1, 2, 5, 8, 128):
        stride = max(1, context // 2)
        for position in range(0, 400):
            start = context_start(position, context)
            if position <= context:
                assert start == 0
                continue
            assert start % stride == 0 and position - start <= context
            assert position - (start - stride) > context  # the previous stride would be too long
            assert position - start >= context - stride + 1  # at least about half the context
    # positions of one stripe share the start, hence the prompt prefix
    assert {context_start(p, 8) for p in range(13, 17)} == {8}


def test_format_weight_must_be_a_penalty(tok):
    """`format` is −1 for a missing answer: a negative weight would reward one (the README once showed it)."""
    with pytest.raises(ConfigError, match="negative weight.*rewards"):
        NextTokenEnv(EnvConfig(), tok, RewardConfig(spec="prefix_match-format"))


def test_a_tokenizer_that_starts_every_text_with_bos_gets_it_before_every_context():
    """Gemma and Llama 3 were pretrained with <bos> at the start of every sequence: a context read without it
    predicts worse. nextrl's own BPE and Qwen's tokenizer add nothing, and their prompts are unchanged."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from nextrl.config import EnvConfig
    from nextrl.env import NextTokenEnv
    from nextrl.model.tokenizer import document_prefix, ensure_think_tokens

    vocab = {"<bos>": 0, "<eos>": 1, "a": 2, "b": 3, "c": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    tok = ensure_think_tokens(
        PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")
    )
    assert document_prefix(tok) == [0]
    env = NextTokenEnv(EnvConfig(), tok)
    doc = tok("a b c a b c a b", add_special_tokens=False)["input_ids"]
    task = env.make_task("d", doc, position=6, context=4)
    assert task.meta["context_ids"] == [0, *doc[2:6]]  # <bos>, then the window from its start
    assert task.prompt_ids[: len(task.meta["context_ids"])] == task.meta["context_ids"]
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<eos>")))
    assert document_prefix(plain) == []
