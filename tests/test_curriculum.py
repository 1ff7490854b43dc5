"""Bucket weights by hand; PositionPool draws, retirement by reason, re-scoring and exact resume."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest

from nextrl.positions.curriculum import PositionPool, bucket_weights

BUCKETS = ["easy", "medium", "hard"]


@pytest.mark.parametrize(
    ("step", "want"),
    [(0, [1, 0, 0]), (1, [0.5, 0.5, 0]), (2, [0, 1, 0]), (3, [0, 0.5, 0.5]), (4, [0, 0, 1]), (9, [0, 0, 1])],
)
def test_easy_to_hard_weights(step, want):
    w = bucket_weights(BUCKETS, step, total_steps=5, schedule="easy_to_hard")
    assert list(w) == BUCKETS
    assert list(w.values()) == pytest.approx(want)
    assert sum(w.values()) == pytest.approx(1.0)


def test_other_weights():
    assert bucket_weights(BUCKETS, 3, 5, "uniform") == pytest.approx({b: 1 / 3 for b in BUCKETS})
    assert bucket_weights(["a", "b"], 5, 11, "easy_to_hard") == pytest.approx({"a": 0.5, "b": 0.5})
    assert bucket_weights(["a"], 3, 5, "easy_to_hard") == {"a": 1.0}
    with pytest.raises(ValueError, match="schedule"):
        bucket_weights(BUCKETS, 0, 5, "hard_first")
    with pytest.raises(ValueError, match="distinct"):
        bucket_weights(["a", "a"], 0, 5, "uniform")


def make_pool(**kw) -> PositionPool:
    # 12 units of 3 rows: units 0-3 easy, 4-7 medium, 8-11 hard; row = 3 * unit + k
    units = [[3 * u + k for k in range(3)] for u in range(12)]
    bucket_of = {r: BUCKETS[r // 12] for r in range(36)}
    kw.setdefault("seed", 7)
    return PositionPool(units, bucket_of, BUCKETS, **kw)


def unit_of(row: int) -> int:
    return row // 3


def test_take_returns_whole_units_and_covers_a_pass():
    pool = make_pool()
    rows = pool.take(4, step=0)
    assert 4 <= len(rows) < 4 + 3  # whole units: overshoot by less than one unit
    assert len(rows) % 3 == 0 and all(rows[i : i + 3] == list(range(rows[i], rows[i] + 3)) for i in (0, 3))
    one_bucket = PositionPool([[0, 1], [2], [3, 4], [5]], {r: "easy" for r in range(6)}, ["easy"], seed=1)
    drawn = one_bucket.take(6, step=0)
    assert sorted(drawn) == list(range(6))  # a pass visits every unit once before any repeats
    assert sorted(one_bucket.take(6, step=0)) == list(range(6))


def test_curriculum_moves_from_easy_to_hard():
    pool = make_pool(schedule="easy_to_hard", total_steps=3)
    assert {r // 12 for r in pool.take(30, step=0)} == {0}
    assert {r // 12 for r in pool.take(30, step=1)} == {1}
    assert {r // 12 for r in pool.take(30, step=2)} == {2}
    uniform = make_pool()
    assert {r // 12 for r in uniform.take(30, step=0)} == {0, 1, 2}


def test_retirement_by_reason():
    pool = make_pool(retire_after=2)
    assert pool.record(0, [1.0, 1.0], signal=False) == "always_right"
    assert pool.counts()["retired"] == 0
    pool.record(0, [1.0, 1.0], signal=True)  # equal rewards: no signal whatever the flag says
    pool.record(1, [0.0, 0.0, 0.0], signal=False)
    pool.record(1, [0.0, 0.0, 0.0], signal=False)
    pool.record(2, [0.2, 0.7], signal=False)
    assert pool.record(2, [0.2, 0.7], signal=False) == "no_gain"
    pool.record(3, [0.0, 0.0], signal=False)
    assert pool.record(3, [0.0, 1.0], signal=True) is None  # a visit with signal resets the streak
    pool.record(3, [0.0, 0.0], signal=False)
    c = pool.counts()
    assert c["retired_by_reason"] == {"always_right": 1, "always_wrong": 1, "no_gain": 1}
    assert (c["retired"], c["active"], c["active_units"], c["visits"]) == (3, 33, 11, 9)
    assert c["active_by_bucket"] == {"easy": 9, "medium": 12, "hard": 12}
    drawn = Counter(pool.take(300, step=0))
    assert not {0, 1, 2} & set(drawn)  # retired rows (and the vanished unit 0) never come back
    assert set(drawn) == set(range(3, 36))
    pool.record(0, [1.0, 1.0], signal=False)  # a late visit of a retired row changes nothing
    assert pool.counts()["retired"] == 3


def test_no_retirement_by_default():
    pool = make_pool()
    for _ in range(10):
        pool.record(5, [1.0, 1.0], signal=False)
    assert pool.counts()["retired"] == 0 and pool.counts()["visits"] == 10


def test_all_retired_is_an_error():
    pool = PositionPool([[0, 1]], {0: "easy", 1: "easy"}, ["easy"], seed=0, retire_after=1)
    pool.record(0, [0.0], signal=False)
    pool.record(1, [0.0], signal=False)
    with pytest.raises(RuntimeError, match="all positions retired: 2 retired"):
        pool.take(1, step=0)


def test_unit_bucket_follows_its_active_rows():
    # unit 0 is mostly hard; unit 1 is easy. At step 0 the curriculum draws only the easiest live bucket.
    bucket_of = {0: "easy", 1: "hard", 2: "hard", 3: "easy"}
    pool = PositionPool(
        [[0, 1, 2], [3]],
        bucket_of,
        ["easy", "hard"],
        seed=0,
        schedule="easy_to_hard",
        total_steps=10,
        retire_after=1,
    )
    assert set(pool.take(10, step=0)) == {3}
    pool.record(1, [1.0], signal=False)
    assert set(pool.take(10, step=0)) == {3}  # a 1-1 tie goes to the harder bucket
    pool.record(2, [1.0], signal=False)
    assert set(pool.take(10, step=0)) == {0, 3}  # unit 0 is now easy


def test_empty_bucket_hands_its_share_on():
    bucket_of = {0: "medium", 1: "hard"}
    pool = PositionPool([[0], [1]], bucket_of, BUCKETS, seed=0, schedule="easy_to_hard", total_steps=5)
    assert set(pool.take(10, step=0)) == {0}  # no easy units: the curriculum starts at medium


def test_policy_entropy_preference_and_rescore():
    units = [[0], [1]]
    pool = PositionPool(
        units,
        {0: "easy", 1: "easy"},
        ["easy"],
        seed=3,
        prefer="policy_entropy",
        initial_score={0: 0.0, 1: 50.0},
    )
    # each pass holds both units; the high-score one is (almost surely) drawn first in every pass
    assert pool.take(8, step=0) == [1, 0] * 4
    pool.rescore([0, 1], [50.0, 0.0])
    assert pool.take(8, step=0) == [0, 1] * 4
    with pytest.raises(ValueError, match="initial_score"):
        PositionPool(units, {0: "easy", 1: "easy"}, ["easy"], seed=3, prefer="policy_entropy")
    with pytest.raises(ValueError, match="not in the pool"):
        pool.rescore([9], [1.0])


def exercise(pool: PositionPool, steps: range) -> list[list[int]]:
    """Draw, record a deterministic mix of outcomes, rescore: what a trainer does each step."""
    out = []
    for step in steps:
        rows = pool.take(5, step)
        out.append(rows)
        for r in rows:
            pool.record(r, [1.0, 1.0] if r % 4 == 0 else [0.0, 1.0], signal=r % 3 != 0)
        pool.rescore(rows, [float((r * 7 + step) % 5) for r in rows])
    return out


@pytest.mark.parametrize("prefer", ["uniform", "policy_entropy"])
def test_state_dict_resume_draws_identically(prefer):
    kw = dict(
        schedule="easy_to_hard",
        total_steps=12,
        retire_after=2,
        prefer=prefer,
        initial_score={r: float(r % 5) for r in range(36)},
    )
    pool = make_pool(**kw)
    exercise(pool, range(0, 6))
    state = pickle.loads(pickle.dumps(pool.state_dict()))  # as a checkpoint would store it
    tail = exercise(pool, range(6, 12))
    resumed = make_pool(**kw)
    resumed.load_state_dict(state)
    assert exercise(resumed, range(6, 12)) == tail
    assert resumed.counts() == pool.counts()
    fresh = make_pool(**kw)  # without the state the draws differ, so the comparison above can fail
    assert exercise(fresh, range(6, 12)) != tail


def test_constructor_checks():
    with pytest.raises(ValueError, match="no bucket"):
        PositionPool([[0, 1]], {0: "easy"}, ["easy"], seed=0)
    with pytest.raises(ValueError, match="not in the curriculum"):
        PositionPool([[0]], {0: "extreme"}, ["easy"], seed=0)
    with pytest.raises(ValueError, match="more than one unit"):
        PositionPool([[0], [0]], {0: "easy"}, ["easy"], seed=0)
    with pytest.raises(ValueError, match="retire_after"):
        PositionPool([[0]], {0: "easy"}, ["easy"], seed=0, retire_after=-1)
