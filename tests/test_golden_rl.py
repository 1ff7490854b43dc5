"""Golden RL runs: short micro runs must reproduce the recorded per-step metrics and weights exactly (to float
round-off). The figures were recorded by the trainer before the producer/learner split; any change that alters
what the trainer computes shows up here first. Regenerate with `python tests/golden/make_rl_golden.py` only
for a change meant to alter it, and say why in the commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from make_rl_golden import CASES, run_case  # noqa: E402

pytestmark = pytest.mark.slow
GOLDEN = json.loads((Path(__file__).parent / "golden" / "rl_micro.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_rl_reproduces_the_golden_run(case, tmp_path):
    want = GOLDEN[case]
    assert want["overrides"] == CASES[case]
    got = run_case(CASES[case], tmp_path)
    assert len(got["steps"]) == len(want["steps"])
    for step, (g, w) in enumerate(zip(got["steps"], want["steps"], strict=True)):
        assert set(g) == set(w), f"step {step}: metrics added {set(g) - set(w)}, removed {set(w) - set(g)}"
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-9), f"step {step} {k}"
    for k in ("weight_sum", "weight_abs_sum"):
        assert got[k] == pytest.approx(want[k], rel=1e-9), k
