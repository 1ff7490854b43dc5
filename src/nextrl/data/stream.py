"""The document stream: all sources in config order, cleaned, capped, shardable and resumable."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import closing
from typing import Any, Literal

from nextrl.config.schema import DataConfig, SourceConfig
from nextrl.data.documents import Document
from nextrl.data.sources import DataError, SkipLog, SkipStats, read_source

_PIECE_SUFFIX = re.compile(r"#\d+$")


def split_text(text: str, max_chars: int) -> list[str]:
    """Pack whole lines greedily into pieces of at most `max_chars`; an over-long line is hard-split.

    `"".join(pieces) == text`: nothing is dropped or added, so the pieces read as the original.
    """
    pieces: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            if cur:
                pieces.append("".join(cur))
                cur, size = [], 0
            pieces.append(line[:max_chars])
            line = line[max_chars:]
        if size + len(line) > max_chars:
            pieces.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        pieces.append("".join(cur))
    return pieces


def clean(doc: Document, cfg: DataConfig, log: SkipLog) -> list[Document]:
    """Strip NULs, skip near-empty documents, split long ones (pieces get doc_id suffix `#1`, `#2`, ...)."""
    if "\x00" in doc.text:
        if doc.spans or doc.thoughts:
            raise DataError(
                f"{doc.doc_id}: a document with computed spans or shown thoughts must not contain NUL characters"
            )
        doc = Document(doc.doc_id, doc.text.replace("\x00", ""), doc.source)
    text = doc.text
    if len(text.strip()) < cfg.min_chars:
        log.skip(
            "empty", doc.doc_id, f"{len(text.strip())} characters after strip, min_chars is {cfg.min_chars}"
        )
        return []
    if len(text) > cfg.max_doc_chars:
        # pieces of one document share its split, so one huge document would leave no held-out (or no
        # training) positions: its parts become documents of their own (`~k`), each split on its own
        out, start = [], 0
        for k, part in enumerate(split_text(text, cfg.max_doc_chars), start=1):
            end = start + len(part)
            out += clean(doc.piece(f"{doc.doc_id}~{k}", start, end), cfg, log)
            start = end
        return out
    if len(text) <= cfg.max_chars:
        return [doc]
    # A too-short piece (often the tail) is dropped silently: it is a fragment, not a bad input.
    out, start = [], 0
    for p in split_text(text, cfg.max_chars):
        end = start + len(p)
        if len(p.strip()) >= cfg.min_chars:
            out.append(doc.piece(f"{doc.doc_id}#{len(out) + 1}", start, end))
        start = end
    return out


def source_documents(cfg: DataConfig, index: int, log: SkipLog) -> Iterator[Document]:
    """Cleaned documents of `cfg.sources[index]`, at most `max_documents` of them (pieces count singly)."""
    src = cfg.sources[index]
    usable = 0
    with closing(read_source(src, f"data.sources[{index}]", log)) as raw_docs:  # closes files on early stop
        for raw in raw_docs:
            for doc in clean(raw, cfg, log):
                yield doc
                usable += 1
                if src.max_documents is not None and usable >= src.max_documents:
                    return


def _describe(src: SourceConfig, index: int) -> str:
    return f"data.sources[{index}] (kind={src.kind}" + (f", path={src.path!r})" if src.path else ")")


def iter_documents(cfg: DataConfig, stats: SkipStats | None = None) -> Iterator[Document]:
    """All sources as one sequence (in config order, or interleaved by weight); skips are counted in `stats`."""
    stats = stats if stats is not None else SkipStats()
    if cfg.mix == "interleave" and len(cfg.sources) > 1:
        yield from _interleave(cfg, stats)
        return
    for i, src in enumerate(cfg.sources):
        log = SkipLog(stats, _describe(src, i))
        yield from source_documents(cfg, i, log)
        log.finish()


def _interleave(cfg: DataConfig, stats: SkipStats) -> Iterator[Document]:
    """Smooth weighted round-robin: the next document comes from the source furthest behind its share
    (fewest documents taken per unit of weight; ties to the earlier source), so any prefix of the stream holds
    the sources in proportion to their weights. A source that runs out leaves the rotation."""
    logs = [SkipLog(stats, _describe(src, i)) for i, src in enumerate(cfg.sources)]
    iters = {i: source_documents(cfg, i, logs[i]) for i in range(len(cfg.sources))}
    taken = dict.fromkeys(iters, 0)
    try:
        while iters:
            i = min(iters, key=lambda k: ((taken[k] + 1) / cfg.sources[k].weight, k))
            doc = next(iters[i], None)
            if doc is None:
                del iters[i]
                logs[i].finish()
                continue
            taken[i] += 1
            yield doc
    finally:
        for it in iters.values():
            it.close()


class DocumentStream:
    """The global document sequence; global index i goes to rank `i % world_size`.

    `cursor` counts global documents passed (all ranks'), so `state_dict()` taken after any document resumes
    right after it: after `load_state_dict`, the next iteration re-reads the sources and skips forward to the
    cursor. Without one, every iteration starts from the beginning and yields the same sequence.
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.cursor = 0
        self.stats = SkipStats()  # counts of the current (or last) pass, including any skipped-forward part
        self._resume_at = 0

    def __iter__(self) -> Iterator[Document]:
        start, self._resume_at = self._resume_at, 0
        self.cursor = start
        self.stats.clear()
        with closing(iter_documents(self.cfg, self.stats)) as docs:
            for i, doc in enumerate(docs):
                if i < start:
                    continue
                self.cursor = i + 1  # set before yielding: a state_dict taken now resumes after this doc
                if i % self.world_size == self.rank:
                    yield doc

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cursor = state["cursor"]
        if not isinstance(cursor, int) or cursor < 0:
            raise ValueError(f"cursor must be a non-negative int, got {cursor!r}")
        self.cursor = self._resume_at = cursor


def split_of(doc_id: str, heldout_fraction: float, seed: int) -> Literal["train", "heldout"]:
    """Stable train/heldout assignment from a hash of seed and doc_id (the same on every run and machine).

    Pieces of one split document (`...#k`) hash as the whole document, so no document straddles the split.
    """
    base = _PIECE_SUFFIX.sub("", doc_id)
    digest = hashlib.sha256(f"{seed}\x00{base}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "heldout" if u < heldout_fraction else "train"


def check_sources(cfg: DataConfig) -> None:
    """Read each source up to its first usable document; raise `DataError` for one that has none.

    Run before training, so a wrong path or field name fails in seconds instead of after model setup.
    """
    for i, src in enumerate(cfg.sources):
        log = SkipLog(SkipStats(), _describe(src, i))
        with closing(source_documents(cfg, i, log)) as docs:
            found = next(docs, None) is not None
        if not found:
            log.finish()
            counts = {k: v for k, v in log.local.as_dict().items() if v}
            raise DataError(f"{_describe(src, i)} has no usable document (skipped: {counts or 'none'})")
