"""The RL step on Ray (placement.kind=ray): rollout workers as actors on a local cluster (num_cpus=2, its files
inside the test's folder), the learner in the driver. One worker reproduces the in-process run exactly; two
workers train and resume exactly; a worker refuses weights older than its own."""

from __future__ import annotations

import copy

import pytest
import torch

from nextrl.config import load_config
from nextrl.distributed.ray_producer import split_tasks
from nextrl.env import Task

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

OVERRIDES = [
    "model.dtype=float32",
    "reward=prefix_match+0.1*info_gain",  # a model-scored term: the workers' EMA must follow the learner's
    "rl.empty_thought_samples=1",
    "rl.lm_coef=1.0",
    "sampling.temperature=1.0",
    "rl.steps=3",
    "rl.checkpoint_every=1",
]
RAY = ["placement.kind=ray", "placement.num_cpus=2"]


def test_split_keeps_prefix_units_together():
    tasks = [Task(f"t{i}", [1], group_key=k) for i, k in enumerate("aaabbcdddd")]
    parts = split_tasks(tasks, 2)
    assert [[t.group_key for t in p] for p in parts] == [list("aaabb"), list("cdddd")]  # 5 and 5
    assert [t for p in parts for t in p] == tasks  # order kept, nothing lost or doubled
    assert len(split_tasks(tasks[:3], 4)) == 1  # one unit: one worker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local cluster for the module; producers reuse it (and leave it running)."""
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import select_stage

    cfg = load_config("micro", OVERRIDES)
    base = prepare_base(cfg)
    return base, select_stage(cfg, base, tmp_path_factory.mktemp("idx"), torch.device("cpu"), None)


def trainer(micro, out, overrides):
    from nextrl.pipeline import build_rl_trainer

    base, index = micro
    cfg = load_config("micro", OVERRIDES + overrides)
    policy = copy.deepcopy(base.model)
    return build_rl_trainer(cfg, policy, base.tokenizer, index, out, torch.device("cpu"), None)


def trained(t, stop_after=None):
    try:
        t.train(stop_after=stop_after)
    finally:
        t.close()
    return t


def weights_equal(a, b) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_one_ray_worker_reproduces_the_local_run(cluster, micro, tmp_path):
    local = trained(trainer(micro, tmp_path / "local", []))
    remote = trained(
        trainer(micro, tmp_path / "ray", [*RAY, "placement.workers=1", "placement.cpus_per_worker=2"])
    )
    assert type(remote.producer).__name__ == "RayProducer"
    assert remote.state.reward_history == local.state.reward_history
    assert remote.state.flops == local.state.flops  # the workers' work is accounted as the local engine's
    assert weights_equal(remote.policy, local.policy)


def test_two_workers_train_and_resume_exactly(cluster, micro, tmp_path):
    two = [*RAY, "placement.workers=2"]
    straight = trained(trainer(micro, tmp_path / "a", two))
    assert straight.state.samples == 3 * straight.cfg.positions.per_step * straight.cfg.sampling.group_size
    trained(trainer(micro, tmp_path / "b", two), stop_after=2)
    resumed = trainer(micro, tmp_path / "b", two)
    assert resumed.maybe_resume() and resumed.state.step == 2
    trained(resumed)
    assert resumed.state.reward_history == straight.state.reward_history
    assert weights_equal(resumed.policy, straight.policy)


def test_a_worker_refuses_stale_weights(cluster, micro, tmp_path):
    t = trainer(micro, tmp_path, [*RAY, "placement.workers=1"])
    try:
        t.step()
        worker = t.producer.workers[0]
        assert ray.get(worker.version.remote()) == 1  # synced after the update
        with pytest.raises(ray.exceptions.RayTaskError, match="older than the worker's 1"):
            ray.get(worker.sync.remote(None, None, 0))
        groups = t.last_groups
        assert {r.policy_version for g in groups for r in g.rollouts} == {0}  # generated before the update
    finally:
        t.close()


