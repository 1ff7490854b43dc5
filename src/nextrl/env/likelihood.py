"""Verifier-free rewards from teacher-forced log-probs (RLP, Quiet-STaR), the copy guard, and reward composition.

The trainer computes the log-probs (`nextrl.algo.logprobs.tree_completion_logprobs`: per-token log p of the true
continuation given a prompt); this module only turns them into rewards, so every formula here can be checked
on small hand-made tensors.

- `information_gain`: RLP's r = log p_θ(x_t | x_<t, thought) − log p_EMA(x_t | x_<t) (arXiv 2510.01265).
- `likelihood_gain`: Quiet-STaR's multi-token version, the mean over the next k true tokens (arXiv 2403.09629).
- `copies_target` / `apply_copy_guard`: a thought that writes the answer out gets a huge likelihood gain for
  nothing (Quiet-STaR's known failure); such thoughts are detected on bytes and their reward replaced.
- `RewardSpec`: a weighted sum of named reward components, parsed from a config string such as
  "prefix_match+0.1*info_gain".

Note for group-relative advantages: the no-thought term is the same for all G thoughts of a position, so it
cancels in r_i − mean_j r_j; it shapes the reported reward (and thresholds on it), not the gradient.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

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


def apply_copy_guard(rewards: torch.Tensor, copied: list[bool], penalty: float = 0.0) -> torch.Tensor:
    """Rewards [N] with every copying thought's reward replaced by `penalty` (a new tensor).

    With a signed reward (information gain) 0 is not the worst value: under group-relative advantages a copy set
    to 0 still beats siblings whose gain is negative, so pass a penalty below any real reward there."""
    if rewards.dim() != 1 or len(copied) != rewards.shape[0]:
        raise ValueError(f"rewards {tuple(rewards.shape)} must be [N] with N = len(copied) = {len(copied)}")
    flags = torch.tensor(copied, dtype=torch.bool, device=rewards.device)
    return torch.where(flags, torch.full_like(rewards, penalty), rewards)


# ---------------------------------------------------------------- reward composition

_NUM = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(rf"\s*([+-])?\s*(?:({_NUM})\s*\*\s*)?([A-Za-z_]\w*)\s*")


def _format_weight(w: float) -> str:
    # repr is the shortest string that parses back to the same float; drop ".0" so 2.0 reads as 2
    return str(int(w)) if w.is_integer() and abs(w) < 1e15 else repr(w)


@dataclass
class RewardSpec:
    """A reward as a weighted sum of named components, e.g. "prefix_match+0.1*info_gain-0.5*format"."""

    terms: list[tuple[str, float]]

    @classmethod
    def parse(cls, text: str, known: Collection[str] | None = None) -> RewardSpec:
        """Parse `[sign][weight*]name` terms joined by + or −; weights may use scientific notation.

        `known` (the component names the environment produces) rejects typos early; None accepts any name."""
        known_msg = "" if known is None else f" (known terms: {', '.join(sorted(known))})"
        if not text.strip():
            raise ValueError(f"reward: empty reward spec {text!r}{known_msg}")
        terms: list[tuple[str, float]] = []
        pos = 0
        while pos < len(text):
            m = _TERM.match(text, pos)
            if m is None or (terms and m.group(1) is None):
                bad = text[pos:].strip() or text
                raise ValueError(f"reward: cannot parse term {bad!r} in {text!r}{known_msg}")
            sign, weight, name = m.groups()
            w = (-1.0 if sign == "-" else 1.0) * (float(weight) if weight else 1.0)
            if known is not None and name not in known:
                raise ValueError(f"reward: unknown term {name!r} in {text!r}{known_msg}")
            if name in (n for n, _ in terms):
                raise ValueError(f"reward: term {name!r} appears twice in {text!r}")
            if not math.isfinite(w):
                raise ValueError(f"reward: weight of {name!r} is not finite in {text!r}")
            terms.append((name, w))
            pos = m.end()
        return cls(terms)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.terms]

    def total(self, components: Mapping[str, float]) -> float:
        """Σ weight · component. Works for floats and, elementwise, for tensors of equal shape."""
        missing = [n for n in self.names if n not in components]
        if missing:
            raise ValueError(
                f"reward term(s) {missing} missing from the components {sorted(components)} (reward = {self})"
            )
        return sum((w * components[n] for n, w in self.terms), 0.0)

    def __str__(self) -> str:
        parts = []
        for k, (name, w) in enumerate(self.terms):
            sign = "-" if w < 0 else ("+" if k else "")
            mag = abs(w)
            parts.append(f"{sign}{name}" if mag == 1.0 else f"{sign}{_format_weight(mag)}*{name}")
        return "".join(parts)
