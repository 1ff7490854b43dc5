"""Readers: one generator of raw `Document`s per `SourceConfig.kind`, in a deterministic order.

Bad input (binary files, invalid UTF-8, malformed JSON, missing or non-string fields) is skipped, counted in
a `SkipStats` and warned about, never fatal: real corpora always contain some. Configuration mistakes (a path
that matches nothing, a parquet file without the text column) are fatal `DataError`s instead, because no
amount of skipping fixes them. Heavy libraries (pyarrow, datasets) are imported only by the reader that
needs them, so the built-in stdlib corpus costs nothing extra.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import sysconfig
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import zstandard

from nextrl.config.schema import SourceConfig
from nextrl.data.documents import Document
from nextrl.errors import DataError

SKIP_REASONS = ("binary", "invalid_utf8", "malformed_json", "missing_field", "not_text", "empty")
WARN_LIMIT = 20  # warnings shown per source; users feed millions of lines, so the rest are only counted

_STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
_SNIFF_BYTES = 8192


class DataWarning(UserWarning):
    """An input was skipped (see `SkipStats`)."""


class SkipStats:
    """Counts of skipped inputs per reason (one of `SKIP_REASONS`)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)

    def add(self, reason: str) -> None:
        if reason not in self.counts:
            raise KeyError(f"unknown skip reason '{reason}'")
        self.counts[reason] += 1

    def clear(self) -> None:
        self.counts = dict.fromkeys(SKIP_REASONS, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def __repr__(self) -> str:
        return f"SkipStats({self.counts})"


class SkipLog:
    """Records the skips of one source: counts every one, warns about the first `limit`."""

    def __init__(self, stats: SkipStats, source: str, limit: int = WARN_LIMIT) -> None:
        self.stats, self.source, self.limit = stats, source, limit
        self.local = SkipStats()  # this source only, for the summary and `check_sources`

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.stats.add(reason)
        self.local.add(reason)
        if self.local.total <= self.limit:
            warnings.warn(
                f"{where}: skipped ({reason}){': ' + detail if detail else ''}", DataWarning, stacklevel=3
            )

    def finish(self) -> None:
        """Emit the summary of suppressed warnings; call once the source is done."""
        hidden = self.local.total - self.limit
        if hidden > 0:
            counts = {k: v for k, v in self.local.as_dict().items() if v}
            warnings.warn(
                f"{self.source}: {hidden} more skipped inputs not shown (all skips: {counts})",
                DataWarning,
                stacklevel=2,
            )


def resolve_paths(path: str, key: str, suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Expand a file, folder (recursive, files ending in `suffixes` if given) or glob into sorted files."""
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]  # a file named explicitly is read whatever its suffix
    elif p.is_dir():
        found = [f for f in p.rglob("*") if f.is_file() and (not suffixes or f.name.endswith(suffixes))]
        files = sorted(found, key=lambda f: f.relative_to(p).as_posix())
    else:
        files = [
            Path(f) for f in sorted(glob.glob(os.path.expanduser(path), recursive=True)) if Path(f).is_file()
        ]
    if not files:
        wanted = f" (files ending in {', '.join(suffixes)})" if suffixes else ""
        raise DataError(f"{key}.path: '{path}' matches no files{wanted}")
    return files


def _decode_file(file: Path, log: SkipLog) -> str | None:
    """The file's text, or None (skip counted) if it is binary or not UTF-8."""
    data = file.read_bytes()
    if b"\x00" in data[:_SNIFF_BYTES]:
        log.skip("binary", str(file), "NUL byte in the first 8 KiB")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        log.skip("invalid_utf8", f"{file}:{line}", f"invalid UTF-8 at byte {e.start}")
        return None


def read_stdlib(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    """The running interpreter's standard library, minus tests, IDLE and installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]  # prune instead of walking them
        rel_dir = Path(dirpath).relative_to(root)
        rels += [(rel_dir / f).as_posix() for f in filenames if f.endswith(".py")]
    for rel in sorted(rels):
        text = _decode_file(root / rel, log)
        if text is not None:
            yield Document(f"stdlib:{rel}", text, "stdlib")


def read_pydoc(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    """English prose present on every machine: the Python documentation's topics that CPython ships for `help()`
    (`pydoc_data.topics`, ~460 KB: the language reference's sections, mostly prose with some code)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc:{name}", topics[name], "pydoc")


def read_text(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    """One document per file."""
    for file in resolve_paths(src.path or "", key):
        text = _decode_file(file, log)
        if text is not None:
            yield Document(f"text:{file.as_posix()}", text, "text")


def _warn_unverifiable(file: Path) -> None:
    """A zstd frame without a content checksum cannot be verified: corrupt bytes may decode to plausible text.
    Say so once per file (`zstd` writes checksums by default; some writers do not)."""
    try:
        with open(file, "rb") as fh:
            params = zstandard.get_frame_parameters(fh.read(18))
    except (OSError, zstandard.ZstdError):
        return  # unreadable or not zstd: the reader reports it
    if not params.has_checksum:
        warnings.warn(
            f"{file}: its zstd frames carry no checksum, so corruption inside them cannot be detected "
            "(recompress with `zstd` defaults to make it verifiable)",
            DataWarning,
            stacklevel=3,
        )


def _open_binary(file: Path) -> IO[bytes]:
    if file.name.endswith(".gz"):
        return gzip.open(file, "rb")
    if file.name.endswith(".zst"):
        _warn_unverifiable(file)
        # The returned reader owns and closes the raw file (closefd). read_across_frames: files written by
        # concatenating zstd frames are common. BufferedReader adds the line iteration zstd's reader lacks.
        raw = open(file, "rb")  # noqa: SIM115
        return io.BufferedReader(
            zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        )
    return open(file, "rb")  # noqa: SIM115  (closed by the caller's `with`)


def read_jsonl(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    """One document per line (a JSON object) of `.jsonl`, `.jsonl.gz` or `.jsonl.zst` files."""
    field = src.text_field
    for file in resolve_paths(src.path or "", key, _JSONL_SUFFIXES):
        try:
            with _open_binary(file) as fh:
                for lineno, raw in enumerate(fh, start=1):
                    where = f"{file}:{lineno}"
                    if not raw.strip():
                        continue  # blank lines (a trailing newline, say) are not records
                    try:
                        line = raw.decode("utf-8")  # explicit: json.loads(bytes) would also guess UTF-16/32
                    except UnicodeDecodeError as e:
                        log.skip("invalid_utf8", where, f"invalid UTF-8 at byte {e.start} of the line")
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        log.skip("malformed_json", where, str(e))
                        continue
                    text = _field(record, field, where, log)
                    if text is not None:
                        yield Document(f"jsonl:{file.as_posix()}:{lineno}", text, "jsonl")
        except (
            OSError,
            EOFError,
            zlib.error,
            zstandard.ZstdError,
        ) as e:  # truncated or corrupt compressed file
            raise DataError(
                f"{key}: '{file}' is corrupt or truncated ({type(e).__name__}: {e}); nothing from it is used"
            ) from None


def _field(record: Any, field: str, where: str, log: SkipLog) -> str | None:
    """`record[field]` if it is a string, else None with the skip counted."""
    if not isinstance(record, dict):
        log.skip("malformed_json", where, f"expected a JSON object, got {type(record).__name__}")
        return None
    value = record.get(field)
    if value is None:
        log.skip("missing_field", where, f"no '{field}' field")
        return None
    if not isinstance(value, str):
        log.skip("not_text", where, f"'{field}' is {type(value).__name__}, not a string")
        return None
    return value


def read_parquet(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    """One document per row of the `text_field` column, read in record batches to bound memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    field = src.text_field
    for file in resolve_paths(src.path or "", key, (".parquet",)):
        try:
            pf = pq.ParquetFile(file)
        except (OSError, pa.ArrowException) as e:  # not Parquet, truncated, or unreadable
            raise DataError(f"{key}: '{file}' is not a readable Parquet file: {e}") from None
        columns = pf.schema_arrow.names
        if field not in columns:
            raise DataError(
                f"{key}: '{file}' has no column '{field}' (text_field); columns present: {columns}"
            )
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):
            for value in batch.column(0).to_pylist():
                text = _field({field: value}, field, f"{file} row {row}", log)
                if text is not None:
                    yield Document(f"parquet:{file.as_posix()}:{row}", text, "parquet")
                row += 1


def read_hf(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    """A `save_to_disk` folder, or anything `datasets.load_dataset` accepts (hub id, data folder)."""
    import datasets

    path, field = src.path or "", src.text_field
    p = Path(path).expanduser()
    saved = p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())
    try:
        if saved:
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise DataError(f"{key}.split: '{src.split}' not in '{path}'; splits: {list(ds)}")
                ds = ds[src.split]
        else:
            ds = datasets.load_dataset(path, split=src.split, streaming=src.streaming)
    except DataError:
        raise
    # datasets raises many types (not found, offline, bad format); to the user all mean "cannot load"
    except Exception as e:
        raise DataError(f"{key}.path: cannot load dataset '{path}': {type(e).__name__}: {e}") from e
    names = ds.column_names  # None for a streamed dataset whose columns are not known up front
    if names is not None:
        if field not in names:
            raise DataError(
                f"{key}: dataset '{path}' has no column '{field}' (text_field); columns present: {names}"
            )
        ds = ds.select_columns([field])  # skip decoding the other columns
    for row, record in enumerate(ds):
        text = _field(record, field, f"{path} row {row}", log)
        if text is not None:
            yield Document(f"hf:{path}:{row}", text, "hf")


def read_synthetic_source(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    from nextrl.config.schema import SyntheticConfig
    from nextrl.data.synthetic import read_synthetic

    return read_synthetic(src.synthetic or SyntheticConfig())


READERS: dict[str, Callable[[SourceConfig, str, SkipLog], Iterator[Document]]] = {
    "stdlib": read_stdlib,
    "pydoc": read_pydoc,
    "text": read_text,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "hf": read_hf,
    "synthetic": read_synthetic_source,
}


def read_source(src: SourceConfig, key: str, log: SkipLog) -> Iterator[Document]:
    """Raw documents of one source (before cleaning); `key` is its config key, e.g. `data.sources[0]`."""
    return READERS[src.kind](src, key, log)
