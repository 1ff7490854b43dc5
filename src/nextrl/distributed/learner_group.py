"""A data-parallel learner group: `placement.learners` ranks, rank 0 in the driver (the trainer's own
`Learner`, which checkpoints) and the others on Ray actors, joined in one `torch.distributed` process group
(gloo on CPU; the same code takes NCCL where the tensors are on GPUs).

Each step the driver starts the same `Learner.update` on every rank with the same batch; rank r trains
micro-batches r, r + world, … of the loss and of the next-token term, the gradients are summed across ranks
(one flat all-reduce) before clipping and the optimizer step, and the metrics are summed once at the end. As
the micro-batch weights make the sum of the micro-batch losses the whole batch's loss, every rank takes the
step a single learner would (up to the order of float additions) and the ranks stay identical without ever
sending weights. A resumed driver copies its restored weights, optimizer and scheduler to the other ranks.

With `placement.shard=fsdp` every rank (rank 0 too, and a group of one) trains an FSDP2-sharded copy
(`nextrl.model.fsdp`): the gradients are reduce-scattered in the backward instead of all-reduced, each
rank steps its own shard of the optimizer, after every optimizer step the shards are gathered parameter by
parameter into the driver's whole rollout-side copy (`Learner.gather_whole`), and checkpoints hold the
sharded state in `torch.distributed.checkpoint` form (each rank writes and reads its own shards, resharding
at another world size).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nextrl.config import RunConfig
from nextrl.errors import ConfigError
from nextrl.model.fsdp import init_single_rank
from nextrl.trainer.learner import Learner
from nextrl.trainer.step_account import StepAccount


def _sum_grads(params: list[torch.nn.Parameter]) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    at = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[at : at + n].view_as(g).to(g.dtype)
        at += n


def _sum_metrics(totals: dict[str, float]) -> dict[str, float]:
    gathered: list[dict[str, float] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, totals)
    out: dict[str, float] = {}
    for part in gathered:
        for k, v in (part or {}).items():
            out[k] = out.get(k, 0.0) + v
    return out


class _Rank:
    """`LearnerPeers` for a rank other than 0: it trains its share and reduces; it starts nothing."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def start(self, *update_args: Any) -> Callable[[], None] | None:
        return None

    def load_from(self, learner: Learner) -> None:
        pass

    def close(self) -> None:
        pass

    reduce_grads = staticmethod(_sum_grads)
    reduce_metrics = staticmethod(_sum_metrics)


class _TrainOnly:
    """What a remote rank's learner needs of the environment: whether it is verifier-free (the advantage and
    loss-token defaults). Its after-update feedback (e.g. RLP's EMA baseline) belongs to the driver's copy."""

    def __init__(self, verifier_free: bool):
        self.verifier_free = verifier_free

    def after_update(self) -> None:
        pass


class LearnerRank:
    """A learner rank r > 0 (run as a Ray actor): a copy of the policy, its own optimizer and scheduler."""

    def __init__(self, cfg: dict, policy, pad_token_id: int, verifier_free: bool, autocast, max_new_tokens: int,
                 rank: int, world: int, threads: int):  # fmt: skip
        torch.set_num_threads(threads)
        self.rank, self.world, self.autocast = rank, world, autocast
        self.cfg = RunConfig.model_validate(cfg)
        # a rank given GPUs trains on its GPU (and the group talks NCCL); otherwise on CPU over gloo
        device = torch.device("cuda" if self.cfg.placement.gpus_per_learner > 0 else "cpu")
        self.learner = Learner(
            self.cfg, policy.to(device).train(), pad_token_id, _TrainOnly(verifier_free),
            device, autocast, max_new_tokens, peers=_Rank(rank, world),
        )  # fmt: skip

    def join(self, address: str) -> int:
        backend = _backend(self.cfg)
        dist.init_process_group(
            backend, init_method=f"tcp://{address}", rank=self.rank, world_size=self.world
        )
        if self.cfg.placement.shard == "fsdp":
            self.learner.shard(self.autocast, keep_whole=False)
        return self.rank

    def save_sharded(self, folder: str) -> None:
        save_sharded(folder, self.learner)

    def load_sharded(self, folder: str, scheduler_state) -> None:
        load_sharded(folder, self.learner)
        self.learner.scheduler.load_state_dict(scheduler_state)

    def load(self, policy_state, optimizer_state, scheduler_state) -> None:
        self.learner.policy.load_state_dict(policy_state)
        self.learner.optimizer.load_state_dict(optimizer_state)
        self.learner.scheduler.load_state_dict(scheduler_state)

    def update(self, rollouts, advantages, lm_seqs, lm_empty) -> dict[str, tuple[int, int, int]]:
        """This rank's share of the update; returns the work of its passes (for the driver's FLOP count)."""
        self.learner.account = StepAccount()
        self.learner.update(rollouts, advantages, lm_seqs, lm_empty)
        return {k: (w.tokens, w.attended, w.logits) for k, w in self.learner.account.work.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.learner.policy.state_dict().items()}

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _backend(cfg: RunConfig) -> str:
    """NCCL when the learner ranks are given GPUs (their tensors are on them), gloo on CPU."""
    return "nccl" if cfg.placement.gpus_per_learner > 0 else "gloo"


