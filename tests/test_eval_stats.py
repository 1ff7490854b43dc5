"""Paired statistics (McNemar's exact test, paired bootstrap) against slow, obvious references."""

import math

import numpy as np
import pytest

from nextrl.eval.heldout import control_check, summarize, verdict
from nextrl.eval.stats import compare, mcnemar_exact, paired_bootstrap_ci, stderr


def reference_p(a_only: int, b_only: int) -> float:
    """Two-sided exact binomial test with p = 1/2: the probability of a split at least as uneven."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    dev = abs(a_only - m / 2)
    return min(1.0, sum(math.comb(m, k) for k in range(m + 1) if abs(k - m / 2) >= dev - 1e-12) / 2**m)


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (1, 0), (5, 5), (10, 2), (0, 13), (40, 25), (3, 60)])
def test_mcnemar_matches_reference(a_only, b_only):
    both, neither = 7, 11
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    got = mcnemar_exact(a, b)
    assert got["a_only"] == a_only and got["b_only"] == b_only and got["n"] == len(a)
    assert got["p_value"] == pytest.approx(reference_p(a_only, b_only), rel=1e-9)
    assert got["diff"] == pytest.approx((a_only - b_only) / len(a))


def test_mcnemar_known_value_and_symmetry():
    # 10 vs 2 discordant: p = 2 * sum_{k<=2} C(12,k) / 2^12 = 2 * 79 / 4096
    a = [True] * 10 + [False] * 2
    b = [not x for x in a]
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(158 / 4096)
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(158 / 4096)
    with pytest.raises(ValueError, match="same positions"):
        mcnemar_exact([True], [True, False])


def test_bootstrap_interval_covers_the_difference_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.6
    b = rng.random(400) < 0.5
    lo, hi = paired_bootstrap_ci(a, b, seed=1)
    d = a.mean() - b.mean()
    assert lo < d < hi
    lo2, hi2 = paired_bootstrap_ci(np.tile(a, 4), np.tile(b, 4), seed=1)
    assert hi2 - lo2 < hi - lo
    # identical outcomes: no spread at all
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0)


def test_stderr():
    assert stderr([True, False, True, False]) == pytest.approx(0.25)
    assert math.isnan(stderr([]))


def _outcomes(n=300, seed=0, rl_gain=0.4):
    rng = np.random.default_rng(seed)
    base_std = rng.random(n) < 0.3
    base_th = rng.random(n) < 0.2
    rl_th = base_th | (rng.random(n) < rl_gain)
    return {
        "base": {"standard": base_std.tolist(), "with_thought": base_th.tolist()},
        "baseline": {
            "standard": (base_std | (rng.random(n) < 0.02)).tolist(),
            "with_thought": base_th.tolist(),
        },
        "rl": {"standard": base_std.tolist(), "with_thought": rl_th.tolist()},
    }


def test_verdict_and_control_use_best_modes_and_paired_tests():
    out = _outcomes()
    buckets = ["computed"] * 150 + ["hard"] * 150
    v = verdict(out, buckets)
    assert v["rl_mode"] == "with_thought" and v["baseline_mode"] == "standard"
    ref = compare(out["rl"]["with_thought"], out["baseline"]["standard"])
    assert v["p_value"] == ref["p_value"] and v["diff"] == pytest.approx(ref["diff"])
    assert "McNemar p" in v["text"]
    c = control_check(out, buckets)
    sel = slice(0, 150)
    want = compare(out["rl"]["with_thought"][sel], out["base"]["with_thought"][sel])
    assert c["n"] == 150 and c["vs_base"]["p_value"] == want["p_value"]
    assert c["passed"] == (
        c["vs_base"]["diff"] >= 0.05
        and c["vs_base"]["p_value"] < 0.01
        and c["vs_baseline"]["diff"] >= 0.05
        and c["vs_baseline"]["p_value"] < 0.01
    )
    assert c["passed"]
    # no improvement: the control fails
    flat = _outcomes(rl_gain=0.0)
    assert not control_check(flat, buckets)["passed"]
    assert control_check(out, ["hard"] * 300) is None


def test_summarize_counts_and_thought_vs_standard():
    out = _outcomes(n=10)
    buckets = ["easy"] * 4 + ["hard"] * 6
    s = summarize(out, buckets, {m: [3] * 10 for m in out}, {m: [0.5] * 10 for m in out})
    assert s["eval_counts"] == {"all": 10, "easy": 4, "hard": 6}
    assert s["accuracy"]["rl"]["with_thought"]["easy"] == pytest.approx(
        np.mean(out["rl"]["with_thought"][:4])
    )
    assert s["thought_length"]["base"] == {"all": 3.0, "easy": 3.0, "hard": 3.0}
    tv = s["thought_vs_standard"]["rl"]["hard"]
    assert tv == compare(out["rl"]["with_thought"][4:], out["rl"]["standard"][4:])
    assert s["information_gain"]["rl"]["mean"] == pytest.approx(0.5)


def test_eval_rows_balance_buckets():
    from nextrl.eval.heldout import eval_rows
    from nextrl.positions.index import PositionIndex

    buckets = ["hard"] * 500 + ["easy"] * 40 + ["computed"] * 100
    index = PositionIndex(
        doc_tokens={},
        doc_split={},
        doc_id=[f"d{i % 7}" for i in range(len(buckets))],
        position=list(range(len(buckets))),
        entropy=[1.0] * len(buckets),
        bucket=buckets,
        split=["heldout"] * 600 + ["train"] * 40,
    )
    rows = eval_rows(index, 300, seed=0)
    got = {b: sum(index.bucket[r] == b for r in rows) for b in ("hard", "easy", "computed")}
    # a third each, but easy has only 40 held-out rows and computed 60 (the rest are train): hard takes the rest
    assert got == {"hard": 200, "easy": 40, "computed": 60} and len(set(rows)) == 300
    assert rows == sorted(rows, key=lambda r: (index.doc_id[r], index.position[r]))
    assert eval_rows(index, 300, seed=0) == rows
    assert len(eval_rows(index, 10_000, seed=0)) == 600  # never more than there are


def _simulated_power(n: int, psi: float, delta: float, sims: int, seed: int = 0) -> float:
    """The slow reference: how often McNemar's exact test (p < 0.01) finds a true difference `delta` between two
    models on `n` positions with discordance `psi`, by simulating whole evaluations."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(sims):
        cell = rng.choice(4, size=n, p=[(psi + delta) / 2, (psi - delta) / 2, (1 - psi) / 2, (1 - psi) / 2])
        a = (cell == 0) | (cell == 2)  # cell 0: only a right, 1: only b right, 2: both, 3: neither
        b = (cell == 1) | (cell == 2)
        hits += mcnemar_exact(a, b)["p_value"] < 0.01
    return hits / sims


