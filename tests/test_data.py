"""The document stage: readers, skip accounting, cleaning, sharding, resume, split assignment."""

from __future__ import annotations

import gzip
import json
import warnings
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import zstandard

from nextrl.config.schema import DataConfig, SourceConfig
from nextrl.data import (
    DataError,
    DataWarning,
    Document,
    DocumentStream,
    SkipStats,
    check_sources,
    iter_documents,
    split_of,
    split_text,
)

TEXT = "def f(x):\n    return x + 1  # a line of ordinary source text, long enough to count\n"


def data_cfg(*sources: dict[str, Any], **kw: Any) -> DataConfig:
    return DataConfig(sources=[SourceConfig(**s) for s in sources], **kw)


def collect(cfg: DataConfig) -> tuple[list[Document], dict[str, int]]:
    """All documents and skip counts, with DataWarnings silenced (tests that check them use pytest.warns)."""
    stream = DocumentStream(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        docs = list(stream)
    return docs, stream.stats.as_dict()


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def text_folder(tmp_path: Path, n: int) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}\n" + TEXT)
    return root


def test_stdlib_is_deterministic_and_skips_tests() -> None:
    cfg = data_cfg({"kind": "stdlib", "max_documents": 40})
    first, _ = collect(cfg)
    second, _ = collect(cfg)
    assert len(first) == 40
    assert [d.doc_id for d in first] == [d.doc_id for d in second]
    assert all(d.doc_id.startswith("stdlib:") and d.source == "stdlib" for d in first)
    assert not any("/test/" in d.doc_id or "idlelib" in d.doc_id for d in first)


def test_text_folder_sorted_and_binary_and_invalid_utf8_skipped(tmp_path: Path) -> None:
    root = text_folder(tmp_path, 2)
    (root / "sub").mkdir()
    (root / "sub" / "blob.bin").write_bytes(b"\x89PNG\x00\x00" + b"x" * 100)
    (root / "sub" / "latin.txt").write_bytes(TEXT.encode() + b"caf\xe9\n")
    with pytest.warns(DataWarning) as record:
        docs = list(stream := DocumentStream(data_cfg({"kind": "text", "path": str(root)})))
    assert [Path(d.doc_id.removeprefix("text:")).name for d in docs] == ["doc00.txt", "doc01.txt"]
    assert stream.stats.as_dict()["binary"] == 1 and stream.stats.as_dict()["invalid_utf8"] == 1
    messages = [str(w.message) for w in record]
    assert any("blob.bin" in m and "binary" in m for m in messages)
    assert any("latin.txt:3" in m and "invalid_utf8" in m and "byte" in m for m in messages)


def test_text_glob_and_nul_stripped(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(TEXT)
    (tmp_path / "b.txt").write_text(TEXT)
    # a NUL after the first 8 KiB: still text, and the NUL is stripped
    (tmp_path / "c.md").write_text("x" * 9000 + "\x00" + TEXT)
    docs, _ = collect(data_cfg({"kind": "text", "path": str(tmp_path / "*.md")}, max_chars=100_000))
    assert [d.doc_id for d in docs] == [
        f"text:{tmp_path.as_posix()}/a.md",
        f"text:{tmp_path.as_posix()}/c.md",
    ]
    assert "\x00" not in docs[1].text and len(docs[1].text) == 9000 + len(TEXT)


def test_empty_document_skipped_and_warned(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"text": TEXT}), json.dumps({"text": "  tiny \n"})])
    with pytest.warns(DataWarning, match=r"d\.jsonl:2: skipped \(empty\)"):
        docs = list(stream := DocumentStream(data_cfg({"kind": "jsonl", "path": str(f)})))
    assert len(docs) == 1 and stream.stats.as_dict()["empty"] == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"text": "unterminated', "malformed_json"),
        ("[1, 2]", "malformed_json"),
        ('{"body": "no text field"}', "missing_field"),
        ('{"text": 42}', "not_text"),
    ],
)
def test_bad_jsonl_line_skipped_counted_and_warned(tmp_path: Path, line: str, reason: str) -> None:
    f = write_jsonl(
        tmp_path / "bad.jsonl", [json.dumps({"text": TEXT}), line, "", json.dumps({"text": TEXT})]
    )
    with pytest.warns(DataWarning, match=rf"bad\.jsonl:2: skipped \({reason}\)"):
        docs = list(stream := DocumentStream(data_cfg({"kind": "jsonl", "path": str(f)})))
    assert [d.doc_id for d in docs] == [f"jsonl:{f.as_posix()}:1", f"jsonl:{f.as_posix()}:4"]
    assert stream.stats.as_dict()[reason] == 1 and stream.stats.total == 1


