"""The RL loop: positions -> tasks -> rollouts -> rewards -> advantages -> clipped policy gradient -> update.

Every step is on the page in `RLTrainer.step`; the pieces are swappable through their interfaces (an
`Environment` makes tasks and scores them, a `RolloutEngine` samples, `grpo_loss` is the objective), so other
domains, rewards and engines plug in without touching the loop.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nextrl.algo.advantages import group_advantages, uniform_groups
from nextrl.algo.grpo import PolicyBatch, grpo_loss
from nextrl.algo.logprobs import completion_logprobs
from nextrl.config import RunConfig
from nextrl.data.positions import PositionSampler
from nextrl.engine.base import Rollout, RolloutEngine
from nextrl.env.base import Environment, Reward, Task
from nextrl.model.flops import FlopModel
from nextrl.selection.index import PositionIndex
from nextrl.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from nextrl.trainer.optim import build_optimizer, build_scheduler, clip_grad
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.progress import progress


@dataclass
class RLState:
    """Everything besides weights/optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    flops: dict[str, float] = field(
        default_factory=lambda: {"rollout": 0.0, "training": 0.0, "reference": 0.0}
    )
    groups_kept: int = 0
    groups_dropped: int = 0
    samples: int = 0
    rollout_tokens: int = 0
    seconds: float = 0.0
    reward_history: list[float] = field(default_factory=list)


