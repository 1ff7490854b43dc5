"""The RL loop. One step, top to bottom:

    1-2. producer: tasks (TaskSource) → G rollouts each (RolloutEngine) → rewards (Environment)
         [with dynamic sampling: groups without signal are dropped and the batch refilled]
    3-4. learner:  advantages within each group → clipped policy gradient on the trained tokens → update
    5.   the engine gets the new weights; the step's work, seconds and rewards become its metrics

The trainer knows no domain and no placement: tasks come from any `TaskSource` (positions of a document index,
a file of problems, a mixture), rewards from any `Environment`, rollouts from any `RolloutEngine` whose stated
`capabilities` cover what the config asks for. The producer and learner are separate objects so that they can
be placed on different processes (Ray); in-process they run one after the other.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from nextrl.accounting.flops import FlopModel
from nextrl.accounting.peak import matmul_peak
from nextrl.config import RunConfig
from nextrl.config.reward_spec import RewardSpec
from nextrl.engine.base import RolloutEngine
from nextrl.env.base import Environment, ScoringModel, TaskSource
from nextrl.errors import ConfigError
from nextrl.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from nextrl.trainer.dynamic_sampling import fill_batch
from nextrl.trainer.learner import Learner
from nextrl.trainer.producer import Producer, ScoredGroup
from nextrl.trainer.step_account import FLOP_STAGES, RLState, StepAccount, run_mfu
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.progress import progress
from nextrl.utils.rewards import rewards_differ

__all__ = ["FLOP_STAGES", "RLState", "RLTrainer"]


class RLTrainer:
    def __init__(
        self,
        cfg: RunConfig,
        policy,
        tokenizer,
        source: TaskSource,
        env: Environment,
        engine: RolloutEngine,
        out_dir: Path,
        device: torch.device,
        autocast: torch.dtype | None,
        logger: MetricsLogger | None = None,
        producer=None,
    ):
        self.cfg, self.rl = cfg, cfg.rl
        self.policy, self.tokenizer, self.source, self.env, self.engine = (
            policy,
            tokenizer,
            source,
            env,
            engine,
        )
        self.out_dir, self.device, self.autocast, self.logger = Path(out_dir), device, autocast, logger
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._check_capabilities()
        self.params = env.sampling_params(
            cfg.sampling.group_size, cfg.sampling.temperature, cfg.sampling.top_p
        )
        # the handle through which rewards and the empty-thought log-prob read the policy
        self.policy_handle = ScoringModel(
            policy, tokenizer.pad_token_id, autocast, cfg.sharing.enabled, cfg.sharing.max_tree_nodes
        )
        env.bind_scorer(self.policy_handle)
        # in-process by default; a distributed producer (nextrl.distributed) has the same interface
        self.producer = producer or Producer(
            source,
            env,
            engine,
            self.params,
            self.policy_handle,
            self.rl.empty_thought_samples,
            cfg.curriculum.min_spread,
        )
        self.learner = Learner(
            cfg, policy, tokenizer.pad_token_id, env, device, autocast, self.params.max_new_tokens
        )
        self._keep_rate = 1.0  # dynamic sampling: the last step's kept/drawn, to over-sample from the start
        self.flop_model = FlopModel.from_model(policy)
        self.peak = matmul_peak(device, autocast or torch.float32)  # MFU denominator, measured once
        self.state = RLState()
        self.last_groups: list[ScoredGroup] = []  # the last step's batch, for inspection and benchmarks

    def _check_capabilities(self) -> None:
        caps = self.engine.capabilities  # a distributed producer's workers hold engines of the same kind
        if self.rl.entropy_mask_rho < 1.0 and not caps.entropies:
            raise ConfigError(
                f"config key 'rl.entropy_mask_rho': {self.rl.entropy_mask_rho} < 1 needs token entropies, which "
                f"the rollout engine {type(self.engine).__name__} does not record"
            )
        fmt = self.env.thought_format
        if self.rl.empty_thought_samples and (fmt is None or not fmt.has_empty_thought):
            what = "no thought format" if fmt is None else f"thought format '{fmt.name}' has no empty thought"
            raise ConfigError(
                f"config key 'rl.empty_thought_samples': environment '{self.env.name}' has {what} to sample"
            )

    # ---- one step -----------------------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        account = StepAccount()
        version = self.state.step
        # 1-2. tasks -> rollouts -> rewards (dynamic sampling: drop groups without signal and refill)
        groups, drawn, ds = self.collect(account)
        # 3-4. advantages -> loss -> update
        t_train = time.time()
        result = self.learner.learn(groups, account)
        account.training_seconds = time.time() - t_train
        # 5. the engine generates with the new weights from now on (sharded learners: gathered first)
        t_sync = time.time()
        self.producer.sync(self.learner.weights(version + 1))
        account.add_seconds("weight_sync", time.time() - t_sync)
        self.last_groups = groups
        if self.rl.max_off_policy_steps:  # how many updates old the trained samples were
            stale = [version - g.policy_version for g in groups] or [0]
            result.metrics["staleness/mean"] = sum(stale) / len(stale)
            result.metrics["staleness/max"] = max(stale)
            for k in range(self.rl.max_off_policy_steps + 1):  # the histogram: groups k updates old
                result.metrics[f"staleness/{k}"] = stale.count(k)
        return self.record(account, drawn, result, ds)

    def collect(self, account: StepAccount) -> tuple[list[ScoredGroup], list[ScoredGroup], dict[str, Any]]:
        """The step's batch of scored groups, every group drawn for it, and dynamic sampling's stats."""
        drawn: list[ScoredGroup] = []

        def draw(n: int) -> list[ScoredGroup]:
            groups = self.producer.produce(n, self.state.step, account)
            drawn.extend(groups)
            return groups

        P = self.cfg.positions.per_step
        if not self.rl.dynamic_sampling:
            return draw(P), drawn, {}
        groups, ds = fill_batch(
            draw,
            P,
            self.rl.max_draws,
            is_uniform=lambda g: not rewards_differ(g.totals),
            prior_keep_rate=max(self._keep_rate, 0.25),
        )
        ds.pop("surplus")  # fresh groups beyond the batch: discarded, never reused
        self._keep_rate = (ds["groups_kept"] + ds["groups_surplus"]) / max(ds["groups_drawn"], 1)
        return groups, drawn, ds

    def record(self, account: StepAccount, drawn, result, ds: dict[str, Any]) -> dict[str, Any]:
        """The step's metrics, logged; the run's counters advanced."""
        m = account.close(
            self.state,
            drawn,
            result.kept,
            result.batch_rewards,
            self.flop_model,
            self.peak,
            self.rl.empty_thought_samples,
            getattr(self.env, "correctness_of", None),  # an environment that only quacks may not have it
        )
        self.state.groups_with_signal = self.producer.groups_with_signal
        m["lr"] = self.learner.scheduler.get_last_lr()[0]
        for k in ("draws", "short_by"):
            if k in ds:
                m[f"dynamic/{k}"] = ds[k]
        for k, v in self.source.stats().items():
            if isinstance(v, int | float):
                m[f"positions/{k}"] = v
            elif isinstance(v, dict):
                m.update({f"positions/{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, int | float)})
        m.update(result.metrics)
        if self.logger is not None:
            self.logger.log("rl", self.state.step, m)
        return m

    # ---- resume -------------------------------------------------------------------------------------------
    def maybe_resume(self) -> bool:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        peers = self.learner.peers
        blob = load_checkpoint(
            path,
            self.policy,
            self.learner.optimizer,
            self.learner.scheduler,
            peers.load_sharded if self.learner.sharded else None,
        )
        s = blob["state"]
        self.state = RLState(**s["rl_state"])
        self.source.load_state_dict(s["source"])
        self.env.load_state_dict(s.get("env"))
        self._keep_rate = s.get("keep_rate", 1.0)
        self.producer.load_state_dict(s["producer"])
        self.producer.sync(self.learner.weights(self.state.step))
        if peers is not None and not self.learner.sharded:  # the other learner ranks to the restored state
            peers.load_from(self.learner)
        return True

    def save(self) -> Path:
        state = {
            "rl_state": dataclasses.asdict(self.state),
            "source": self.source.state_dict(),
            "producer": self.producer.state_dict(),
            "env": self.env.state_dict(),
            "keep_rate": self._keep_rate,
        }
        return save_checkpoint(
            self.ckpt_dir,
            self.state.step,
            self.policy,
            self.tokenizer,
            self.learner.optimizer,
            self.learner.scheduler,
            state,
            write_sharded=self.learner.peers.save_sharded if self.learner.sharded else None,
        )

    # ---- the loop -----------------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> RLState:
        """Run to `rl.steps` (or stop early after `stop_after` steps of this call, for tests of resume)."""
        if self.logger is not None:  # an earlier attempt may have logged steps beyond the checkpoint
            self.logger.restart("rl", self.state.step)
        bar = progress(total=self.rl.steps, desc="rl", unit="step", initial=self.state.step)
        done_here = 0
        while self.state.step < self.rl.steps:
            m = self.step()
            done_here += 1
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kept=m["groups/kept"])
            if self.state.step % self.rl.checkpoint_every == 0 or self.state.step == self.rl.steps:
                self.save()
            if stop_after is not None and done_here >= stop_after:
                break
        bar.close()
        return self.state

    def close(self) -> None:
        """Release what the learner group and the producer hold (remote ranks and workers, a cluster started
        for the run)."""
        try:
            if self.learner.peers is not None:
                self.learner.peers.close()
        finally:
            self.producer.close()

    def summary(self) -> dict[str, Any]:
        st = self.state
        h = st.reward_history
        k = max(1, math.ceil(len(h) / 10))
        mfu_training, mfu_rollout = run_mfu(st, self.peak)
        return {
            "steps": st.step,
            "flops": dict(st.flops),
            "flops_total": sum(st.flops.values()),
            "groups_kept": st.groups_kept,
            "groups_dropped": st.groups_dropped,
            "groups_drawn": st.groups_drawn,
            "groups_with_signal": st.groups_with_signal,
            "signal_fraction": st.groups_with_signal / max(st.groups_drawn, 1),
            "reward": str(self.env.spec or RewardSpec.parse(self.cfg.reward.spec)),
            "advantages": self.learner.advantage_kind,
            "loss_tokens": "thought" if self.learner.thought_only else "all",
            "empty_thought_samples": self.rl.empty_thought_samples,
            "lm_coef": self.rl.lm_coef,
            "positions": self.source.stats(),
            "samples": st.samples,
            "seconds": st.seconds,
            "samples_per_second": st.samples / max(st.seconds, 1e-9),
            "generation_seconds": st.generation_seconds,
            "training_seconds": st.training_seconds,
            "stage_seconds": dict(st.stage_seconds),
            "matmul_peak_flops": self.peak,
            "mfu_training": mfu_training,
            "mfu_rollout": mfu_rollout,
            "reward_first": sum(h[:k]) / k if h else None,
            "reward_last": sum(h[-k:]) / k if h else None,
        }
