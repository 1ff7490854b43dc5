"""Tokenizing a document whose thoughts are shown beside its text (`Document.thoughts`).

A worked solution on a page is the format's own thought: `delimiter-open body delimiter-close` right before
the result. Written into the text, a base model's tokenizer would merge the delimiter with what surrounds it
(Gemma reads "saw  (" as "▁▁", "(", while the aside format inserts the one token "▁(" after "▁"), so the page
would teach a thought the format never writes. Here the body is tokenized alone and inserted, between the
format's delimiter ids, before the token its offset points at: exactly the sequence the format builds at that
position. A format that writes its thought before the context's trailing whitespace tokens (the aside format:
" 36" is " ", "3", "6" to Gemma, and the aside goes before the space; " $10" is " $", "1", "0", and it goes
before the sign) says so (`Delimiters.before_space`), and the shown thought moves there too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nextrl.data.documents import Document
from nextrl.errors import DataError


class Delimiters(tuple):
    """The (open, close) ids a format writes its shown thoughts with, unpacking as that pair; `before_space`:
    the thought goes before the whitespace tokens that end the text before it (the aside format)."""

    before_space: bool

    def __new__(cls, open_id: int, close_id: int, before_space: bool = False):
        self = super().__new__(cls, (int(open_id), int(close_id)))
        self.before_space = before_space
        return self

    def __getnewargs__(self):  # pickling (Ray, worker processes) rebuilds it through __new__
        return (self[0], self[1], self.before_space)


def is_space_piece(piece: bytes) -> bool:
    """A token that is whitespace alone (" ", "\n", "  "): what a thought written before the space moves over."""
    return bool(piece) and piece.isspace()


# Signs that open an amount (" $" before "1", "0"): a writer puts the aside before them, as before a space
NUMBER_SIGNS = (b"$", "€".encode(), "£".encode(), "¥".encode())


def before_trailing_space(ids: Sequence[int], piece: Callable[[int], bytes]) -> int:
    """Where a thought written before the trailing whitespace of the token `ids` goes (`piece`: a token's
    bytes): the index of the first of the trailing whitespace tokens, or len(ids) when there are none or
    nothing but whitespace and special (empty) tokens would be left before it. A currency sign in that run
    moves too when a space precedes it (" $", or " " then "$": "costs $" + "10" takes its aside before " $";
    "US$" keeps it after the sign). The aside format's `bridge` is the rest. Only the trailing run and the
    first tokens are read."""
    n = len(ids)
    while n > 0:
        last = piece(ids[n - 1])
        spaced = last[:1].isspace() or (n > 1 and is_space_piece(piece(ids[n - 2])))
        if not (is_space_piece(last) or (last.strip() in NUMBER_SIGNS and spaced)):
            break
        n -= 1
    return n if n < len(ids) and any(piece(t) for t in ids[:n]) else len(ids)


def first_token_at(
    text: str, offsets: Sequence[tuple[int, int]], start: int, end: int | None = None
) -> int | None:
    """The first token that overlaps [start, end) and is not whitespace alone (a space token before a number
    is not the number; a byte-level token " 8" that carries the space is); None when there is none."""
    for t, (a, b) in enumerate(offsets):
        if end is not None and a >= end:
            return None
        if b > start and b > a and text[a:b].strip():
            return t
    return None


def tokenize_document(
    doc: Document, tokenizer, thought_ids: tuple[int, int] | None, max_tokens: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """(token ids with the shown thoughts inserted, the computed positions among them), cut to `max_tokens`.

    A computed position is the first token of a computed span (`first_token_at`); position 0 has no context
    and is never one. `thought_ids` are the format's (open, close) ids; a document with shown thoughts needs
    them."""
    if doc.thoughts and thought_ids is None:
        raise DataError(
            f"{doc.doc_id}: the document shows thoughts beside its text, but the run's thought format has no "
            "delimiters to write them with (env.format)"
        )
    need_offsets = bool(doc.spans or doc.thoughts)
    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=need_offsets)
    bare = list(enc["input_ids"])
    offsets = enc.get("offset_mapping") or []
    computed = sorted(
        {t for s, e in doc.spans if (t := first_token_at(doc.text, offsets, s, e)) is not None and t > 0}
    )
    inserts: dict[int, list[int]] = {}
    for offset, body in doc.thoughts:
        t = first_token_at(doc.text, offsets, offset)
        if t is None:  # a thought after the last token precedes nothing
            continue
        opening, closing = thought_ids  # type: ignore[misc]
        if getattr(thought_ids, "before_space", False):
            t = before_trailing_space(bare[:t], lambda i: tokenizer.decode([i]).encode("utf-8"))
        body_ids = tokenizer(body, add_special_tokens=False)["input_ids"]
        inserts.setdefault(t, []).extend([opening, *body_ids, closing])
    tokens: list[int] = []
    moved: list[int] = []  # bare token index -> index in `tokens`
    for t, tok in enumerate(bare):
        tokens += inserts.get(t, [])
        moved.append(len(tokens))
        tokens.append(tok)
    cut = len(tokens) if max_tokens is None else max_tokens
    positions = [moved[t] for t in computed if moved[t] < cut]
    return np.asarray(tokens[:cut], dtype=np.int64), positions
