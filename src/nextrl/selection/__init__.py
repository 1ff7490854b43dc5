"""Position selection: which positions of which documents become tasks (RPT's hard-token selection)."""

from nextrl.selection.entropy import bucket_of, topk_entropy
from nextrl.selection.index import PositionIndex, score_document, select_positions

__all__ = ["PositionIndex", "bucket_of", "score_document", "select_positions", "topk_entropy"]
