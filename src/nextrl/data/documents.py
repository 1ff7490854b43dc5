"""The document: what every source yields and every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """One text document. `doc_id` is stable across runs and machines (source label + path/line or index)."""

    doc_id: str
    text: str
    source: str
    # [start, end) character ranges whose tokens are the result of a computation (synthetic documents): the
    # positions of the `computed` evaluation bucket. Empty for ordinary text.
    spans: tuple[tuple[int, int], ...] = ()
