"""DAPO dynamic sampling: exact batch size, no dropped or repeated group, stats that add up, the draw budget."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nextrl.trainer.dynamic_sampling import Group, fill_batch, is_uniform


class Stream:
    """Fresh groups with unique ids; `spread(i)` says whether group i has a reward spread."""

    def __init__(self, spread: Callable[[int], bool], limit: int | None = None):
        self.spread, self.limit, self.next_id = spread, limit, 0
        self.requests: list[int] = []

    def __call__(self, k: int) -> list[Group]:
        self.requests.append(k)
        if self.limit is not None:
            k = min(k, self.limit - self.next_id)
        out = []
        for _ in range(k):
            i = self.next_id
            self.next_id += 1
            out.append(Group(task=i, rollouts=[], rewards=[0.0, 1.0] if self.spread(i) else [1.0, 1.0]))
        return out


def check_invariants(kept: list[Group], stats: dict, stream: Stream) -> None:
    ids = [g.task for g in kept] + [g.task for g in stats["surplus"]]
    assert len(ids) == len(set(ids))  # no group twice, in the batch or between batch and surplus
    assert not any(is_uniform(g) for g in kept + stats["surplus"])  # never a dropped group
    assert (
        stats["groups_drawn"]
        == stream.next_id
        == sum(stats[k] for k in ("groups_dropped", "groups_kept", "groups_surplus"))
    )
    assert stats["draws"] == len(stream.requests)
    assert stats["groups_surplus"] == len(stats["surplus"])
    assert stats["groups_kept"] == len(kept)
    assert [g.task for g in kept] == sorted(g.task for g in kept)  # draw order


def test_keeps_exactly_the_target():
    stream = Stream(lambda i: i % 2 == 0)  # half the groups have signal
    kept, stats = fill_batch(stream, target=10, max_draws=10)
    check_invariants(kept, stats, stream)
    assert len(kept) == 10 and stats["short_by"] == 0
    # first request: the target; then the 5 missing scaled by drawn/kept = 10/5
    assert stream.requests == [10, 10]
    assert stats["groups_dropped"] == 10 and stats["groups_surplus"] == 0


def test_surplus_is_kept_apart():
    stream = Stream(lambda i: i % 3 != 2)  # 2 of 3 with signal
    kept, stats = fill_batch(stream, target=7, max_draws=10, prior_keep_rate=0.5)
    check_invariants(kept, stats, stream)
    assert stream.requests == [14]  # target / prior keep rate
    assert len(kept) == 7 and stats["groups_surplus"] == 3  # 10 of 14 had signal
    assert [g.task for g in stats["surplus"]] == [10, 12, 13]


def test_stops_at_max_draws():
    stream = Stream(lambda i: False)
    kept, stats = fill_batch(stream, target=4, max_draws=3, max_factor=4.0)
    check_invariants(kept, stats, stream)
    assert kept == [] and stats["short_by"] == 4 and stats["draws"] == 3
    assert stream.requests == [4, 16, 16]  # nothing kept: ask for max_factor times the need


def test_rare_signal_is_capped():
    stream = Stream(lambda i: i in (3, 40))
    kept, stats = fill_batch(stream, target=2, max_draws=5, max_factor=3.0)
    check_invariants(kept, stats, stream)
    # 2 drawn, 0 kept: ask 3 * 2; then 8 drawn, 1 kept: 1 missing * 8/1 is capped at 3 * 1
    assert stream.requests[:2] == [2, 6] and stream.requests[2] == 3
    assert len(kept) == 1 and stats["short_by"] == 1


def test_source_running_dry():
    stream = Stream(lambda i: i % 2 == 0, limit=7)
    kept, stats = fill_batch(stream, target=10, max_draws=4)
    check_invariants(kept, stats, stream)
    assert len(kept) == 4 and stats["short_by"] == 6 and stats["draws"] == 4


def test_custom_predicate_and_edges():
    stream = Stream(lambda i: True)
    kept, stats = fill_batch(stream, target=3, max_draws=2, is_uniform=lambda g: g.task == 1)
    assert [g.task for g in kept] == [0, 2, 3] and stats["groups_dropped"] == 1
    empty = Stream(lambda i: True)
    assert fill_batch(empty, target=0, max_draws=1)[0] == [] and empty.requests == []
    assert is_uniform(Group(task=0, rewards=[0.5]))  # one sample: no spread to learn from
    with pytest.raises(ValueError, match="max_draws"):
        fill_batch(empty, target=1, max_draws=0)
    with pytest.raises(ValueError, match="prior_keep_rate"):
        fill_batch(empty, target=1, max_draws=1, prior_keep_rate=0.0)