def test_asynchronous_rollouts_stay_within_the_staleness_bound_and_resume(cluster, micro, tmp_path):
    """With rl.max_off_policy_steps=1 the workers generate the next step while the learner trains: the trained
    samples are one update old from the second step on (never more), the loss reweights them, and a run
    stopped with a batch in flight resumes exactly."""
    a_sync = [*RAY, "placement.workers=2", "rl.max_off_policy_steps=1", "rl.steps=4"]
    straight = trainer(micro, tmp_path / "a", a_sync)
    rows = []
    try:
        for _ in range(4):
            rows.append(straight.step())
    finally:
        straight.close()
    assert [m["staleness/max"] for m in rows] == [0, 1, 1, 1]
    assert all(m["staleness/mean"] <= 1 for m in rows)
    # the histogram counts every trained group once, by how many updates old it was
    groups = straight.cfg.positions.per_step
    assert [(m["staleness/0"], m["staleness/1"]) for m in rows][0] == (groups, 0)
    assert all(m["staleness/0"] + m["staleness/1"] == groups and m["staleness/1"] > 0 for m in rows[1:])
    # per role: the workers were busy, and the learner waited less than a step (generation overlapped)
    assert all(m["time/rollout_busy_s"] > 0 and 0 <= m["time/learner_waiting_s"] < m["step_seconds"]
               for m in rows)  # fmt: skip
    assert all(0 < m["is_weight_mean"] <= straight.rl.is_cap for m in rows if m.get("is_weight_mean"))
    first = trainer(micro, tmp_path / "b", a_sync)
    trained(first, stop_after=2)  # checkpoint at step 2 holds step 3's rollouts, already generated
    resumed = trainer(micro, tmp_path / "b", a_sync)
    assert resumed.maybe_resume() and len(resumed.producer.pending) == 1
    trained(resumed)
    assert resumed.state.reward_history == straight.state.reward_history
    assert weights_equal(resumed.policy, straight.policy)


@pytest.mark.parametrize("ahead", [0, 1])
def test_a_killed_worker_is_replaced_and_no_sample_is_lost_or_doubled(cluster, micro, tmp_path, ahead):
    """SIGKILL a rollout worker between steps (synchronous) or while it generates the next step ahead
    (asynchronous): the step completes on a replacement, and every task handed out is rolled out exactly once,
    with all G samples (checked by task id)."""
    import os
    import signal

    t = trainer(
        micro, tmp_path, [*RAY, "placement.workers=2", f"rl.max_off_policy_steps={ahead}", "rl.steps=3"]
    )
    handed: list[str] = []
    take = t.source.take

    def recording_take(n, step):
        tasks = take(n, step)
        handed.extend(x.task_id for x in tasks)
        return tasks

    t.source.take = recording_take
    try:
        t.step()
        done = [g.task.task_id for g in t.last_groups]
        os.kill(ray.get(t.producer.workers[0].pid.remote()), signal.SIGKILL)
        t.step()
        done += [g.task.task_id for g in t.last_groups]
        t.step()
        done += [g.task.task_id for g in t.last_groups]
        assert t.producer.restarts == 1
        assert done == handed[: len(done)]  # in order, none lost, none twice (a batch ahead may be in flight)
        g = t.cfg.sampling.group_size
        assert all(len(x.rollouts) == g for x in t.last_groups)
    finally:
        t.close()