def test_warnings_capped_per_source_with_summary(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "many.jsonl", ["not json"] * 25 + [json.dumps({"text": TEXT})])
    with pytest.warns(DataWarning) as record:
        docs = list(stream := DocumentStream(data_cfg({"kind": "jsonl", "path": str(f)})))
    assert len(docs) == 1 and stream.stats.as_dict()["malformed_json"] == 25
    assert len(record) == 21 and "5 more skipped inputs not shown" in str(record[-1].message)


def test_compressed_jsonl_in_a_folder(tmp_path: Path) -> None:
    payload = "".join(json.dumps({"content": f"{i} {TEXT}"}) + "\n" for i in range(3)).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    (tmp_path / "notes.txt").write_text("not a jsonl file, ignored in a folder")
    docs, stats = collect(data_cfg({"kind": "jsonl", "path": str(tmp_path), "text_field": "content"}))
    assert len(docs) == 6 and sum(stats.values()) == 0
    assert docs[0].text == f"0 {TEXT}" and docs[3].doc_id == f"jsonl:{tmp_path.as_posix()}/b.jsonl.zst:1"


def test_parquet_and_missing_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [TEXT, None, "x" + TEXT], "n": [1, 2, 3]}), f, row_group_size=2)
    docs, stats = collect(data_cfg({"kind": "parquet", "path": str(f)}))
    assert [d.doc_id for d in docs] == [f"parquet:{f.as_posix()}:0", f"parquet:{f.as_posix()}:2"]
    assert stats["missing_field"] == 1
    with pytest.raises(DataError, match=r"d\.parquet.*no column 'body'.*\['text', 'n'\]"):
        collect(data_cfg({"kind": "parquet", "path": str(f), "text_field": "body"}))


def test_hf_from_save_to_disk(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"text": [TEXT, None, "y" + TEXT]}).save_to_disk(str(tmp_path / "ds"))
    docs, stats = collect(data_cfg({"kind": "hf", "path": str(tmp_path / "ds")}))
    assert [d.doc_id for d in docs] == [f"hf:{tmp_path / 'ds'}:0", f"hf:{tmp_path / 'ds'}:2"]
    assert stats["missing_field"] == 1
    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": [TEXT]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    docs, _ = collect(data_cfg({"kind": "hf", "path": str(tmp_path / "dd"), "split": "validation"}))
    assert len(docs) == 1
    with pytest.raises(DataError, match="splits: \\['validation'\\]"):
        collect(data_cfg({"kind": "hf", "path": str(tmp_path / "dd")}))


def test_path_matching_nothing_names_the_key(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "*.jsonl")
    cfg = data_cfg({"kind": "stdlib", "max_documents": 1}, {"kind": "jsonl", "path": missing})
    with pytest.raises(DataError, match=r"data\.sources\[1\]\.path: .*nope"):
        collect(cfg)


def test_split_text_packs_lines_and_hard_splits() -> None:
    text = "aaaa\n" * 5 + "b" * 23 + "\ncc\n"
    pieces = split_text(text, 10)
    assert "".join(pieces) == text and all(len(p) <= 10 for p in pieces)
    assert pieces[:3] == ["aaaa\naaaa\n", "aaaa\naaaa\n", "aaaa\n"]  # whole lines while they fit
    assert pieces[3:] == ["b" * 10, "b" * 10, "bbb\ncc\n"]


