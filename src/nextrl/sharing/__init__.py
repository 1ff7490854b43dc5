"""Prefix sharing, the kernel under generation, scoring and the loss: prefix trees of prompts
(`prefix_tree`), branch attention from a tree's nodes (`branch_attention`) and per-token log-probs of
completions through them (`logprobs`, with the plain per-sequence path as its reference)."""
