import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nextrl.config import DataConfig, RunConfig, SelectionConfig
from nextrl.data import Document
from nextrl.positions import PositionIndex, bucket_of, score_document, select_positions, topk_entropy


def _reference_entropy(logits: list[float], k: int) -> float:
    top = sorted(logits, reverse=True)[:k]
    z = sum(math.exp(x) for x in top)
    ps = [math.exp(x) / z for x in top]
    return -sum(p * math.log(p) for p in ps)


def test_topk_entropy_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=g) * 3
    got = topk_entropy(logits, 16)
    for i in range(5):
        assert abs(got[i].item() - _reference_entropy(logits[i].tolist(), 16)) < 1e-5
    # uniform over the top-k: entropy log k; one dominant token: near 0
    assert abs(topk_entropy(torch.zeros(1, 50), 16).item() - math.log(16)) < 1e-5
    assert topk_entropy(torch.tensor([[100.0] + [0.0] * 30]), 16).item() < 1e-6


def test_buckets():
    b = {"easy": 0.5, "medium": 1.0, "hard": 1.5}
    assert bucket_of(0.5, b) is None
    assert bucket_of(0.51, b) == "easy"
    assert bucket_of(1.0, b) == "easy"
    assert bucket_of(1.2, b) == "medium"
    assert bucket_of(7.0, b) == "hard"


def _model(vocab=50):
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    )


def test_score_document_uses_left_context():
    model = _model().eval()
    tokens = np.random.default_rng(0).integers(0, 50, size=70)
    ent = score_document(model, tokens, context=16, top_k=8, autocast=None, device=torch.device("cpu"))
    assert np.isnan(ent[0]) and not np.isnan(ent[1:]).any()
    # Position t scored with a window: recompute a few with their own window and compare
    for t in (5, 20, 41, 69):
        start = 0 if t <= 16 else None
        if start is None:  # scored in the window where it has >= context/2 tokens of left context
            found = False
            for s in range(0, 70, 8):
                if s + 7 <= t - 1 < s + 16:
                    w = torch.as_tensor(tokens[s:t]).unsqueeze(0)
                    ref = topk_entropy(model(input_ids=w).logits[0, -1], 8).item()
                    found = found or abs(ref - ent[t]) < 1e-4
            assert found, t
        else:
            with torch.no_grad():
                ref = topk_entropy(
                    model(input_ids=torch.as_tensor(tokens[:t]).unsqueeze(0)).logits[0, -1], 8
                ).item()
            assert abs(ref - ent[t]) < 1e-4


class _CharTok:
    """A stand-in tokenizer: one token per character code mod 50; '{' and '}' stand for <think> and </think>."""

    all_special_ids = [ord("{") % 50, ord("}") % 50]

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        out = {"input_ids": [ord(c) % 50 for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out

    def convert_tokens_to_ids(self, token):
        return {"<think>": ord("{") % 50, "</think>": ord("}") % 50}[token]


def test_select_positions_and_roundtrip(tmp_path):
    docs = [Document(f"d{i}", "".join(chr(97 + (i * j) % 26) for j in range(90)), "t") for i in range(12)]
    cfg = SelectionConfig(context=16, min_entropy=0.5, skip_first=4, max_positions_per_doc=5, top_k=8)
    index = select_positions(
        docs, _CharTok(), _model(), cfg, DataConfig(heldout_fraction=0.3), None, torch.device("cpu"), seed=0
    )
    assert 0 < len(index) <= 5 * len(docs)
    assert all(p >= 4 for p in index.position)
    assert all(e > 0.5 for e in index.entropy)
    assert set(index.split) <= {"train", "heldout"}
    # a document's positions are all in its document's split
    for d, s in zip(index.doc_id, index.split, strict=True):
        assert index.doc_split[d] == s
    index.save(tmp_path)
    back = PositionIndex.load(tmp_path)
    assert back.position == index.position and back.bucket == index.bucket and back.doc_id == index.doc_id
    assert all((back.doc_tokens[d] == index.doc_tokens[d]).all() for d in index.doc_tokens)
    assert back.stats()["positions"] == index.stats()["positions"]


def test_computed_positions_are_kept_and_shown_thoughts_skipped():
    """The first token of each computed span is a `computed` position whatever the proxy's entropy; nothing
    inside a shown thought and no special token is a position."""
    text = "abcdefghij total {steps} 47 and more text here, then 85 and 9 to end the line of text"
    a, b, c = text.index("47"), text.index("85"), text.index(" 9 ") + 1
    docs = [Document("d0", text, "synthetic", ((a, a + 2), (b, b + 2), (c, c + 1)))]
    cfg = SelectionConfig(context=16, min_entropy=0.0, skip_first=4, max_positions_per_doc=1000, top_k=8)
    index = select_positions(docs, _CharTok(), _model(), cfg, DataConfig(), None, torch.device("cpu"))
    got = {p: bkt for p, bkt in zip(index.position, index.bucket, strict=True)}
    assert {p for p, bkt in got.items() if bkt == "computed"} == {a, b, c}
    thought = range(text.index("{"), text.index("}") + 1)
    assert not set(thought) & set(got)
    assert a + 1 in got and got[a + 1] != "computed"  # the second digit is an ordinary position


def test_no_proxy_keeps_exactly_the_computed_positions():
    """`selection.proxy: none` scores nothing: the index holds the computed rows a scored selection keeps (same
    documents, tokens and splits), each with a NaN entropy, and its stats say nothing was scored."""
    text = "abcdefghij total 47 and more text here, then 85 and 9 to end the line of text"
    a, b, c = text.index("47"), text.index("85"), text.index(" 9 ") + 1
    docs = [Document(f"d{i}", text, "synthetic", ((a, a + 2), (b, b + 2), (c, c + 1))) for i in range(6)]
    cfg = SelectionConfig(context=16, min_entropy=0.0, skip_first=4, max_positions_per_doc=1000, top_k=8)
    data = DataConfig(heldout_fraction=0.5)
    scored = select_positions(docs, _CharTok(), _model(), cfg, data, None, torch.device("cpu"))
    bare = select_positions(docs, _CharTok(), None, cfg, data, None, torch.device("cpu"))
    computed = [
        (d, p, s)
        for d, p, bkt, s in zip(scored.doc_id, scored.position, scored.bucket, scored.split, strict=True)
        if bkt == "computed"
    ]
    assert list(zip(bare.doc_id, bare.position, bare.split, strict=True)) == computed
    assert set(bare.bucket) == {"computed"} and all(np.isnan(e) for e in bare.entropy)
    assert bare.stats()["mean_entropy"] is None and scored.stats()["mean_entropy"] > 0
    assert all((bare.doc_tokens[d] == scored.doc_tokens[d]).all() for d in scored.doc_tokens)


def test_no_proxy_refuses_the_uncertain_curriculum():
    with pytest.raises(ValueError, match="curriculum.prefer"):
        RunConfig.model_validate({"selection": {"proxy": "none"}, "curriculum": {"prefer": "uncertain"}})
