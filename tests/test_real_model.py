"""The real-model path on CPU: the `qwen-gpu` preset's code path (prompted format, Qwen3's chat template with
thinking on, <|im_end|> as end of turn, a Hugging Face model from a folder) end to end, with Qwen3's real
tokenizer and a tiny randomly initialised Qwen3ForCausalLM. Skips where ../shared/data/qwen3_tokenizer is
absent (users' machines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "qwen3_tokenizer"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TOKENIZER.is_dir(), reason="needs ../shared/data/qwen3_tokenizer"),
]


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("qwen3-tiny")
    Qwen3ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_prompt_is_the_chat_template_with_thinking(tiny_qwen3):
    from transformers import AutoTokenizer

    from nextrl.config import load_config
    from nextrl.env import NextTokenEnv

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    cfg = load_config("qwen-gpu", [f"model.path={tiny_qwen3}", "device=cpu"])
    env = NextTokenEnv(cfg.env, tok)
    doc = tok("def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n")["input_ids"]
    task = env.make_task("d", doc, position=len(doc) - 3, context=64)
    text = tok.decode(task.prompt_ids)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "\\boxed{" in text  # RPT's instruction: the answer goes in a box after the thought
    ends = {tok.convert_ids_to_tokens(i) for i in env.eos_ids}
    assert {"<|im_end|>", "<|endoftext|>"} <= ends  # a chat turn ends at <|im_end|>
    off = NextTokenEnv(cfg.env.model_copy(update={"enable_thinking": False}), tok)
    assert tok.decode(off.make_task("d", doc, len(doc) - 3, 64).prompt_ids).endswith(
        "<think>\n\n</think>\n\n"
    )


def test_qwen_gpu_preset_runs_end_to_end_on_cpu(tiny_qwen3, tmp_path):
    from nextrl.config import load_config
    from nextrl.pipeline import run

    overrides = [
        f"model.path={tiny_qwen3}",
        "device=cpu",
        "model.dtype=float32",
        "data.sources=[{kind: stdlib, max_documents: 40}]",
        "data.heldout_fraction=0.25",
        "selection.context=64",
        "selection.max_documents=12",
        "selection.max_doc_tokens=200",
        "selection.max_positions_per_doc=4",
        "selection.skip_first=8",
        "env.thought_tokens=12",
        "env.target_tokens=4",
        "sampling.group_size=2",
        "sampling.batch_size=16",
        "rl.steps=2",
        "positions.per_step=2",
        "rl.micro_batch_size=4",
        "rl.checkpoint_every=1",
        "baseline.batch_size=2",
        "baseline.seq_len=64",
        "eval.positions=8",
        "eval.batch_size=8",
        "eval.perplexity_tokens=256",
    ]
    summary = run(load_config("qwen-gpu", overrides), tmp_path / "run")
    assert summary["steps"]["rl"] == 2 and summary["models"] == ["base", "baseline", "rl"]
    assert summary["config"]["env"]["format"] == "prompted"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "rl"] == [1, 2]
    # the trained policy is a Qwen3 checkpoint again
    assert (
        json.loads((tmp_path / "run" / "models" / "rl" / "config.json").read_text())["model_type"] == "qwen3"
    )
