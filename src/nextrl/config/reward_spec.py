"""The reward spec: a reward as a weighted sum of named components, parsed from a config string such as
"prefix_match+0.1*info_gain".

The names are not a closed list here: each environment declares the components it produces
(`Environment.reward_components`), and the spec is checked against them when the environment is built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

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
