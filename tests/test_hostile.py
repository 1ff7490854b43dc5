"""Hostile inputs, generated here (no ../shared needed): corrupt archives, files that are not what they claim,
huge lines, unwritable folders, a full disk, a second writer. Every case must end in one clear message naming
the file, key or folder, or be handled; none may show a raw traceback or pass silently."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import zstandard
from typer.testing import CliRunner

from nextrl.cli import app
from nextrl.config import ConfigError, load_config
from nextrl.config.schema import DataConfig, SourceConfig
from nextrl.data import DataError, DocumentStream, split_of
from nextrl.errors import RunFolderError
from nextrl.pipeline import _flop_matched, run
from nextrl.preflight import check_disk, preflight
from nextrl.run_folder import RunLock, config_diff, prepare_run_folder
from nextrl.utils.io import atomic_dir
from nextrl.utils.metrics import MetricsLogger

LINES = [
    json.dumps({"text": f"document number {i} " + "lorem ipsum dolor sit amet " * 8}) for i in range(200)
]


def jsonl_bytes() -> bytes:
    return ("\n".join(LINES) + "\n").encode()


def read_all(path: Path, kind: str = "jsonl") -> list:
    cfg = DataConfig(sources=[SourceConfig(kind=kind, path=str(path))])
    return list(DocumentStream(cfg))


def corrupt(data: bytes, at: float = 0.5) -> bytes:
    i = int(len(data) * at)
    return data[:i] + bytes(b ^ 0xFF for b in data[i : i + 16]) + data[i + 16 :]


# ---------------------------------------------------------------- archives and files


def test_corrupt_gzip_is_named_not_parsed(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(corrupt(gzip.compress(jsonl_bytes())))
    with pytest.raises(DataError, match=r"c\.jsonl\.gz' is corrupt or truncated"):
        read_all(path)


def test_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_bytes())[:-40])
    with pytest.raises(DataError, match=r"t\.jsonl\.gz' is corrupt or truncated"):
        read_all(path)


def test_corrupt_zstd_with_checksum_is_named(tmp_path):
    path = tmp_path / "z.jsonl.zst"
    data = zstandard.ZstdCompressor(write_checksum=True).compress(jsonl_bytes())
    path.write_bytes(corrupt(data, 0.6))
    with pytest.raises(DataError, match=r"z\.jsonl\.zst' is corrupt or truncated"):
        read_all(path)


def test_binary_and_invalid_lines_are_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        jsonl_bytes() + b"\xff\xfe not utf8\n{broken json\n" + json.dumps({"x": 1}).encode() + b"\n"
    )
    cfg = DataConfig(sources=[SourceConfig(kind="jsonl", path=str(path))])
    stream = DocumentStream(cfg)
    docs = list(stream)
    assert len(docs) == len(LINES)
    counts = stream.stats.as_dict()
    assert (counts["invalid_utf8"], counts["malformed_json"], counts["missing_field"]) == (1, 1, 1)


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataError, match=r"fake\.parquet' is not a readable Parquet file"):
        read_all(path, "parquet")


def test_one_huge_line_becomes_documents_of_their_own(tmp_path):
    """A 'document' of 400k characters on one line would land whole in one split (no held-out positions):
    parts longer than data.max_doc_chars are split into documents of their own before the split."""
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({"text": "word " * 80_000}) + "\n")
    cfg = DataConfig(
        sources=[SourceConfig(kind="jsonl", path=str(path))], max_doc_chars=10_000, max_chars=5_000
    )
    docs = list(DocumentStream(cfg))
    assert sum(len(d.text) for d in docs) == 400_000  # nothing lost
    parents = {d.doc_id.split("#")[0] for d in docs}
    assert len(parents) == 40  # 400k / 10k documents of their own
    splits = {split_of(p, 0.25, 0) for p in parents}
    assert splits == {"train", "heldout"}


# ---------------------------------------------------------------- paths, settings and disk, before any work


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.path=/no/such/model"], "config key 'model.path': /no/such/model does not exist"),
        (["tokenizer.path=/no/such/tok"], "'tokenizer.path' is set but 'model.path' is not"),
        (["selection.proxy=./no-proxy-here"], "config key 'selection.proxy'"),
    ],
)
def test_missing_paths_fail_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        preflight(load_config("micro", overrides), tmp_path / "out")


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "README").write_text("hello")
    with pytest.raises(ConfigError, match="holds no config.json: it is not a Hugging Face model folder"):
        preflight(load_config("micro", [f"model.path={tmp_path / 'notamodel'}"]), tmp_path / "out")


def test_unwritable_out_and_cache_are_named(tmp_path, monkeypatch):
    # /sys refuses new folders even to root, which a read-only chmod does not
    with pytest.raises(RunFolderError, match="cannot write to --out /sys/nextrl-test"):
        preflight(load_config("micro"), Path("/sys/nextrl-test"))
    monkeypatch.setenv("NEXTRL_CACHE", "/sys/nextrl-cache")
    with pytest.raises(RunFolderError, match=r"cannot write to the base-model cache \(\$NEXTRL_CACHE\)"):
        preflight(load_config("micro"), tmp_path / "out")


def test_a_full_disk_is_refused_up_front(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1024))
    with pytest.raises(RunFolderError, match=r"not enough disk space .* 0 MB are free"):
        check_disk(tmp_path, load_config("micro"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sampling.group_size=1", "sampling.group_size"),
        ("sampling.temperature=0", "sampling.temperature"),
        ("rl.steps=0", "rl.steps"),
        ("rl.steps=true", "rl.steps"),
        ("selection.context=124", "selection.context"),  # micro: 128 positions, 124 + thought + answer > 128
        ("reward=prefix_match-format", None),  # caught when the environment is built (test_next_token_env)
    ],
)
def test_settings_that_make_rl_a_no_op_are_refused(override, key):
    if key is None:
        load_config("micro", [override])  # the syntax is fine; the sign is the environment's to judge
        return
    with pytest.raises(ConfigError, match=key):
        load_config("micro", [override])


# ---------------------------------------------------------------- one run folder, one writer


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path):
    out = tmp_path / "run"
    busy = f"in use by another nextrl process \\(PID {os.getpid()}\\)"
    with RunLock(out), pytest.raises(RunFolderError, match=busy):
        run(load_config("micro"), out)
    with RunLock(out):  # released: the next writer gets it
        pass


def test_a_run_that_failed_before_its_first_stage_can_be_rerun(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", "--preset", "micro", "--out", str(out), "--set", bad_set(tmp_path)]
    )
    assert result.exit_code == 1 and "matches no files" in result.output
    assert (out / "config.yaml").is_file()
    # the corrected command, same folder, no --resume: accepted (nothing had been produced)
    with RunLock(out):
        prepare_run_folder(out, load_config("micro"), resume=False)
    assert "stdlib" in (out / "config.yaml").read_text()


def test_a_killed_warm_ups_checkpoints_are_kept_for_resume(tmp_path):
    """A run killed in its format warm-up has written no stage yet, but its warm-up checkpoints are outputs:
    the same folder without --resume is refused (nothing is overwritten), with --resume it goes on."""
    out = tmp_path / "run"
    (out / "warmup" / "checkpoints" / "step-000010").mkdir(parents=True)
    cfg = load_config("micro")
    from nextrl.config import dump_config

    (out / "config.yaml").write_text(dump_config(cfg))
    with RunLock(out), pytest.raises(RunFolderError, match="already holds a run"):
        prepare_run_folder(out, cfg, resume=False)
    with RunLock(out):
        prepare_run_folder(out, cfg, resume=True)
    assert (out / "warmup" / "checkpoints" / "step-000010").is_dir()


def bad_set(tmp_path: Path) -> str:
    return f"data.sources=[{{kind: text, path: '{tmp_path}/nothing-*.txt'}}]"


def test_leftovers_of_killed_writes_are_removed_and_outputs_kept(tmp_path):
    out = tmp_path / "run"
    (out / "rl" / "checkpoints" / ".step-000004.x1y2z3ab").mkdir(parents=True)
    (out / "rl" / "checkpoints" / "step-000002").mkdir()
    (out / ".summary.json.abc12345.tmp").write_text("half")
    (out / "metrics.jsonl").write_text('{"stage": "rl", "step": 1}\n')
    (out / "config.yaml").write_text(load_config("micro").model_dump_json())
    with RunLock(out), pytest.raises(RunFolderError, match="already holds a run"):
        prepare_run_folder(out, load_config("micro"), resume=False)
    cfg = load_config("micro")
    from nextrl.config import dump_config

    (out / "config.yaml").write_text(dump_config(cfg))
    with RunLock(out):
        prepare_run_folder(out, cfg, resume=True)
    assert not (out / "rl" / "checkpoints" / ".step-000004.x1y2z3ab").exists()
    assert not (out / ".summary.json.abc12345.tmp").exists()
    assert (out / "rl" / "checkpoints" / "step-000002").is_dir() and (out / ".lock").is_file()
    # a kill between atomic_dir's two renames left only `.X.old`: it is put back, not deleted
    (out / "models").mkdir()
    (out / "models" / ".rl.old").mkdir()
    (out / "models" / ".rl.old" / "model.safetensors").write_bytes(b"weights")
    (out / ".gitignore").write_text("*")  # a hidden file that is not a leftover stays
    with RunLock(out):
        prepare_run_folder(out, cfg, resume=True)
    assert (out / "models" / "rl" / "model.safetensors").read_bytes() == b"weights"
    assert (out / ".gitignore").is_file()


def test_resume_with_another_config_names_the_keys(tmp_path):
    out = tmp_path / "run"
    from nextrl.config import dump_config

    out.mkdir()
    (out / "config.yaml").write_text(dump_config(load_config("micro")))
    (out / "index").mkdir()  # a stage has written: this folder holds a run
    with (
        RunLock(out),
        pytest.raises(RunFolderError, match=r"sampling\.group_size: 4 → 6; rl\.lr: 0\.001 → 0\.5"),
    ):
        prepare_run_folder(out, load_config("micro", ["rl.lr=0.5", "sampling.group_size=6"]), resume=True)
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 2, "c": 3}}) == ["a.b: 1 → 2", "a.c: '<absent>' → 3"]


def test_a_non_run_folder_is_not_written_into(tmp_path):
    (tmp_path / "mine.txt").write_text("my notes")
    with pytest.raises(RunFolderError, match="holds other files and no nextrl run"):
        run(load_config("micro"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_metrics_keep_one_row_per_step_across_resumes(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(1, 6):
        log.log("rl", step, {"reward": step})
    log.log("baseline", 1, {"loss": 1.0})
    log.close()
    resumed = MetricsLogger(tmp_path)  # the run resumes from the checkpoint of step 2
    resumed.restart("rl", 2)
    for step in range(3, 6):
        resumed.log("rl", step, {"reward": 10 * step})
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rl = [(r["step"], r["reward"]) for r in rows if r["stage"] == "rl"]
    assert rl == [(1, 1), (2, 2), (3, 30), (4, 40), (5, 50)]
    assert [r["stage"] for r in rows].count("baseline") == 1  # other stages untouched


def test_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


def test_a_baseline_that_cannot_be_flop_matched_says_so():
    v = _flop_matched({"text": "RL did not beat the FLOP-matched baseline."}, 1e9, {"flops": 6e9})
    assert v["flop_matched"] is False and v["text"].startswith("Not FLOP-matched: the baseline used x6.00")
    assert _flop_matched({"text": "t"}, 1e9, {"flops": 1.1e9})["flop_matched"] is True


def test_report_on_an_empty_summary_is_one_message(tmp_path):
    (tmp_path / "summary.json").write_text("")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "summary.json" in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_zstd_without_checksums_is_flagged(tmp_path):
    path = tmp_path / "n.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=False).compress(jsonl_bytes()))
    with pytest.warns(UserWarning, match="carry no checksum"):
        assert len(read_all(path)) == len(LINES)


def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_last_one(tmp_path, monkeypatch):
    import shutil

    import torch

    from nextrl.trainer import checkpoint as ckpt
    from tiny_models import tiny_llama

    model = tiny_llama(16)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt.save_checkpoint(tmp_path, 1, model, None, opt, sched, {})

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt.torch, "save", full)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=0))
    with pytest.raises(RunFolderError, match="the disk is full: checkpoint .*step-000002.* --resume"):
        ckpt.save_checkpoint(tmp_path, 2, model, None, opt, sched, {})
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000001"  # intact, and still the latest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".step-000002")]  # no half folder
    # the half-written folder is removed before the check, so the space it filled is free again: still "full"
    # while less is free than the checkpoint needs (its weights and AdamW's two moments)
    needed = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=64 * 1024**2 + needed - 1))
    with pytest.raises(RunFolderError, match="the disk is full"):
        ckpt.save_checkpoint(tmp_path, 2, model, None, opt, sched, {})
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=64 * 1024**2 + needed + 1))
    with pytest.raises(RuntimeError, match="enforce fail"):  # enough space: the error is a bug, kept
        ckpt.save_checkpoint(tmp_path, 2, model, None, opt, sched, {})
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage)  # plenty of space: the error is a bug, kept
    with pytest.raises(RuntimeError, match="enforce fail"):
        ckpt.save_checkpoint(tmp_path, 2, model, None, opt, sched, {})


def test_a_loaded_models_positions_bound_the_context():
    from types import SimpleNamespace

    from nextrl.preflight import check_context

    small = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))
    with pytest.raises(ConfigError, match="max_position_embeddings=64"):
        check_context(load_config("micro", ["selection.context=60"]), small)
    check_context(load_config("micro"), SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096)))
