"""A data-parallel learner group: `placement.learners` ranks, rank 0 in the driver (the trainer's own
`Learner`, which checkpoints) and the others on Ray actors, joined in one `torch.distributed` process group
(gloo on CPU; the same code takes NCCL where the tensors are on GPUs).

Each step the driver starts the same `Learner.update` on every rank with the same batch; rank r trains
micro-batches r, r + world, … of the loss and of the next-token term, the gradients are summed across ranks
(one flat all-reduce) before clipping and the optimizer step, and the metrics are summed once at the end. As
the micro-batch weights make the sum of the micro-batch losses the whole batch's loss, every rank takes the
step a single learner would (up to the order of float additions) and the ranks stay identical without ever
sending weights. A resumed driver copies its restored weights, optimizer and scheduler to the other ranks.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from nextrl.config import RunConfig
from nextrl.trainer.accounting import StepAccount
from nextrl.trainer.learner import Learner


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
        self.rank, self.world = rank, world
        self.learner = Learner(
            RunConfig.model_validate(cfg), policy.train(), pad_token_id, _TrainOnly(verifier_free),
            torch.device("cpu"), autocast, max_new_tokens, peers=_Rank(rank, world),
        )  # fmt: skip

    def join(self, address: str) -> int:
        dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=self.rank, world_size=self.world)
        return self.rank

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayLearnerGroup:
    """`LearnerPeers` of rank 0, in the driver: spawns ranks 1 … world − 1 on Ray and joins them."""

    rank = 0

    def __init__(self, cfg: RunConfig, learner: Learner, pad_token_id: int, autocast):
        import ray

        self.ray, self.world = ray, cfg.placement.learners
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
        dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=0, world_size=self.world)
        ray.get(joined)
        learner.peers = self
        self.learner = learner
        self.load_from(learner)

    def load_from(self, learner: Learner) -> None:
        """Every rank to rank 0's weights, optimizer and scheduler (at the start and after a resume)."""
        states = (
            self.ray.put({k: v.detach().cpu() for k, v in learner.policy.state_dict().items()}),
            self.ray.put(learner.optimizer.state_dict()),
            self.ray.put(learner.scheduler.state_dict()),
        )
        self.ray.get([r.load.remote(*states) for r in self.ranks])

    def start(self, rollouts, advantages, lm_seqs, lm_empty) -> Callable[[], None]:
        calls = [r.update.remote(rollouts, advantages, lm_seqs, lm_empty) for r in self.ranks]

        def wait() -> None:  # the other ranks' passes count in this step's FLOPs
            for work in self.ray.get(calls):
                for k, (tokens, attended, logits) in work.items():
                    self.learner.account.pass_work(k).add(tokens, attended, logits)

        return wait

    reduce_grads = staticmethod(_sum_grads)
    reduce_metrics = staticmethod(_sum_metrics)

    def rank_weights(self, rank: int) -> dict[str, torch.Tensor]:
        return self.ray.get(self.ranks[rank - 1].weights.remote())

    def close(self) -> None:
        try:
            self.ray.get([r.leave.remote() for r in self.ranks])
        finally:
            for r in self.ranks:
                self.ray.kill(r)
            self.ranks = []
            if dist.is_initialized():
                dist.destroy_process_group()
