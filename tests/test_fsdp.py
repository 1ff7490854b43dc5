"""FSDP2 learner ranks (`nextrl.model.fsdp`) on CPU with gloo, launched by torchrun: two ranks that each train
half the micro-batches of a sharded copy take the steps one unsharded process takes (weights within 1e-5),
each holds half the state (the planner's rule), and the comparison catches a skipped reduce-scatter. The
trainer's own sharded ranks (on Ray, with checkpoints) are tested in tests/test_ray.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nextrl.plan.cost import learner_state_bytes

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "fsdp_ranks.py"


def run(out: Path, ranks: int | None, *flags: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable] if ranks is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"
    ]  # fmt: skip
    subprocess.run([*launch, str(SCRIPT), "--out", str(out), *flags], check=True, env=env, timeout=300)
    return torch.load(out, weights_only=False)


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("ref") / "ref.pt", None)


def test_two_sharded_ranks_take_the_unsharded_steps_and_hold_half_the_state(reference, tmp_path):
    two = run(tmp_path / "two.pt", 2)
    assert two["weights"].keys() == reference["weights"].keys()
    assert max_diff(two["weights"], reference["weights"]) < 1e-5
    whole = reference["local_numel"]
    assert 16 * two["local_numel"] == learner_state_bytes(whole, 2, "fsdp")  # no padding at these sizes
    assert learner_state_bytes(whole, 2, "none") == 16 * whole


def test_a_skipped_reduce_scatter_is_caught(reference, tmp_path):
    """The mutation leaves the last block's sharded gradients unset (AdamW skips it): the weights drift far
    beyond the 1e-5 the comparison allows, so the comparison really checks the reduce-scatter."""
    broken = run(tmp_path / "broken.pt", 2, "--skip-reduce-scatter")
    assert max_diff(broken["weights"], reference["weights"]) > 1e-3
