"""Evaluation: next-token accuracy per bucket and mode, information gain of thoughts, perplexity, and paired
statistics for comparing models on the same positions."""

from nextrl.eval.accuracy import per_bucket, standard_correct, thought_length, thought_rollouts
from nextrl.eval.perplexity import perplexity
from nextrl.eval.stats import compare, mcnemar_exact, paired_bootstrap_ci, stderr

__all__ = [
    "compare",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "per_bucket",
    "perplexity",
    "standard_correct",
    "stderr",
    "thought_length",
    "thought_rollouts",
]
