"""The document stage: sources -> cleaned, shardable, resumable stream of `Document`s."""

from nextrl.data.documents import Document
from nextrl.data.sources import SKIP_REASONS, DataError, DataWarning, SkipLog, SkipStats, read_source
from nextrl.data.stream import (
    DocumentStream,
    check_sources,
    clean,
    iter_documents,
    source_documents,
    split_of,
    split_text,
)

__all__ = [
    "SKIP_REASONS",
    "DataError",
    "DataWarning",
    "Document",
    "DocumentStream",
    "SkipLog",
    "SkipStats",
    "check_sources",
    "clean",
    "iter_documents",
    "read_source",
    "source_documents",
    "split_of",
    "split_text",
]