class RLTrainer:
    def __init__(
        self,
        cfg: RunConfig,
        policy,
        tokenizer,
        index: PositionIndex,
        env: Environment,
        engine: RolloutEngine,
        out_dir: Path,
        device: torch.device,
        autocast: torch.dtype | None,
        logger: MetricsLogger | None = None,
    ):
        self.cfg, self.rl = cfg, cfg.rl
        self.policy, self.tokenizer, self.index = policy, tokenizer, index
        self.env, self.engine = env, engine
        self.out_dir, self.device, self.autocast, self.logger = Path(out_dir), device, autocast, logger
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.optimizer = build_optimizer(policy, self.rl.lr, self.rl.weight_decay)
        self.scheduler = build_scheduler(
            self.optimizer, self.rl.warmup_steps, max(self.rl.steps, 1), self.rl.schedule
        )
        self.sampler = PositionSampler(index.rows("train"), seed=self.rl.seed)
        self.reference = None
        if self.rl.kl_coef > 0:
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.flop_model = FlopModel.from_model(policy)
        self.state = RLState()
        self.params = env.sampling_params(
            cfg.sampling.group_size, cfg.sampling.temperature, cfg.sampling.top_p
        )

    # ---- resume -------------------------------------------------------------------------------------------
    def maybe_resume(self) -> bool:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        blob = load_checkpoint(path, self.policy, self.optimizer, self.scheduler)
        s = blob["state"]
        self.state = RLState(**s["rl_state"])
        self.sampler.load_state_dict(s["sampler"])
        if s.get("engine") is not None and hasattr(self.engine, "load_state_dict"):
            self.engine.load_state_dict(s["engine"])
        self.engine.sync_weights(self.policy, self.state.step)
        return True

    def save(self) -> Path:
        engine_state = self.engine.state_dict() if hasattr(self.engine, "state_dict") else None
        state = {
            "rl_state": self.state.__dict__,
            "sampler": self.sampler.state_dict(),
            "engine": engine_state,
        }
        return save_checkpoint(
            self.ckpt_dir, self.state.step, self.policy, self.tokenizer, self.optimizer, self.scheduler, state
        )

    # ---- one step -----------------------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        t0 = time.time()
        G = self.cfg.sampling.group_size
        tasks = self.index.tasks(
            self.env, self.sampler.take(self.rl.positions_per_step), self.cfg.selection.context
        )

        # 1. Rollouts: G samples per task, with the sampling policy's log-probs.
        t_gen = time.time()
        rollouts = self.engine.generate([t.prompt_ids for t in tasks], self.params)
        t_gen = time.time() - t_gen

        # 2. Rewards, then group-relative advantages; groups with equal rewards carry no signal.
        rewards = self.env.score(tasks, rollouts)
        R = torch.tensor([[r.total for r in group] for group in rewards], dtype=torch.float32)
        adv = group_advantages(R, scale=self.rl.scale_rewards)
        keep = ~uniform_groups(R) if self.rl.drop_uniform_groups else torch.ones(len(tasks), dtype=torch.bool)
        kept = [(i, j) for i in range(len(tasks)) if keep[i] for j in range(G)]

        # 3. Clipped policy-gradient update on the kept groups.
        t_train = time.time()
        train_metrics = self.update([rollouts[i][j] for i, j in kept], [float(adv[i, j]) for i, j in kept])
        t_train = time.time() - t_train
        self.engine.sync_weights(self.policy, self.state.step + 1)

        return self.account(tasks, rollouts, rewards, R, keep, train_metrics, t0, t_gen, t_train)

    def update(self, rollouts: list[Rollout], advantages: list[float]) -> dict[str, float]:
        """`updates_per_batch` optimizer steps over the batch, in micro-batches whose losses are weighted so that
        the sum is exactly the loss of the whole batch under the chosen normalisation."""
        if not rollouts:  # every group was uniform: no update, but the schedule still advances one step
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of")
                self.scheduler.step()
            return {}
        mb = self.rl.micro_batch_size
        n_tok = sum(sum(r.action_mask) for r in rollouts)
        totals: dict[str, float] = {}
        for _ in range(self.rl.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            for s in range(0, len(rollouts), mb):
                chunk, chunk_adv = rollouts[s : s + mb], advantages[s : s + mb]
                loss, metrics = self.chunk_loss(chunk, chunk_adv)
                if self.rl.loss_norm == "dapo":
                    weight = sum(sum(r.action_mask) for r in chunk) / max(n_tok, 1)
                else:  # grpo and dr_grpo average over sequences
                    weight = len(chunk) / len(rollouts)
                (loss * weight).backward()
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v * weight / self.rl.updates_per_batch
            totals["grad_norm"] = (
                totals.get("grad_norm", 0.0)
                + clip_grad(self.policy.parameters(), self.rl.grad_clip) / self.rl.updates_per_batch
            )
            self.optimizer.step()
        self.scheduler.step()
        return totals

    def chunk_loss(
        self, chunk: list[Rollout], advantages: list[float]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        prompts = [r.prompt_ids for r in chunk]
        comps = [r.completion_ids for r in chunk]
        T = self.cfg.sampling.temperature
        pad = self.tokenizer.pad_token_id
        self.policy.train()
        logp = completion_logprobs(self.policy, prompts, comps, T, pad, self.autocast)
        width = logp.shape[1]

        def padded(rows: list[list[float]]) -> torch.Tensor:
            return torch.tensor([row + [0.0] * (width - len(row)) for row in rows], device=logp.device)

        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = completion_logprobs(self.reference, prompts, comps, T, pad, self.autocast)
        batch = PolicyBatch(
            logprobs=logp,
            old_logprobs=padded([r.logprobs for r in chunk]),
            advantages=torch.tensor(advantages, device=logp.device),
            mask=padded([[float(m) for m in r.action_mask] for r in chunk]),
            ref_logprobs=ref,
        )
        return grpo_loss(
            batch,
            self.rl.loss_norm,
            self.rl.clip_eps_low,
            self.rl.clip_eps_high,
            kl_coef=self.rl.kl_coef,
            max_tokens=self.params.max_new_tokens,
        )

    # ---- bookkeeping --------------------------------------------------------------------------------------
    def account(
        self,
        tasks: list[Task],
        rollouts: list[list[Rollout]],
        rewards: list[list[Reward]],
        R: torch.Tensor,
        keep: torch.Tensor,
        train: dict[str, float],
        t0: float,
        t_gen: float,
        t_train: float,
    ) -> dict[str, Any]:
        st, fm = self.state, self.flop_model
        flat = [r for group in rollouts for r in group]
        kept = [r for i, group in enumerate(rollouts) if keep[i] for r in group]
        prompt_tokens = sum(len(r.prompt_ids) for r in flat)
        gen_tokens = sum(len(r.completion_ids) for r in flat)
        mean_prompt = prompt_tokens / max(len(flat), 1)
        # The PyTorch sampler prefills every sample's prompt and decodes its completion token by token.
        f_roll = fm.forward(prompt_tokens, (mean_prompt + 1) / 2) + fm.forward(
            gen_tokens, mean_prompt + gen_tokens / max(len(flat), 1) / 2
        )
        train_tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in kept)
        mean_len = train_tokens / max(len(kept), 1)
        f_fwd = fm.forward(train_tokens, (mean_len + 1) / 2)
        f_train = 3.0 * f_fwd * self.rl.updates_per_batch if kept else 0.0
        f_ref = f_fwd if (self.reference is not None and kept) else 0.0
        st.flops["rollout"] += f_roll
        st.flops["training"] += f_train
        st.flops["reference"] += f_ref
        st.step += 1
        n_kept = int(keep.sum())
        st.groups_kept += n_kept
        st.groups_dropped += len(tasks) - n_kept
        st.samples += len(flat)
        st.rollout_tokens += gen_tokens
        dt = time.time() - t0
        st.seconds += dt
        mean_reward = float(R.mean())
        st.reward_history.append(mean_reward)
        thought = [r.phase_starts[1] if len(r.phase_starts) > 1 else len(r.completion_ids) for r in flat]
        metrics: dict[str, Any] = {
            "reward/mean": mean_reward,
            "reward/std": float(R.std()) if R.numel() > 1 else 0.0,
            "groups/kept": n_kept,
            "groups/dropped": len(tasks) - n_kept,
            "thought/len_mean": sum(thought) / max(len(thought), 1),
            "answer/parsed_frac": sum(r.parsed for g in rewards for r in g) / max(len(flat), 1),
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_second": len(flat) / max(dt, 1e-9),
            "tokens_per_second": (prompt_tokens + gen_tokens + train_tokens) / max(dt, 1e-9),
            "generation_seconds": t_gen,
            "training_seconds": t_train,
            "flops/step": f_roll + f_train + f_ref,
            "flops/total": sum(st.flops.values()),
        }
        for name in sorted({k for g in rewards for r in g for k in r.components}):
            vals = [r.components.get(name, 0.0) for g in rewards for r in g]
            metrics[f"reward/{name}"] = sum(vals) / len(vals)
        metrics.update(train)
        if self.logger is not None:
            self.logger.log("rl", st.step, metrics)
        return metrics

    # ---- the loop -----------------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> RLState:
        """Run to `rl.steps` (or stop early after `stop_after` steps of this call, for tests of resume)."""
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

    def summary(self) -> dict[str, Any]:
        st = self.state
        h = st.reward_history
        k = max(1, math.ceil(len(h) / 10))
        return {
            "steps": st.step,
            "flops": dict(st.flops),
            "flops_total": sum(st.flops.values()),
            "groups_kept": st.groups_kept,
            "groups_dropped": st.groups_dropped,
            "samples": st.samples,
            "seconds": st.seconds,
            "samples_per_second": st.samples / max(st.seconds, 1e-9),
            "reward_first": sum(h[:k]) / k if h else None,
            "reward_last": sum(h[-k:]) / k if h else None,
        }
