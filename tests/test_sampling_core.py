"""The sampling core's phase program (`nextrl.engine.core.SequenceState`) on its own, fed tokens by hand: what
each engine does with the tokens it samples (the engines are tested end to end in test_sampler.py,
test_prefix_sharing.py and test_vllm_engine.py)."""

from __future__ import annotations

from nextrl.engine.base import Phase, SamplingParams
from nextrl.engine.core import new_states, to_rollouts

OPEN, CLOSE, EOS, A, B = 50, 51, 52, 7, 8


def feed(params: SamplingParams, tokens: list[int]):
    """One sample of prompt [1, 2] fed `tokens` as its draws (a pending forced token takes the step instead,
    as in every engine), until it finishes or the draws run out."""
    (s,) = new_states([1, 2], params, 0)
    draws = iter(tokens)
    while s.finish is None:
        if s.forced:
            s.add(-1, 0.0, params)
            continue
        tok = next(draws, None)
        if tok is None:
            break
        s.add(tok, -float(tok) / 100, params, entropy=1.0)
    return s


def thought(budget: int, answer: int = 2, eos=(EOS,)) -> SamplingParams:
    phases = (Phase(budget, stop_token_ids=(CLOSE,), force_on_length=(CLOSE,)), Phase(answer))
    return SamplingParams(phases=phases, eos_token_ids=eos)


def test_a_stop_token_ends_the_phase_and_is_kept_as_a_sampled_token():
    s = feed(thought(5), [A, CLOSE, B, B])
    (r,) = to_rollouts([[s]], thought(5), version=3)[0]
    assert r.completion_ids == [A, CLOSE, B, B] and r.action_mask == [1, 1, 1, 1]
    assert r.phase_starts == [0, 2] and r.finish_reason == "length" and r.policy_version == 3
    assert r.logprobs == [-0.07, -0.51, -0.08, -0.08] and r.entropies == [1.0] * 4


def test_a_spent_budget_forces_its_tokens_without_logprob_or_gradient():
    s = feed(thought(2), [A, B, A, A])
    assert s.ids == [A, B, CLOSE, A, A] and s.mask == [1, 1, 0, 1, 1]
    assert s.logprobs[2] == 0.0 and s.entropies[2] == 0.0 and s.starts == [0, 3]


def test_eos_ends_the_whole_completion_and_later_phases_start_at_its_end():
    s = feed(thought(5), [A, EOS, B])
    (r,) = to_rollouts([[s]], thought(5), version=0)[0]
    assert r.completion_ids == [A, EOS] and r.finish_reason == "eos" and r.phase_starts == [0, 2]


def test_a_phase_of_no_tokens_costs_no_step():
    """A max_tokens-0 phase forces its tokens at once (the empty thought), and the sample starts there."""
    params = SamplingParams(phases=(Phase(0, (), (OPEN, CLOSE)), Phase(1)), n=2)
    states = new_states([1], params, 0)
    assert [s.forced for s in states] == [[OPEN, CLOSE]] * 2 and all(s.finish is None for s in states)
    states[0].force_pending(params)
    assert states[0].ids == [OPEN, CLOSE] and states[0].starts == [0, 2] and states[0].forced is None


def test_lead_and_target_go_to_the_last_samples_and_every_sample():
    params = SamplingParams(phases=(Phase(3),), n=4, lead=(CLOSE, 1), score_phase=0, score_tokens=(A, B))
    states = new_states([1], params, 1)
    assert [s.lead for s in states] == [None, None, None, CLOSE] and {s.target for s in states} == {B}
    assert [s.first_override() for s in states] == [-1, -1, -1, CLOSE]
    assert all(s.scores_now(0) for s in states)
