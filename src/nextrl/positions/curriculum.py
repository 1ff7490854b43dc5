"""The RL position cursor with a difficulty curriculum, online re-scoring by the policy, and retirement.

`PositionPool` decides which index rows (positions) each RL step trains on:
- Curriculum: rows carry an entropy bucket (easy → hard); the share of each bucket in a step follows
  `bucket_weights`, uniform or moving from the easiest bucket to the hardest over the run.
- Re-scoring: the proxy model's entropy ranks positions at the start only; with `prefer="policy_entropy"` the
  draw within a bucket favours the positions where the *current* policy is still uncertain (`rescore`).
- Retirement: a position whose groups keep giving no learning signal (all right, all wrong, or no gain) costs
  rollouts for nothing; after `retire_after` such visits in a row it is dropped for good.

Rows come in *units* (the positions of one document stripe, which share a prompt prefix): a unit is drawn
whole, so that its positions are trained in one step and the prefix-sharing engine encodes the prefix once.
Everything, the RNG included, is in `state_dict`, so a resumed run draws exactly the rows it would have drawn.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from nextrl.utils.rewards import REWARD_ATOL, reward_spread

Schedule = Literal["uniform", "easy_to_hard"]
Prefer = Literal["uniform", "policy_entropy"]
REASONS = ("always_right", "always_wrong", "no_gain")

# A uniform group whose reward is at least this is "always right" (binary rewards: 1), else "always wrong".
RIGHT_THRESHOLD = 0.5
# Smallest draw weight under policy_entropy: a unit scored 0 becomes unlikely, never impossible.
MIN_WEIGHT = 1e-6


def bucket_weights(
    buckets: Sequence[str],
    step: int,
    total_steps: int,
    schedule: Schedule,
    fixed: dict[str, float] | None = None,
) -> dict[str, float]:
    """Sampling weight of each bucket (listed easy → hard) at `step`; the weights sum to 1.

    uniform: 1/n each, or in proportion to `fixed` (bucket -> weight; a bucket it leaves out gets 0).
    easy_to_hard: a point c = p·(n−1) slides along the bucket list with the run's progress
    p = clamp(step / (total_steps − 1), 0, 1); bucket i gets w_i = max(0, 1 − |i − c|). So step 0 is all
    easiest, the last step (total_steps − 1) all hardest, and in between the weight passes linearly from each
    bucket to the next (3 buckets, half-way: all medium; a quarter of the way: half easy, half medium).
    """
    if not buckets or len(set(buckets)) != len(buckets):
        raise ValueError(f"buckets must be a non-empty list of distinct names, got {list(buckets)}")
    n = len(buckets)
    if schedule == "uniform":
        if fixed is not None:
            w = {b: max(float(fixed.get(b, 0.0)), 0.0) for b in buckets}
            total = sum(w.values())
            if total > 0:
                return {b: v / total for b, v in w.items()}
        return {b: 1.0 / n for b in buckets}
    if schedule != "easy_to_hard":
        raise ValueError(f"unknown curriculum schedule {schedule!r} (known: uniform, easy_to_hard)")
    p = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    c = p * (n - 1)
    return {b: max(0.0, 1.0 - abs(i - c)) for i, b in enumerate(buckets)}


class PositionPool:
    """Seeded, resumable draws of whole units by curriculum bucket, with retirement and policy re-scoring.

    Draw: for each unit, pick a bucket by `bucket_weights` over the buckets that still have active units
    (the curriculum spans the non-empty buckets, so an exhausted easy bucket hands its share to the next one),
    then a unit of that bucket that has not been drawn in the bucket's current *pass* (uniformly, or in
    proportion to the unit's score under `prefer="policy_entropy"`). When every unit of a bucket has been
    drawn, the bucket starts a new pass. `take(n)` returns whole units until it holds at least n rows, so it
    may overshoot by up to one unit's rows less one; units are never split.

    A unit's bucket is the most common bucket of its active rows (ties: the harder bucket, where positions
    have more to teach); it is recomputed when a row retires.
    """

    def __init__(
        self,
        units: Sequence[Sequence[int]],
        bucket_of: dict[int, str],
        buckets: Sequence[str],
        seed: int,
        schedule: Schedule = "uniform",
        total_steps: int = 1,
        retire_after: int = 0,
        prefer: Prefer = "uniform",
        initial_score: dict[int, float] | None = None,
        fixed_weights: dict[str, float] | None = None,
    ):
        bucket_weights(buckets, 0, total_steps, schedule)  # validates buckets and schedule
        self.fixed_weights = fixed_weights
        if retire_after < 0:
            raise ValueError(f"retire_after must be >= 0 (0 = never retire), got {retire_after}")
        if prefer not in ("uniform", "policy_entropy"):
            raise ValueError(f"unknown prefer {prefer!r} (known: uniform, policy_entropy)")
        self.buckets, self.schedule, self.total_steps = list(buckets), schedule, total_steps
        self.retire_after, self.prefer = retire_after, prefer
        self._rank = {b: i for i, b in enumerate(self.buckets)}
        self._units: dict[int, list[int]] = {
            u: [int(r) for r in rows] for u, rows in enumerate(units) if rows
        }
        self._unit_of = {r: u for u, rows in self._units.items() for r in rows}
        if len(self._unit_of) != sum(len(rows) for rows in self._units.values()):
            raise ValueError("a row appears in more than one unit (or twice in one)")
        if not self._unit_of:
            raise ValueError("no positions to train on: every unit is empty")
        self._row_bucket = self._check_buckets(bucket_of)
        self._initial = self._check_scores(initial_score)
        self._rng = np.random.default_rng(seed)
        self._unit_bucket = {u: self._majority(rows) for u, rows in self._units.items()}
        self._n_units = Counter(self._unit_bucket.values())  # active units per bucket (derived state)
        self._pending: dict[str, list[int]] = {b: [] for b in self.buckets}  # undrawn units of each pass
        self._score: dict[int, float] = {}
        self._weight: dict[int, float] = {}  # cache of _unit_weight (derived state), dropped when it changes
        self._visits: Counter[int] = Counter()
        self._streak: Counter[int] = Counter()
        self._retired: dict[int, str] = {}

    # ---- construction checks -------------------------------------------------------------------------------
    def _check_buckets(self, bucket_of: dict[int, str]) -> dict[int, str]:
        missing = [r for r in self._unit_of if r not in bucket_of]
        if missing:
            raise ValueError(f"{len(missing)} rows have no bucket (e.g. row {missing[0]})")
        out = {r: bucket_of[r] for r in self._unit_of}
        unknown = sorted(set(out.values()) - set(self.buckets))
        if unknown:
            raise ValueError(f"rows in buckets {unknown} not in the curriculum's buckets {self.buckets}")
        return out

    def _check_scores(self, initial_score: dict[int, float] | None) -> dict[int, float]:
        scores = dict(initial_score or {})
        if self.prefer == "policy_entropy":
            missing = [r for r in self._unit_of if r not in scores]
            if missing:
                raise ValueError(
                    f"prefer='policy_entropy' needs an initial_score (proxy entropy) for every row; "
                    f"{len(missing)} missing (e.g. row {missing[0]})"
                )
        return {int(r): float(s) for r, s in scores.items()}

    def _majority(self, rows: list[int]) -> str:
        counts = Counter(self._row_bucket[r] for r in rows)
        return max(counts, key=lambda b: (counts[b], self._rank[b]))

    # ---- drawing -------------------------------------------------------------------------------------------
    def take(self, n: int, step: int) -> list[int]:
        """Rows of whole units, at least n of them (see the class docstring)."""
        out: list[int] = []
        while len(out) < n:
            out += self._units[self._draw_unit(step)]
        return out

    def _draw_unit(self, step: int) -> int:
        live = [
            b
            for b in self.buckets
            if self._n_units[b] > 0 and (self.fixed_weights is None or self.fixed_weights.get(b, 0) > 0)
        ]
        if not live:
            raise RuntimeError(
                f"all positions retired: {self._retired_summary()} after {sum(self._visits.values())} visits; "
                "raise retire_after (or set it to 0) or add positions"
            )
        w = bucket_weights(live, step, self.total_steps, self.schedule, self.fixed_weights)
        probs = np.array([w[b] for b in live])
        bucket = live[int(self._rng.choice(len(live), p=probs / probs.sum()))]
        pending = self._pending[bucket]
        if not pending:  # the bucket's pass is over: start a new one with all of its units
            pending += sorted(u for u, b in self._unit_bucket.items() if b == bucket)
        if self.prefer == "uniform":
            k = int(self._rng.integers(len(pending)))
        else:
            weights = np.fromiter((self._unit_weight(u) for u in pending), float, len(pending))
            k = int(self._rng.choice(len(pending), p=weights / weights.sum()))
        return pending.pop(k)

    def _unit_weight(self, unit: int) -> float:
        """Mean score of the unit's active rows (latest policy score, else the initial proxy score)."""
        w = self._weight.get(unit)
        if w is None:
            scores = [self._score.get(r, self._initial.get(r, 0.0)) for r in self._units[unit]]
            w = self._weight[unit] = max(sum(scores) / len(scores), MIN_WEIGHT)
        return w

    # ---- feedback ------------------------------------------------------------------------------------------
    def rescore(self, rows: Sequence[int], scores: Sequence[float]) -> None:
        """Store the current policy's score of each row (higher = more to learn, e.g. its entropy there)."""
        if len(rows) != len(scores):
            raise ValueError(f"{len(rows)} rows but {len(scores)} scores")
        for r, s in zip(rows, scores, strict=True):
            if r not in self._row_bucket:
                raise ValueError(f"row {r} is not in the pool")
            if not math.isfinite(s):
                raise ValueError(f"score of row {r} is not finite: {s}")
            self._score[int(r)] = float(s)
            self._weight.pop(self._unit_of[int(r)], None)

    def record(self, row: int, rewards: Sequence[float], signal: bool) -> str | None:
        """Count a visit of `row` whose group got `rewards`; returns the no-signal reason (None: signal).

        A group with equal rewards has no signal whatever `signal` says: "always_right" when the reward is
        >= 0.5, else "always_wrong". `signal=False` with unequal rewards is "no_gain" (the caller judged the
        spread useless, e.g. below a gain threshold). `retire_after` no-signal visits in a row retire the row,
        under the reason of the last one. A visit of an already retired row is counted and changes nothing."""
        row = int(row)  # numpy integers from the index would otherwise end up as keys in the state
        if row not in self._row_bucket:
            raise ValueError(f"row {row} is not in the pool")
        if not rewards:
            raise ValueError(f"row {row}: empty rewards")
        self._visits[row] += 1
        uniform = reward_spread(rewards) <= REWARD_ATOL
        if uniform:
            reason = "always_right" if rewards[0] >= RIGHT_THRESHOLD else "always_wrong"
        elif not signal:
            reason = "no_gain"
        else:
            self._streak[row] = 0
            return None
        if row in self._retired:
            return reason
        self._streak[row] += 1
        if self.retire_after and self._streak[row] >= self.retire_after:
            self._retire(row, reason)
        return reason

    def _retire(self, row: int, reason: str) -> None:
        self._retired[row] = reason
        unit = self._unit_of[row]
        rows = self._units[unit]
        rows.remove(row)
        self._weight.pop(unit, None)
        pending = self._pending[self._unit_bucket[unit]]
        # A unit already drawn in this pass is in no pending list: it rejoins when its bucket starts a pass.
        was_pending = unit in pending
        if was_pending:
            pending.remove(unit)
        self._n_units[self._unit_bucket[unit]] -= 1
        if not rows:
            del self._units[unit], self._unit_bucket[unit]
            return
        new = self._unit_bucket[unit] = self._majority(rows)
        self._n_units[new] += 1
        if was_pending:  # keep it undrawn in this pass, in its (possibly new) bucket's pass
            bisect.insort(self._pending[new], unit)

    # ---- reporting and checkpoints -------------------------------------------------------------------------
    def _retired_summary(self) -> str:
        by = Counter(self._retired.values())
        return f"{len(self._retired)} retired (" + ", ".join(f"{r} {by.get(r, 0)}" for r in REASONS) + ")"

    def counts(self) -> dict[str, Any]:
        by_bucket = Counter(self._row_bucket[r] for rows in self._units.values() for r in rows)
        by_reason = Counter(self._retired.values())
        return {
            "active": sum(by_bucket.values()),
            "active_units": len(self._units),
            "active_by_bucket": {b: by_bucket.get(b, 0) for b in self.buckets},
            "retired": len(self._retired),
            "retired_by_reason": {r: by_reason.get(r, 0) for r in REASONS},
            "visits": sum(self._visits.values()),
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (picklable, JSON-friendly apart from int keys)."""
        return {
            "rng": self._rng.bit_generator.state,
            "units": {u: list(rows) for u, rows in self._units.items()},
            "unit_bucket": dict(self._unit_bucket),
            "pending": {b: list(p) for b, p in self._pending.items()},
            "score": dict(self._score),
            "visits": dict(self._visits),
            "streak": dict(self._streak),
            "retired": dict(self._retired),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by a pool built with the same units, buckets and settings."""
        units = {int(u): [int(r) for r in rows] for u, rows in state["units"].items()}
        unknown = [r for rows in units.values() for r in rows if r not in self._row_bucket]
        if unknown:
            raise ValueError(f"checkpointed pool holds rows this pool does not know (e.g. row {unknown[0]})")
        self._rng.bit_generator.state = state["rng"]
        self._units = units
        self._unit_bucket = {int(u): b for u, b in state["unit_bucket"].items()}
        self._n_units = Counter(self._unit_bucket.values())
        self._pending = {b: [int(u) for u in state["pending"].get(b, [])] for b in self.buckets}
        self._score = {int(r): float(s) for r, s in state["score"].items()}
        self._weight = {}
        self._visits = Counter({int(r): int(v) for r, v in state["visits"].items()})
        self._streak = Counter({int(r): int(v) for r, v in state["streak"].items()})
        self._retired = {int(r): str(x) for r, x in state["retired"].items()}
