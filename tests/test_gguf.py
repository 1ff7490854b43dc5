"""A real model from a GGUF file: `model.path` naming a `.gguf` file or a packaged model converts it once into the
model cache, and later loads read the converted folder. The real-model tests need the `gemma` extra (Google's
gemma-3-270m base, ~240 MB) and skip without it; the rest needs nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from nextrl.errors import ConfigError
from nextrl.model import gguf

MISSING = gguf.gguf_available("gemma-3-270m")
# Converting takes ~45 s on 2 cores; the converted folder depends only on the file's bytes, so the real-model
# tests share one under the user's model cache instead of the per-session cache the other tests use.
CACHE = Path.home() / ".cache" / "nextrl"
real_model = pytest.mark.skipif(MISSING is not None, reason=f"needs the real model: {MISSING}")


def test_gguf_references_are_told_apart():
    assert gguf.is_gguf_ref("gemma-3-270m")
    assert gguf.is_gguf_ref("/models/x.GGUF")
    assert not gguf.is_gguf_ref("/models/qwen3")
    assert not gguf.is_gguf_ref(None)
    assert gguf.resolve_model_path("/models/qwen3") == "/models/qwen3"  # a folder or hub id passes through


def test_a_missing_gguf_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'model\.path': no GGUF file at .*absent\.gguf"):
        gguf.resolve_model_path(tmp_path / "absent.gguf", tmp_path)


def test_a_packaged_model_without_its_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(
        gguf.KNOWN, "nowhere-1m", gguf.PackagedModel("nextrl_no_such_module", "pip install nowhere", "a test")
    )
    with pytest.raises(ConfigError, match="needs its package: pip install nowhere"):
        gguf.resolve_model_path("nowhere-1m", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package")
def test_a_file_that_is_not_gguf_fails_naming_it_and_leaves_no_folder(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(b"this is not a GGUF file" * 100)
    with pytest.raises(ConfigError, match="cannot convert the GGUF file .*notes.gguf"):
        gguf.resolve_model_path(bad, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("gguf-*"))  # nothing half-written in the cache


@pytest.fixture(scope="module")
def gemma_folder():
    return Path(gguf.resolve_model_path("gemma-3-270m", CACHE))


@real_model
def test_the_second_load_reads_the_converted_folder(gemma_folder, monkeypatch):
    assert (gemma_folder / gguf.MARKER).is_file() and (gemma_folder / "model.safetensors").is_file()
    config = json.loads((gemma_folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and not config.get("quantization_config")
    gguf._resolved.clear()  # as a new process: the hash finds the cached folder, nothing is converted again
    monkeypatch.setattr(gguf, "convert", lambda *a: pytest.fail("converted twice"))
    assert Path(gguf.resolve_model_path("gemma-3-270m", CACHE)) == gemma_folder


@real_model
def test_the_real_model_continues_a_sentence(gemma_folder):
    import torch

    from nextrl.model.build import load_model
    from nextrl.model.tokenizer import load_tokenizer

    tok = load_tokenizer("gemma-3-270m", CACHE)
    model = load_model("gemma-3-270m", vocab_size=len(tok), cache_dir=CACHE)
    ids = tok("The capital of France is Paris. The capital of Germany is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1] :]).startswith(" Berlin")


@real_model
@pytest.mark.slow
def test_one_rl_step_of_the_real_model_through_the_gguf_path(gemma_folder, tmp_path):
    """The real-model preset's code path on a few positions: model.path names the .gguf file itself, one RL
    step, and the trained policy is written back as a Gemma 3 checkpoint."""
    from nextrl.config import load_config
    from nextrl.pipeline import run

    source = json.loads((gemma_folder / gguf.MARKER).read_text())["source"]  # the assembled .gguf file
    overrides = [
        f"model.path={source}",
        f"pretrain.cache_dir={CACHE}",
        "data.sources=[{kind: pydoc, max_documents: 6}]",
        "data.heldout_fraction=0.5",
        "selection.context=64",
        "selection.max_documents=4",
        "selection.max_doc_tokens=160",
        "selection.max_positions_per_doc=4",
        "env.thought_tokens=4",
        "sampling.group_size=2",
        "rl.steps=1",
        "positions.per_step=2",
        "rl.micro_batch_size=4",
        "baseline.enabled=false",
        "eval.positions=4",
        "eval.perplexity_tokens=128",
    ]
    summary = run(load_config("gemma-cpu", overrides), tmp_path / "run")
    assert summary["steps"]["rl"] == 1 and summary["models"] == ["base", "rl"]
    config = json.loads((tmp_path / "run" / "models" / "rl" / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["vocab_size"] >= 262_144


def test_preflight_names_a_missing_gguf_file_before_any_work(tmp_path):
    from nextrl.config import load_config
    from nextrl.preflight import check_input_paths

    with pytest.raises(ConfigError, match=r"config key 'model\.path': no GGUF file at .*gone\.gguf"):
        check_input_paths(load_config("gemma-cpu", [f"model.path={tmp_path / 'gone.gguf'}"]))
    if MISSING is None:
        check_input_paths(load_config("gemma-cpu", []))  # the packaged name passes