@pytest.mark.parametrize("n,psi", [(200, 0.3), (512, 0.15), (48, 0.4)])
def test_the_detectable_difference_is_found_four_times_in_five(n, psi):
    from nextrl.eval.stats import detectable_difference

    delta = detectable_difference(n, psi)
    assert 0.0 < delta < psi
    # at the detectable difference the exact test finds it about 80% of the time (the normal approximation
    # against the exact, slightly conservative test), and at half of it far less often
    assert 0.65 <= _simulated_power(n, psi, delta, 400) <= 0.92
    assert _simulated_power(n, psi, delta / 2, 400, seed=1) < 0.45


def test_power_is_stated_and_a_small_evaluation_is_called_underpowered():
    from nextrl.eval.stats import compare, detectable_difference, power_note

    assert detectable_difference(48, 0.4) > 0.2  # the 48 positions: some 20 points or more
    assert detectable_difference(0, 0.3) == 1.0
    assert (
        detectable_difference(10_000, 0.0) < 0.01
    )  # identical models: a difference would show as discordance
    assert power_note(48, 0.27).startswith("underpowered: 48 positions can only detect differences of 27.0")
    assert (
        power_note(2000, 0.03)
        == "2000 positions detect differences of 3.0 points or more (80% power, p < 0.01)"
    )
    a = [True, False] * 50
    rec = compare(a, a[::-1])
    assert rec["detectable"] == pytest.approx(detectable_difference(100, 1.0))


def test_perplexity_after_a_prefix_scores_the_same_tokens():
    """With `<bos>` before every window the window's own tokens are scored, each after the same left context plus
    the prefix: checked against a loop that scores them one by one."""
    import torch

    from nextrl.eval.perplexity import perplexity
    from tiny_models import tiny_llama

    model = tiny_llama(50).eval()
    doc = np.random.default_rng(0).integers(2, 50, size=40)
    got = perplexity(model, [doc], window=8, max_tokens=24, autocast=None, prefix_ids=[1])
    nll = []
    with torch.no_grad():
        for s in (0, 8, 16):
            x = torch.tensor([[1, *doc[s : s + 9]]])
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
            nll += [-logp[j, x[0, j + 1]].item() for j in range(1, 9)]  # targets doc[s+1 .. s+8]
    assert got == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert perplexity(model, [doc], 8, 24, None) != pytest.approx(got, rel=1e-6)  # the prefix changes them
