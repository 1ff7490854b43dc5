"""Evaluation: held-out next-token accuracy per bucket (standard and with thought) and perplexity."""

from nextrl.eval.accuracy import standard_accuracy, thought_accuracy
from nextrl.eval.perplexity import perplexity

__all__ = ["perplexity", "standard_accuracy", "thought_accuracy"]