def test_two_learner_ranks_take_the_single_learners_steps_and_resume(cluster, micro, tmp_path):
    """placement.learners=2: rank 1 on a Ray actor trains half the micro-batches, the gradients are summed by
    torch.distributed (gloo) before each step. The weights match the single learner's (up to the order of
    float additions), both ranks hold the same weights, and a resumed run copies the restored state to rank 1."""
    one = [*RAY, "placement.workers=1", "rl.micro_batch_size=4"]
    two = [*one, "placement.learners=2"]
    single = trained(trainer(micro, tmp_path / "one", one))
    group = trainer(micro, tmp_path / "two", two)
    try:
        assert group.learner.peers.world == 2
        group.train()
        rank1 = group.learner.peers.rank_weights(1)
        for k, v in group.policy.state_dict().items():
            assert torch.equal(rank1[k], v), k  # the ranks never drift apart
    finally:
        group.close()
    assert group.state.reward_history == pytest.approx(single.state.reward_history, abs=1e-6)
    assert group.state.flops == single.state.flops  # rank 1's passes are counted
    for (k, a), b in zip(group.policy.state_dict().items(), single.policy.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), k
    trained(trainer(micro, tmp_path / "three", two), stop_after=2)
    resumed = trainer(micro, tmp_path / "three", two)
    try:
        assert resumed.maybe_resume()
        resumed.train()
        rank1 = resumed.learner.peers.rank_weights(1)
        assert all(torch.equal(rank1[k], v) for k, v in resumed.policy.state_dict().items())
    finally:
        resumed.close()
    for a, b in zip(resumed.policy.state_dict().values(), group.policy.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_learner_ranks_need_ray():
    from nextrl.config import ConfigError

    with pytest.raises(ConfigError, match="placement.learners"):
        load_config("micro", ["placement.learners=2"])
    with pytest.raises(ConfigError, match="placement.learners"):
        load_config("micro", ["placement.learners=2", "placement.shard=fsdp"])
    with pytest.raises(ConfigError, match="placement.shard"):
        load_config("micro", ["placement.shard=zero3"])


def full_state(learner) -> dict[str, torch.Tensor]:
    """A world-of-one sharded learner's model and optimizer state, whole (its shards are the whole tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model, optim = get_state_dict(
        learner.policy, learner.optimizer, options=StateDictOptions(full_state_dict=True)
    )
    flat = {f"model.{k}": v for k, v in model.items()}
    for name, state in optim["state"].items():
        flat.update({f"optimizer.state.{name}.{k}": v for k, v in state.items()})
    return flat


def test_sharded_learner_ranks_take_the_single_learners_steps_and_resume_at_any_world_size(
    cluster, micro, tmp_path
):
    """placement.shard=fsdp: 2 FSDP2 ranks (rank 1 on a Ray actor) hold half the weights, gradients and AdamW
    state each. Their weights match the single learner's within 1e-5 with the same rewards and FLOPs; a sharded
    checkpoint resumes bit-exactly at the same world size, and at world size 1 (2 -> 1) with the state the two
    ranks wrote read back bit for bit, and a world-1 checkpoint resumes on 2 ranks (1 -> 2)."""
    import shutil

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    one = [*RAY, "placement.workers=1", "rl.micro_batch_size=4"]
    fsdp1 = [*one, "placement.shard=fsdp"]
    fsdp2 = [*fsdp1, "placement.learners=2"]
    single = trained(trainer(micro, tmp_path / "single", one))
    group = trainer(micro, tmp_path / "two", fsdp2)
    try:
        assert group.learner.sharded and group.learner.peers.world == 2
        local = sum(p.to_local().numel() for p in group.learner.policy.parameters())
        whole = sum(p.numel() for p in group.policy.parameters())
        assert local < 0.55 * whole  # rank 0 holds about half of every tensor
        rows = [group.step() for _ in range(group.rl.steps)]
    finally:
        group.close()
    assert all(m["time/weight_gather_s"] > 0 and m["time/weight_sync_s"] > 0 for m in rows)
    assert group.state.reward_history == pytest.approx(single.state.reward_history, abs=1e-6)
    assert group.state.flops == single.state.flops  # rank 1's passes counted, the idle passes not
    for (k, a), b in zip(group.policy.state_dict().items(), single.policy.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), k
    # 2 -> 2: bit-exact
    trained(trainer(micro, tmp_path / "stopped", fsdp2), stop_after=2)
    shutil.copytree(tmp_path / "stopped", tmp_path / "to_one")
    resumed = trainer(micro, tmp_path / "stopped", fsdp2)
    assert resumed.maybe_resume() and resumed.state.step == 2
    trained(resumed)
    assert resumed.state.reward_history == group.state.reward_history
    assert weights_equal(resumed.policy, group.policy)
    # 2 -> 1: the two ranks' shards read back whole, bit for bit, then training goes on
    ckpt = tmp_path / "to_one" / "checkpoints" / "step-000002"
    dcp_to_torch_save(ckpt / "learner", tmp_path / "written.pt")
    written = torch.load(tmp_path / "written.pt", weights_only=False)
    resumed = trainer(micro, tmp_path / "to_one", fsdp1)
    try:
        assert resumed.maybe_resume() and resumed.learner.peers.world == 1
        state = full_state(resumed.learner)
        for k, v in written["model"].items():
            assert torch.equal(state[f"model.{k}"], v), k
        for name, moments in written["optimizer"]["state"].items():
            for k, v in moments.items():
                assert torch.equal(state[f"optimizer.state.{name}.{k}"], v), (name, k)
        resumed.train()
    finally:
        resumed.close()
    assert resumed.state.reward_history == pytest.approx(group.state.reward_history, abs=1e-6)
    for a, b in zip(resumed.policy.state_dict().values(), group.policy.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # 1 -> 2
    trained(trainer(micro, tmp_path / "from_one", fsdp1), stop_after=2)
    resumed = trainer(micro, tmp_path / "from_one", fsdp2)
    assert resumed.maybe_resume() and resumed.learner.peers.world == 2
    trained(resumed)
    assert resumed.state.reward_history == pytest.approx(group.state.reward_history, abs=1e-6)
    for a, b in zip(resumed.policy.state_dict().values(), group.policy.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # the final model is a Hugging Face folder, as without sharding
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()


def test_a_sharded_checkpoint_resumes_only_sharded(micro, tmp_path):
    from nextrl.config import ConfigError

    trained(trainer(micro, tmp_path, ["placement.shard=fsdp", "rl.steps=1"]))
    plain = trainer(micro, tmp_path, ["rl.steps=2"])
    with pytest.raises(ConfigError, match="placement.shard"):
        plain.maybe_resume()
