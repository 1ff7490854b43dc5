"""Verifier-free rewards from teacher-forced log-probs (RLP, Quiet-STaR), the copy guard, and reward composition.

The trainer computes the log-probs (`nextrl.sharing.logprobs.tree_completion_logprobs`: per-token log p of the true
continuation given a prompt); this module only turns them into rewards, so every formula here can be checked
on small hand-made tensors.

- `information_gain`: RLP's r = log p_θ(x_t | x_<t, thought) − log p_EMA(x_t | x_<t) (arXiv 2510.01265).
- `likelihood_gain`: Quiet-STaR's multi-token version, the mean over the next k true tokens (arXiv 2403.09629).
- `copies_target`: a thought that writes the answer out gets a huge likelihood gain for nothing (Quiet-STaR's
  known failure); such thoughts are detected on bytes and get no positive gain.

Note for group-relative advantages: the no-thought term is the same for all G thoughts of a position, so it
cancels in r_i − mean_j r_j; it shapes the reported reward (and thresholds on it), not the gradient.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------- likelihood rewards


def _masked_mean_diff(with_t: torch.Tensor, without: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-row mean of (with − without) over the valid columns; a row with no valid column is an error."""
    valid = torch.ones_like(with_t, dtype=torch.bool) if mask is None else mask.to(with_t.device) > 0
    n = valid.sum(dim=1)
    if bool((n == 0).any()):
        row = int((n == 0).nonzero()[0])
        raise ValueError(f"row {row} has no valid target token (mask all 0): nothing to score")
    # where(), not a product: padding may hold -inf or garbage, and -inf * 0 is NaN
    diff = torch.where(valid, with_t.float() - without.float(), 0.0)
    return diff.sum(dim=1) / n


def _check_shapes(with_t: torch.Tensor, without: torch.Tensor, mask: torch.Tensor | None) -> None:
    if (
        with_t.dim() != 2
        or with_t.shape != without.shape
        or (mask is not None and mask.shape != with_t.shape)
    ):
        shapes = [tuple(with_t.shape), tuple(without.shape), None if mask is None else tuple(mask.shape)]
        raise ValueError(f"log-prob shapes must be equal [N, k] (with thought, no thought, mask): {shapes}")


def information_gain(
    logp_with_thought: torch.Tensor,
    logp_no_thought: torch.Tensor,
    mask: torch.Tensor | None = None,
    tokens: int = 1,
) -> torch.Tensor:
    """RLP reward [N] from log-probs [N, k] of the true next tokens, with and without the thought.

    tokens=1 is RLP exactly: log p_θ(x_t | x_<t, c_t) − log p_φ(x_t | x_<t). With tokens > 1 it is the mean of
    the per-token differences over the first `tokens` columns that `mask` marks valid (a document may end
    before them)."""
    _check_shapes(logp_with_thought, logp_no_thought, mask)
    k = logp_with_thought.shape[1]
    if not 1 <= tokens <= k:
        raise ValueError(f"tokens={tokens}, but the log-probs hold {k} target tokens per row")
    cut = None if mask is None else mask[:, :tokens]
    return _masked_mean_diff(logp_with_thought[:, :tokens], logp_no_thought[:, :tokens], cut)


def likelihood_gain(
    logp_with_thought: torch.Tensor, logp_no_thought: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Quiet-STaR-style reward [N]: mean log-prob of the next k true tokens after the thought minus the mean
    without it, both over the same valid tokens (mask 0 where the document ended early).

    The mean (not the sum) keeps rows with fewer valid tokens on the same scale as full ones."""
    _check_shapes(logp_with_thought, logp_no_thought, mask)
    return _masked_mean_diff(logp_with_thought, logp_no_thought, mask)


# ---------------------------------------------------------------- copy guard
#
# Rule. Segment bytes into *words*: a run of ASCII letters, digits and '_'; one UTF-8 character (a lead byte
# and its continuation bytes: every non-ASCII character is a word of its own, so scripts written without spaces
# still segment); a run of stray continuation bytes (the tail of a character begun before the target starts);
# or one ASCII punctuation byte. ASCII whitespace separates words.
# The *key* is the target, leading whitespace stripped, cut after its first word, or after as many whole words
# (with the bytes between them) as it takes to reach `min_bytes`. A target whose words all together stay below
# `min_bytes` has no key and is never judged a copy: a lone "," or "a" is too common to tell copying apart.
# The thought copies the target when it contains the key verbatim (case-sensitive bytes) and not glued inside a
# longer ASCII word: a key starting (ending) with an ASCII word byte must not be preceded (followed) by one.
# So the thought "next: ' cat'" copies the target " cat sat" (key "cat"), "category" and "concat" do not; the
# subword target "ing on" (key "ing") is copied by "'ing'" but not by "thinking".

_WS = frozenset(b" \t\n\r\x0b\x0c")


def _is_word_byte(b: int) -> bool:
    return b < 0x80 and (chr(b).isalnum() or b == 0x5F)


def _word_end(data: bytes, i: int) -> int:
    """End (exclusive) of the word starting at data[i] (data[i] is not whitespace)."""
    b, n = data[i], len(data)
    if _is_word_byte(b):
        j = i + 1
        while j < n and _is_word_byte(data[j]):
            j += 1
        return j
    if b >= 0x80:  # a lead byte takes its continuation bytes; stray continuation bytes stay together
        j = i + 1
        while j < n and 0x80 <= data[j] < 0xC0:
            j += 1
        return j
    return i + 1  # ASCII punctuation: one byte per word


def copy_key(target_bytes: bytes, min_bytes: int = 2) -> bytes | None:
    """The bytes a thought must contain to count as a copy of the target (see the rule above), or None."""
    if min_bytes < 1:
        raise ValueError(f"min_bytes must be >= 1, got {min_bytes}")
    data = target_bytes.lstrip(bytes(_WS))
    i = 0
    while i < len(data):
        while i < len(data) and data[i] in _WS:
            i += 1
        if i == len(data):
            break
        i = _word_end(data, i)
        if i >= min_bytes:
            return data[:i]
    return None


def copies_target(thought_bytes: bytes, target_bytes: bytes, min_bytes: int = 2) -> bool:
    """True when the thought writes out the start of the target (rule above the helper functions)."""
    key = copy_key(target_bytes, min_bytes)
    if key is None:
        return False
    check_left, check_right = _is_word_byte(key[0]), _is_word_byte(key[-1])
    start = thought_bytes.find(key)
    while start >= 0:
        end = start + len(key)
        glued_left = check_left and start > 0 and _is_word_byte(thought_bytes[start - 1])
        glued_right = check_right and end < len(thought_bytes) and _is_word_byte(thought_bytes[end])
        if not (glued_left or glued_right):
            return True
        start = thought_bytes.find(key, start + 1)
    return False
