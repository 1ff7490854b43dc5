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
    # Thoughts shown beside the text rather than in it: (character offset, body). Each is inserted at token
    # level, wrapped in the run's thought delimiters, before the first token that starts at or after its offset
    # (`nextrl.data.shown_thoughts`): a base model's tokenizer would not split a delimiter written into the text
    # the way its thought format writes it (Gemma reads "saw  (" as "▁▁", "(" but the aside format puts "▁(" after
    # "▁"). Empty for ordinary text.
    thoughts: tuple[tuple[int, str], ...] = ()

    def piece(self, doc_id: str, start: int, end: int) -> Document:
        """The characters [start, end) as a document of their own; spans and thoughts move with their piece,
        and one the cut leaves unwhole is dropped (a result no longer whole is not computed)."""
        spans = tuple((a - start, b - start) for a, b in self.spans if start <= a and b <= end)
        thoughts = tuple((a - start, body) for a, body in self.thoughts if start <= a < end)
        return Document(doc_id, self.text[start:end], self.source, spans, thoughts)