def test_long_documents_split_with_piece_ids(tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text(TEXT * 10)
    (tmp_path / "short.txt").write_text(TEXT)
    docs, _ = collect(data_cfg({"kind": "text", "path": str(tmp_path)}, min_chars=10, max_chars=200))
    ids = [d.doc_id.rsplit("/", 1)[1] for d in docs]
    assert ids[-1] == "short.txt" and ids[:-1] == [f"long.txt#{k}" for k in range(1, len(ids))]
    assert "".join(d.text for d in docs[:-1]) == TEXT * 10 and all(len(d.text) <= 200 for d in docs)


def test_max_documents_caps_each_source(tmp_path: Path) -> None:
    root = text_folder(tmp_path, 5)
    docs, _ = collect(
        data_cfg({"kind": "text", "path": str(root), "max_documents": 2}, {"kind": "text", "path": str(root)})
    )
    assert len(docs) == 7


def test_sharding_partitions_the_sequence(tmp_path: Path) -> None:
    cfg = data_cfg(
        {"kind": "text", "path": str(text_folder(tmp_path, 7))}, {"kind": "stdlib", "max_documents": 4}
    )
    full = [d.doc_id for d in DocumentStream(cfg)]
    shards = [[d.doc_id for d in DocumentStream(cfg, rank=r, world_size=2)] for r in range(2)]
    assert len(full) == 11 and shards[0] == full[0::2] and shards[1] == full[1::2]
    assert set(shards[0]).isdisjoint(shards[1]) and sorted(shards[0] + shards[1]) == sorted(full)


@pytest.mark.parametrize("world_size", [1, 3])
def test_resume_continues_exactly(tmp_path: Path, world_size: int) -> None:
    cfg = data_cfg({"kind": "text", "path": str(text_folder(tmp_path, 10))})
    for rank in range(world_size):
        full = [d.doc_id for d in DocumentStream(cfg, rank, world_size)]
        stream = DocumentStream(cfg, rank, world_size)
        head = [d.doc_id for d in islice(stream, 2)]
        state = stream.state_dict()
        resumed = DocumentStream(cfg, rank, world_size)
        resumed.load_state_dict(state)
        assert head + [d.doc_id for d in resumed] == full
        assert resumed.cursor == 10
        assert [d.doc_id for d in resumed] == full  # without a loaded state, a new pass starts over


def test_check_sources(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [json.dumps({"text": TEXT})])
    bad = write_jsonl(tmp_path / "bad.jsonl", [json.dumps({"body": TEXT})] * 3)
    check_sources(data_cfg({"kind": "stdlib"}, {"kind": "jsonl", "path": str(good)}))
    cfg = data_cfg({"kind": "jsonl", "path": str(good)}, {"kind": "jsonl", "path": str(bad)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(
            DataError, match=r"data\.sources\[1\] \(kind=jsonl, path=.*bad\.jsonl.*'missing_field': 3"
        ):
            check_sources(cfg)


def test_split_of_is_stable_and_near_fraction() -> None:
    ids = [f"jsonl:data/x.jsonl:{i}" for i in range(4000)]
    splits = [split_of(i, 0.1, seed=0) for i in ids]
    assert splits == [split_of(i, 0.1, seed=0) for i in ids]
    assert 0.08 < splits.count("heldout") / len(ids) < 0.12
    assert splits != [split_of(i, 0.1, seed=1) for i in ids]
    assert (
        split_of("text:a.txt#1", 0.5, 0) == split_of("text:a.txt#7", 0.5, 0) == split_of("text:a.txt", 0.5, 0)
    )


def test_iter_documents_counts_into_given_stats(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"text": TEXT}), "oops"])
    stats = SkipStats()
    with pytest.warns(DataWarning):
        docs = list(iter_documents(data_cfg({"kind": "jsonl", "path": str(f)}), stats))
    assert len(docs) == 1 and stats.as_dict()["malformed_json"] == 1


def test_corrupt_compressed_file_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl.zst").write_bytes(b"this is not zstd")
    with pytest.raises(DataError, match=r"data\.sources\[0\]: '.*a\.jsonl\.zst' is corrupt or truncated"):
        collect(data_cfg({"kind": "jsonl", "path": str(tmp_path)}))


def test_format_warm_up_inserts_empty_and_draft_thoughts():
    import numpy as np

    from nextrl.data.windows import insert_thought

    window = np.arange(100, 164)
    rng = np.random.default_rng(0)
    empty = drafts = 0
    for _ in range(400):
        tokens, mask = insert_thought(window, rng, 1, 2, max_thought=6, empty_prob=0.5)
        p = int(np.flatnonzero(tokens == 1)[0])
        q = int(np.flatnonzero(tokens == 2)[0])
        draft = tokens[p + 1 : q]
        assert (draft == window[p : p + len(draft)]).all()  # a draft is the text that follows
        assert (tokens[q + 1 :] == window[p : p + len(tokens) - q - 1]).all()  # then the text goes on
        assert not mask[p - 1] and mask.sum() == len(mask) - 1  # <think> itself is never a target
        empty += len(draft) == 0
        drafts += len(draft) > 0
    # several thoughts per window: removing them gives back a prefix of the window
    for _ in range(50):
        tokens, mask = insert_thought(window, rng, 1, 2, max_thought=6, empty_prob=0.5, n=4)
        assert len(tokens) == len(window) and 1 <= (tokens == 1).sum() <= 4
        plain, skip = [], False
        for t in tokens.tolist():
            if t == 1:
                skip = True
            elif t == 2:
                skip = False
            elif not skip:
                plain.append(t)
        assert plain == window[: len(plain)].tolist()
        assert (~mask).sum() == (tokens[1:] == 1).sum()
    # half forced empty, plus the uniform draw's own 1/7 chance of 0
    assert 0.5 < empty / 400 < 0.64 and drafts > 0


def test_pydoc_source_is_english_prose_present_on_every_machine():
    from nextrl.config import load_config
    from nextrl.data import DocumentStream

    cfg = load_config("tiny", ["data.sources=[{kind: pydoc, max_documents: 5}]"])
    docs = list(DocumentStream(cfg.data))
    assert len(docs) == 5 and all(d.source == "pydoc" and d.doc_id.startswith("pydoc:") for d in docs)
    words = " ".join(d.text for d in docs).split()
    assert len(words) > 1000 and sum(w in {"the", "of", "is", "a", "to"} for w in words) > len(words) / 30
    assert [d.doc_id for d in DocumentStream(cfg.data)] == [
        d.doc_id for d in docs
    ]  # the same order every time
