"""The info-gain metric: hand values, and `evaluate_information_gain` against plain full forwards per task."""

from __future__ import annotations

import math

import pytest
import torch

from nextrl.config.schema import EnvConfig
from nextrl.engine.base import Rollout
from nextrl.env import NextTokenEnv
from nextrl.env.formats import closed_thought
from nextrl.eval.info_gain import evaluate_information_gain, information_gain_nats
from nextrl.model.tokenizer import train_bpe_tokenizer
from tiny_models import tiny_llama

TEXT = "the cat sat on the mat. the dog ran to the river. a bird looked at the big house."


@pytest.fixture(scope="module")
def tok():
    subj = ["the cat", "the dog", "a bird", "my friend", "the old man"]
    verbs = ["sat on", "ran to", "looked at", "walked past"]
    objs = ["the mat", "the door", "a tree", "the river", "the big house"]
    return train_bpe_tokenizer([f"{s} {v} {o}." for s in subj for v in verbs for o in objs], vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops gain nothing from threads on a busy 2-core machine
    m = tiny_llama(len(tok), max_positions=128).eval()
    # make </think> the greedy choice after some tokens, so both closings (stop and forced) are exercised
    close = tok.convert_tokens_to_ids("</think>")
    with torch.no_grad():
        m.lm_head.weight[close] = m.lm_head.weight[tok.convert_tokens_to_ids("Ġthe")] * 3.0
    yield m
    torch.set_num_threads(threads)


def test_information_gain_nats_by_hand():
    got = information_gain_nats([-1.0, -2.0, -3.0], torch.tensor([-2.0, -2.0, -5.0]))
    # differences 1, 0, 2: mean 1, sample std 1, stderr 1/√3
    assert got["n"] == 3
    assert got["mean"] == pytest.approx(1.0)
    assert got["stderr"] == pytest.approx(1 / math.sqrt(3))
    one = information_gain_nats([0.5], [0.0])
    assert one["mean"] == 0.5 and math.isnan(one["stderr"])
    assert math.isnan(information_gain_nats([], [])["mean"])
    with pytest.raises(ValueError):
        information_gain_nats([1.0], [1.0, 2.0])


def testclosed_thought():
    close, eos = 9, (2,)

    def ro(ids, starts):
        return Rollout([], ids, [0.0] * len(ids), [1] * len(ids), "stop", phase_starts=starts)

    assert closed_thought(ro([5, 6, close, 7], [0, 3]), close, eos) == ([5, 6, close], False)
    assert closed_thought(ro([5, 6, close], [0]), close, eos) == ([5, 6, close], False)
    assert closed_thought(ro([5, 2], [0, 2]), close, eos) == (
        [5, close],
        True,
    )  # ended by eos in the thought


def greedy_thought(model, prompt, budget, close, eos):
    """Reference: greedy decoding with a full, uncached forward per token."""
    ids, thought = list(prompt), []
    for _ in range(budget):
        t = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if t in eos:
            return thought + [close]
        thought.append(t)
        ids.append(t)
        if t == close:
            return thought
    return thought + [close]


def logp_next(model, prefix, target):
    logits = model(input_ids=torch.tensor([prefix])).logits[0, -1].float()
    return float(torch.log_softmax(logits, -1)[target])


@pytest.mark.parametrize("thought_tokens", [0, 5])
def test_matches_plain_forwards(tok, model, thought_tokens):
    env = NextTokenEnv(EnvConfig(thought_tokens=thought_tokens, target_tokens=2), tok)
    doc = tok(TEXT)["input_ids"]
    positions = [0, 1, 3, 6, 9, 12, len(doc) - 1]  # short and long contexts (padding); 0 has no context
    tasks = [env.make_task("d", doc, p, context=8) for p in positions]
    got = evaluate_information_gain(model, tok, env, tasks, autocast=None, batch_size=4)

    diffs, lengths, closed_by_stop = [], [], 0
    with torch.no_grad():
        for t in tasks[1:]:
            thought = greedy_thought(
                model, t.prompt_ids, thought_tokens, env.thought_format.close, env.eos_ids
            )
            if thought_tokens == 0:
                thought = []
            target = t.meta["target_ids"][0]
            diffs.append(
                logp_next(model, t.prompt_ids + thought, target)
                - logp_next(model, t.meta["context_ids"], target)
            )
            lengths.append(len(thought))
            closed_by_stop += len(thought) <= thought_tokens and thought_tokens > 0
    want = information_gain_nats(diffs, [0.0] * len(diffs))
    assert got["n"] == len(positions) - 1 and got["skipped"] == 1
    assert got["mean"] == pytest.approx(want["mean"], abs=1e-4)
    assert got["stderr"] == pytest.approx(want["stderr"], abs=1e-4)
    assert got["thought_tokens"] == pytest.approx(sum(lengths) / len(lengths))
    assert abs(got["mean"]) > 1e-3  # the thought changes the prediction: a conditioning error would show
    if thought_tokens:
        assert 0 < closed_by_stop < len(lengths)  # both closings happened: sampled and forced </think>
    assert not model.training


def test_sampled_thoughts_are_reproducible(tok, model):
    env = NextTokenEnv(EnvConfig(thought_tokens=4, target_tokens=1), tok)
    doc = tok(TEXT)["input_ids"]
    tasks = [env.make_task("d", doc, p, context=8) for p in (4, 8, 12)]
    a = evaluate_information_gain(model, tok, env, tasks, None, thought_temperature=1.0, seed=3)
    b = evaluate_information_gain(model, tok, env, tasks, None, thought_temperature=1.0, seed=3)
    assert a == b and math.isfinite(a["mean"])


def test_prompted_format_is_rejected(tok, model):
    env = NextTokenEnv(EnvConfig(format="prompted"), tok)
    with pytest.raises(ValueError, match="structured"):
        evaluate_information_gain(model, tok, env, [], None)