def sharded_state(learner: Learner) -> dict[str, Any]:
    """The learner's model and optimizer state as `torch.distributed.checkpoint` sees it (this rank's shards,
    keyed by parameter name)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = get_state_dict(learner.policy, learner.optimizer)
    return {"model": model, "optimizer": optimizer}


def save_sharded(folder: str | Path, learner: Learner) -> None:
    """Every rank writes its shards of the model and optimizer to `folder` (a collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(sharded_state(learner), checkpoint_id=str(folder))


def load_sharded(folder: str | Path, learner: Learner) -> None:
    """Every rank reads its shards from `folder`, written at any world size (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = sharded_state(learner)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        learner.policy,
        learner.optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attach_learner_group(cfg: RunConfig, learner: Learner, pad_token_id: int, autocast) -> RayLearnerGroup:
    """Make `learner` rank 0 of a learner group: start ranks 1 … world − 1 on Ray and join them, set
    `learner.peers` to the group (so its updates and checkpoints involve every rank), and give every rank the
    same start: the policy sharded (placement.shard=fsdp), else rank 0's weights, optimizer and scheduler."""
    group = RayLearnerGroup(cfg, learner, pad_token_id, autocast)
    learner.peers = group
    if (
        cfg.placement.shard == "fsdp"
    ):  # the same policy on every rank (Ray hands them rank 0's), fresh optimizer
        learner.shard(autocast, keep_whole=True)
    else:
        group.load_from(learner)
    return group


class RayLearnerGroup:
    """`LearnerPeers` of rank 0, in the driver: spawns ranks 1 … world − 1 on Ray and joins them (a learner
    uses it once `attach_learner_group` has set it as its peers). With placement.shard=fsdp a world of 1 is a
    group too (FSDP2 over one rank, no Ray): its checkpoints are sharded ones, resumable at any world size."""

    rank = 0

    def __init__(self, cfg: RunConfig, learner: Learner, pad_token_id: int, autocast):
        self.world, self.ranks, self.ray = cfg.placement.learners, [], None
        shard = cfg.placement.shard == "fsdp"
        on_gpu = learner.device.type == "cuda"
        if shard and self.world > 1 and on_gpu != (cfg.placement.gpus_per_learner > 0):
            # a sharded unit is gathered by every rank at once: all on GPUs (NCCL) or all on CPUs (gloo)
            raise ConfigError(
                "config key 'placement.gpus_per_learner': sharded learner ranks all train on one kind of "
                f"device, and rank 0 (the driver) trains on {learner.device.type}; set "
                + ("placement.gpus_per_learner > 0" if on_gpu else "placement.gpus_per_learner = 0")
            )
        if self.world == 1:
            init_single_rank(learner.device)
        else:
            self._spawn(cfg, learner, pad_token_id, autocast)
        self.learner = learner

    def _spawn(self, cfg: RunConfig, learner: Learner, pad_token_id: int, autocast) -> None:
        import ray

        self.ray = ray
        pc = cfg.placement
        actor = ray.remote(num_cpus=pc.cpus_per_learner, num_gpus=pc.gpus_per_learner)(LearnerRank)
        policy_ref = ray.put(learner.policy)
        self.ranks = [
            actor.remote(cfg.model_dump(mode="json"), policy_ref, pad_token_id, learner.env.verifier_free,
                         autocast, learner.max_new_tokens, r, self.world, max(1, int(pc.cpus_per_learner)))
            for r in range(1, self.world)
        ]  # fmt: skip
        address = f"127.0.0.1:{_free_port()}"
        joined = [r.join.remote(address) for r in self.ranks]
        backend = _backend(cfg)
        dist.init_process_group(backend, init_method=f"tcp://{address}", rank=0, world_size=self.world)
        ray.get(joined)

    def load_from(self, learner: Learner) -> None:
        """Every rank to rank 0's weights, optimizer and scheduler (at the start and after a resume)."""
        if not self.ranks:
            return
        states = (
            self.ray.put({k: v.detach().cpu() for k, v in learner.policy.state_dict().items()}),
            self.ray.put(learner.optimizer.state_dict()),
            self.ray.put(learner.scheduler.state_dict()),
        )
        self.ray.get([r.load.remote(*states) for r in self.ranks])

    def save_sharded(self, folder: Path) -> None:
        """Every rank's shards of the model and optimizer into `folder` (`torch.distributed.checkpoint`)."""
        calls = [r.save_sharded.remote(str(folder)) for r in self.ranks]
        save_sharded(folder, self.learner)
        self._get(calls)

    def load_sharded(self, folder: Path) -> None:
        """Every rank's shards from `folder`, whatever world size wrote it; the other ranks take rank 0's
        (restored) schedule."""
        scheduler = self.learner.scheduler.state_dict()
        calls = [r.load_sharded.remote(str(folder), scheduler) for r in self.ranks]
        load_sharded(folder, self.learner)
        self._get(calls)

    def _get(self, calls: list) -> list:
        return self.ray.get(calls) if calls else []

    def start(self, rollouts, advantages, lm_seqs, lm_empty) -> Callable[[], None]:
        calls = [r.update.remote(rollouts, advantages, lm_seqs, lm_empty) for r in self.ranks]

        def wait() -> None:  # the other ranks' passes count in this step's FLOPs
            for work in self._get(calls):
                for k, (tokens, attended, logits) in work.items():
                    self.learner.account.pass_work(k).add(tokens, attended, logits)

        return wait

    reduce_grads = staticmethod(_sum_grads)
    reduce_metrics = staticmethod(_sum_metrics)

    def rank_weights(self, rank: int) -> dict[str, torch.Tensor]:
        return self.ray.get(self.ranks[rank - 1].weights.remote())

    def close(self) -> None:
        try:
            self._get([r.leave.remote() for r in self.ranks])
        finally:
            for r in self.ranks:
                self.ray.kill(r)
            self.ranks = []
            if dist.is_initialized():
                dist.destroy_process_group()
