"""The RL loop: positions -> tasks -> rollouts -> rewards -> advantages -> clipped policy gradient -> update.

Every step is on the page in `RLTrainer.step`; the pieces are swappable through their interfaces (an
`Environment` makes tasks and scores them, a `RolloutEngine` samples, `grpo_loss` is the objective), so other
domains, rewards and engines plug in without touching the loop.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nextrl.algo.advantages import group_advantages, rlp_advantages, uniform_groups
from nextrl.algo.grpo import PolicyBatch, grpo_loss
from nextrl.algo.logprobs import completion_logprobs, tree_completion_logprobs
from nextrl.algo.prefix_tree import group_by_prefix
from nextrl.config import RunConfig
from nextrl.engine.base import Rollout, RolloutEngine
from nextrl.env.base import Environment
from nextrl.model.flops import FlopModel, TokenWork
from nextrl.model.peak import matmul_peak
from nextrl.selection.index import PositionIndex
from nextrl.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from nextrl.trainer.dynamic_sampling import UNIFORM_ATOL, Group, fill_batch, is_uniform
from nextrl.trainer.empty_thought import answer_params, closed_prompts, join_empty_thought
from nextrl.trainer.lm import lm_loss
from nextrl.trainer.optim import build_optimizer, build_scheduler, clip_grad
from nextrl.trainer.rewards import RewardScorer
from nextrl.trainer.self_selection import answer_entropy, build_positions, loss_token_masks
from nextrl.utils.metrics import MetricsLogger
from nextrl.utils.progress import progress

FLOP_STAGES = ("prefill", "decode", "scoring", "loss_forward", "loss_backward", "reference", "lm")


@dataclass
class RLState:
    """Everything besides weights/optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    # model FLOPs by stage: rollout prefill/decode, loss forward/backward, reference scoring
    flops: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FLOP_STAGES, 0.0))
    groups_kept: int = 0
    groups_dropped: int = 0
    samples: int = 0
    rollout_tokens: int = 0
    seconds: float = 0.0
    generation_seconds: float = 0.0
    training_seconds: float = 0.0
    reward_history: list[float] = field(default_factory=list)
    groups_drawn: int = 0  # with dynamic sampling: every group generated, kept or dropped
    groups_with_signal: int = 0  # drawn groups whose rewards differ (the others carry no gradient)


def plan_micro_batches(
    prompts: list[list[int]], size: int, share_prefix: bool, max_nodes: int
) -> list[list[int]]:
    """Indices of each micro-batch, about `size` sequences each. With prefix sharing, sequences whose prompts
    share a prefix stay in one micro-batch so that the prefix is encoded once (a group larger than `size` gets
    a micro-batch of its own); without, consecutive slices."""
    if not share_prefix:
        return [list(range(s, min(s + size, len(prompts)))) for s in range(0, len(prompts), size)]
    chunks: list[list[int]] = []
    for g in group_by_prefix(prompts, max_nodes):
        if chunks and len(chunks[-1]) + len(g) <= size:
            chunks[-1] += g
        else:
            chunks.append(list(g))
    return chunks


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
        self.sampler = build_positions(cfg, index)
        self.rewards = RewardScorer(cfg, env, tokenizer, policy, autocast)
        verifier_free = self.rewards.verifier_free
        self.advantage_kind = (
            ("rlp" if verifier_free else "group") if self.rl.advantages == "auto" else self.rl.advantages
        )
        self.thought_only = (
            verifier_free if self.rl.loss_tokens == "auto" else self.rl.loss_tokens == "thought"
        )
        self._keep_rate = 1.0  # dynamic sampling: the last step's kept/drawn, to over-sample from the start
        self.reference = None
        if self.rl.kl_coef > 0:
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.flop_model = FlopModel.from_model(policy)
        self.peak = matmul_peak(device, autocast or torch.float32)  # MFU denominator, measured once
        self.work: dict[str, TokenWork] = {}  # tokens each loss-side pass processed in the current step
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
        self.rewards.load_state_dict(s.get("reward_baseline"))
        self._keep_rate = s.get("keep_rate", 1.0)
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
            "reward_baseline": self.rewards.state_dict(),
            "keep_rate": self._keep_rate,
        }
        return save_checkpoint(
            self.ckpt_dir, self.state.step, self.policy, self.tokenizer, self.optimizer, self.scheduler, state
        )

    # ---- one step -----------------------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        t0 = time.time()
        self.work = {"prefill": TokenWork(), "decode": TokenWork()}
        self.rewards.work = TokenWork()
        self.t_gen = 0.0
        drawn: list[Group] = []

        # 1-2. Positions -> tasks -> G rollouts each -> rewards. With dynamic sampling, groups without signal
        # are dropped and the batch is refilled from the position stream until it is full.
        def draw(n: int) -> list[Group]:
            groups = self.draw_groups(n)
            drawn.extend(groups)
            return groups

        P = self.rl.positions_per_step
        if self.rl.dynamic_sampling:
            groups, ds = fill_batch(draw, P, self.rl.max_draws, prior_keep_rate=max(self._keep_rate, 0.25))
            ds.pop("surplus")  # fresh groups beyond the batch: discarded, never reused
            self._keep_rate = (ds["groups_kept"] + ds["groups_surplus"]) / max(ds["groups_drawn"], 1)
        else:
            groups, ds = draw(P), {}

        # 3. Advantages within each group; groups with equal rewards carry no signal.
        R = torch.tensor([g.rewards for g in groups], dtype=torch.float32).reshape(len(groups), -1)
        if self.advantage_kind == "rlp":
            adv = rlp_advantages(R)
        else:
            adv = group_advantages(R, scale=self.rl.scale_rewards)
        keep = (
            ~uniform_groups(R) if self.rl.drop_uniform_groups else torch.ones(len(groups), dtype=torch.bool)
        )
        kept = [(i, j) for i in range(len(groups)) if keep[i] for j in range(len(groups[i].rollouts))]
        self.last_batch = (
            [g.task[1] for g in groups],
            [g.rollouts for g in groups],
            [g.task[2] for g in groups],
        )  # for inspection and benchmarks; replaced every step

        # 4. Clipped policy-gradient update on the kept groups, on the tokens the loss trains.
        t_train = time.time()
        batch = loss_token_masks(
            [groups[i].rollouts[j] for i, j in kept], self.thought_only, self.rl.entropy_mask_rho
        )
        lm_seqs, lm_empty = [], None
        if self.rl.lm_coef > 0:
            tasks = [g.task[1] for g in groups]
            lm_seqs = lm_sequences(tasks)
            if len(self.params.phases) > 1:  # a thought phase: teach that an empty one costs nothing
                lm_empty = empty_thought_targets(tasks, self.env.think_open, self.env.think_close)
        train_metrics = self.update(batch, [float(adv[i, j]) for i, j in kept], lm_seqs, lm_empty)
        t_train = time.time() - t_train
        self.engine.sync_weights(self.policy, self.state.step + 1)
        return self.account(drawn, groups, R, keep, train_metrics, ds, t0, t_train)

    def draw_groups(self, n: int) -> list[Group]:
        """Tasks for the next `n` positions (whole prefix units), G rollouts each, scored."""
        rows = self.sampler.take(n, self.state.step)
        tasks = self.index.tasks(self.env, rows, self.cfg.selection.context)
        t = time.time()
        prompts = [t.prompt_ids for t in tasks]
        k = self.rl.empty_thought_samples
        rollouts = self._generate(prompts, dataclasses.replace(self.params, n=self.params.n - k))
        if k:  # k samples per group close the thought at once (see trainer/empty_thought.py)
            close = self.env.think_close
            answers = self._generate(closed_prompts(prompts, close), answer_params(self.params, k))
            entropies = [g[0].entropies[0] if g[0].entropies else 0.0 for g in rollouts]
            empty = join_empty_thought(prompts, answers, self._close_logprobs(prompts), entropies, close)
            rollouts = [list(a) + list(b) for a, b in zip(rollouts, empty, strict=True)]
        self.t_gen += time.time() - t
        rewards = self.rewards.score(tasks, rollouts)
        groups = []
        for row, task, ro, rw in zip(rows, tasks, rollouts, rewards, strict=True):
            totals = [r.total for r in rw]
            signal = max(totals) - min(totals) > UNIFORM_ATOL
            self.state.groups_with_signal += int(signal)
            self.sampler.visit(row, totals, signal, answer_entropy(ro))
            groups.append(Group((row, task, rw), ro, totals))
        return groups

    @torch.no_grad()
    def _close_logprobs(self, prompts) -> list[float]:
        """log π(</think> | prompt) at the sampling temperature: the behaviour log-prob of an empty thought."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            lp = self.logprobs(
                self.policy, prompts, [[self.env.think_close]] * len(prompts), self.work["prefill"]
            )
        finally:
            self.policy.train(was_training)
        return lp[:, 0].tolist()

    def _generate(self, prompts, params) -> list[list[Rollout]]:
        """The engine's rollouts, with the work it reports added to this step's prefill/decode counts."""
        rollouts = self.engine.generate(prompts, params)
        gen = getattr(self.engine, "last_work", None)
        if gen is not None:
            for k in ("prefill", "decode"):
                self.work[k].add(gen[k].tokens, gen[k].attended, gen[k].logits)
        else:  # an engine that does not report: estimate a plain prefill + decode per sample
            for r in (r for g in rollouts for r in g):
                self.work["prefill"].add_sequence(len(r.prompt_ids), logits=1)
                n = len(r.completion_ids)
                self.work["decode"].add_sequence(n, len(r.prompt_ids), logits=n)
        return rollouts

    def update(
        self,
        rollouts: list[Rollout],
        advantages: list[float],
        lm_seqs: list[list[int]] | None = None,
        lm_empty: tuple[list[list[int]], list[int]] | None = None,
    ) -> dict[str, float]:
        """`updates_per_batch` optimizer steps over the batch, in micro-batches whose losses are weighted so that
        the sum is exactly the loss of the whole batch under the chosen normalisation; plus, with `rl.lm_coef`,
        the next-token loss on the step's contexts (`lm_seqs`) and on the true next token after an empty
        thought at each position (`lm_empty`: sequences and the index of their one target), each a mean."""
        lm_seqs = lm_seqs or []
        if not rollouts and not lm_seqs and not lm_empty:  # nothing to train: the schedule still advances
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of")
                self.scheduler.step()
            return {}
        n_tok = sum(sum(r.action_mask) for r in rollouts)
        totals: dict[str, float] = {}
        chunks = self.plan_chunks(rollouts) if rollouts else []
        for _ in range(self.rl.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            for idx in chunks:
                chunk, chunk_adv = [rollouts[i] for i in idx], [advantages[i] for i in idx]
                loss, metrics = self.chunk_loss(chunk, chunk_adv)
                if self.rl.loss_norm == "dapo":
                    weight = sum(sum(r.action_mask) for r in chunk) / max(n_tok, 1)
                else:  # grpo and dr_grpo average over sequences
                    weight = len(chunk) / len(rollouts)
                (loss * weight).backward()
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v * weight / self.rl.updates_per_batch
            if lm_seqs:
                nll = self.lm_term(lm_seqs)
                totals["lm_loss"] = totals.get("lm_loss", 0.0) + nll / self.rl.updates_per_batch
            if lm_empty:
                nll = self.lm_term(*lm_empty)
                totals["lm_loss_empty_thought"] = (
                    totals.get("lm_loss_empty_thought", 0.0) + nll / self.rl.updates_per_batch
                )
            totals["grad_norm"] = (
                totals.get("grad_norm", 0.0)
                + clip_grad(self.policy.parameters(), self.rl.grad_clip) / self.rl.updates_per_batch
            )
            self.optimizer.step()
            self.rewards.update_baseline()  # RLP's EMA follows every optimizer step
        self.scheduler.step()
        return totals

    def lm_term(self, seqs: list[list[int]], starts: list[int] | None = None) -> float:
        """Backward of `rl.lm_coef` × the mean next-token loss over `seqs` (sequence i trained on its targets
        from index `starts[i]` on, default all), in micro-batches weighted by their share of the predicted
        tokens (exactly the whole batch's mean); returns that mean (nats/token)."""
        starts = starts or [0] * len(seqs)
        n_pred = sum(len(q) - 1 - a for q, a in zip(seqs, starts, strict=True))
        work = self.work.setdefault("lm", TokenWork())
        size, total = self.rl.micro_batch_size, 0.0
        self.policy.train()
        for s in range(0, len(seqs), size):
            chunk, first = seqs[s : s + size], starts[s : s + size]
            width = max(len(q) for q in chunk)
            tokens = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width - 1), dtype=torch.bool)
            for r, (q, a) in enumerate(zip(chunk, first, strict=True)):
                tokens[r, : len(q)] = torch.tensor(q)
                mask[r, a : len(q) - 1] = True
                work.add_sequence(len(q) - 1, logits=len(q) - 1 - a)
            share = int(mask.sum()) / max(n_pred, 1)
            loss = lm_loss(self.policy, tokens.to(self.device), mask.to(self.device), self.autocast)
            (self.rl.lm_coef * share * loss).backward()
            total += float(loss.detach()) * share
        return total

    def plan_chunks(self, rollouts: list[Rollout]) -> list[list[int]]:
        prompts = [r.prompt_ids for r in rollouts]
        return plan_micro_batches(
            prompts, self.rl.micro_batch_size, self.rl.share_prefix, self.rl.max_tree_nodes
        )

    def logprobs(self, model, prompts, comps, work: TokenWork) -> torch.Tensor:
        """Per-token log-probs of completions under `model`: the prefix-tree path or the plain reference path."""
        T, pad = self.cfg.sampling.temperature, self.tokenizer.pad_token_id
        if self.rl.share_prefix:
            return tree_completion_logprobs(
                model, prompts, comps, T, pad, self.autocast, max_nodes=self.rl.max_tree_nodes, work=work
            )
        return completion_logprobs(model, prompts, comps, T, pad, self.autocast, work=work)

    def chunk_loss(
        self, chunk: list[Rollout], advantages: list[float]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        prompts = [r.prompt_ids for r in chunk]
        comps = [r.completion_ids for r in chunk]
        self.policy.train()
        logp = self.logprobs(self.policy, prompts, comps, self.work.setdefault("loss", TokenWork()))
        width = logp.shape[1]

        def padded(rows: list[list[float]]) -> torch.Tensor:
            return torch.tensor([row + [0.0] * (width - len(row)) for row in rows], device=logp.device)

        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = self.logprobs(
                    self.reference, prompts, comps, self.work.setdefault("reference", TokenWork())
                )
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
        drawn: list[Group],
        groups: list[Group],
        R: torch.Tensor,
        keep: torch.Tensor,
        train: dict[str, float],
        ds: dict[str, Any],
        t0: float,
        t_train: float,
    ) -> dict[str, Any]:
        st, t_gen = self.state, self.t_gen
        flat = [r for g in drawn for r in g.rollouts]
        rewards = [g.task[2] for g in drawn]
        prompt_tokens = sum(len(r.prompt_ids) for r in flat)
        gen_tokens = sum(len(r.completion_ids) for r in flat)
        flops = self.step_flops()
        for k, v in flops.items():
            st.flops[k] = st.flops.get(k, 0.0) + v
        train_tokens = self.work["loss"].tokens if "loss" in self.work else 0
        st.step += 1
        n_kept = int(keep.sum())
        n_dropped = len(drawn) - n_kept  # dropped by dynamic sampling or by the uniform-group filter
        st.groups_kept += n_kept
        st.groups_dropped += n_dropped
        st.groups_drawn += len(drawn)
        st.samples += len(flat)
        st.rollout_tokens += gen_tokens
        dt = time.time() - t0
        st.seconds += dt
        st.generation_seconds += t_gen
        st.training_seconds += t_train
        f_gen = flops["prefill"] + flops["decode"]
        f_train = flops["loss_forward"] + flops["loss_backward"] + flops["reference"] + flops["lm"]
        all_totals = [x for g in drawn for x in g.rewards]
        mean_reward = sum(all_totals) / max(len(all_totals), 1)
        st.reward_history.append(mean_reward)
        thought = [r.phase_starts[1] if len(r.phase_starts) > 1 else len(r.completion_ids) for r in flat]
        metrics: dict[str, Any] = {
            "reward/mean": mean_reward,
            "reward/std": float(torch.tensor(all_totals).std()) if len(all_totals) > 1 else 0.0,
            "reward/batch_mean": float(R.mean()) if R.numel() else 0.0,
            "groups/kept": n_kept,
            "groups/dropped": n_dropped,
            "groups/drawn": len(drawn),
            # groups whose rewards differ: the only ones that carry a policy gradient
            "groups/signal_fraction": sum(not is_uniform(g) for g in drawn) / max(len(drawn), 1),
            "thought/len_mean": sum(thought) / max(len(thought), 1),
            # thoughts closed at once (`</think>` first), sampled or forced by rl.empty_thought_samples
            "thought/empty_frac": sum(n <= 1 for n in thought) / max(len(thought), 1),
            "answer/parsed_frac": sum(r.parsed for g in rewards for r in g) / max(len(flat), 1),
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_second": len(flat) / max(dt, 1e-9),
            "tokens_per_second": (prompt_tokens + gen_tokens + train_tokens) / max(dt, 1e-9),
            "generation_seconds": t_gen,
            "training_seconds": t_train,
            "flops/step": sum(flops.values()),
            "flops/total": sum(st.flops.values()),
            **{f"flops/{k}": v for k, v in flops.items()},
            "flops/per_sample": sum(flops.values()) / max(len(flat), 1),
            "mfu/rollout": f_gen / max(t_gen, 1e-9) / self.peak,
            "mfu/training": f_train / max(t_train, 1e-9) / self.peak,
            "mfu/step": sum(flops.values()) / max(dt, 1e-9) / self.peak,
        }
        k_empty = self.rl.empty_thought_samples
        if k_empty:  # the forced empty thoughts are the last k of each group: not thinking vs thinking
            empty = [x for g in drawn for x in g.rewards[-k_empty:]]
            think = [x for g in drawn for x in g.rewards[:-k_empty]]
            metrics["reward/empty_thought"] = sum(empty) / max(len(empty), 1)
            metrics["reward/thinking"] = sum(think) / max(len(think), 1)
        for k in ("draws", "short_by"):
            if k in ds:
                metrics[f"dynamic/{k}"] = ds[k]
        for k, v in self.sampler.counts().items():
            if isinstance(v, int | float):
                metrics[f"positions/{k}"] = v
            elif isinstance(v, dict):
                metrics.update(
                    {f"positions/{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, int | float)}
                )
        for name in sorted({k for g in rewards for r in g for k in r.components}):
            vals = [r.components.get(name, 0.0) for g in rewards for r in g]
            metrics[f"reward/{name}"] = sum(vals) / len(vals)
        metrics.update(train)
        if self.logger is not None:
            self.logger.log("rl", st.step, metrics)
        return metrics

    def step_flops(self) -> dict[str, float]:
        """Model FLOPs this step really spent, from the tokens each pass processed (shared prefixes count once
        on the prefix-sharing paths)."""
        fm = self.flop_model
        # recorded by every pass (updates_per_batch passes over the batch each add theirs)
        loss = fm.forward_work(self.work["loss"]) if "loss" in self.work else 0.0
        ref = fm.forward_work(self.work["reference"]) if "reference" in self.work else 0.0
        lm = 3.0 * fm.forward_work(self.work["lm"]) if "lm" in self.work else 0.0  # forward + backward
        return {
            "prefill": fm.forward_work(self.work["prefill"]),
            "decode": fm.forward_work(self.work["decode"]),
            "scoring": fm.forward_work(self.rewards.work),
            "loss_forward": loss,
            "loss_backward": 2.0 * loss,
            "reference": ref,
            "lm": lm,
        }

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
            "groups_drawn": st.groups_drawn,
            "groups_with_signal": st.groups_with_signal,
            "signal_fraction": st.groups_with_signal / max(st.groups_drawn, 1),
            "reward": str(self.rewards.spec),
            "advantages": self.advantage_kind,
            "loss_tokens": "thought" if self.thought_only else "all",
            "empty_thought_samples": self.rl.empty_thought_samples,
            "lm_coef": self.rl.lm_coef,
            "positions": self.sampler.counts(),
            "samples": st.samples,
            "seconds": st.seconds,
            "samples_per_second": st.samples / max(st.seconds, 1e-9),
            "generation_seconds": st.generation_seconds,
            "training_seconds": st.training_seconds,
            "matmul_peak_flops": self.peak,
            "mfu_training": (
                st.flops["loss_forward"] + st.flops["loss_backward"] + st.flops["reference"] + st.flops["lm"]
            )
            / max(st.training_seconds, 1e-9)
            / self.peak,
            "mfu_rollout": (st.flops["prefill"] + st.flops["decode"])
            / max(st.generation_seconds, 1e-9)
            / self.peak,
            "reward_first": sum(h[:k]) / k if h else None,
            "reward_last": sum(h[-k:]) / k if h else None,
        }


def lm_sequences(tasks) -> list[list[int]]:
    """The text the step's positions read, once: each position's context plus its true next token, minus those
    that are a prefix of another (positions of one stripe nest), for the next-token term of `rl.lm_coef`."""
    seqs = sorted({(*t.meta["context_ids"], t.meta["target_ids"][0]) for t in tasks if t.meta["target_ids"]})
    out = [s for a, s in enumerate(seqs) if not (a + 1 < len(seqs) and seqs[a + 1][: len(s)] == s)]
    return [list(s) for s in out if len(s) > 1]


def empty_thought_targets(tasks, think_open: int, think_close: int) -> tuple[list[list[int]], list[int]]:
    """For each position: `context <think></think> x_t`, trained on x_t only (its index is returned), so the
    next-token term also teaches that an empty thought changes nothing: closing the thought at once must cost
    the policy no accuracy, or "not thinking" is no option for it to learn."""
    seqs, starts = [], []
    for t in tasks:
        ctx = list(t.meta["context_ids"])
        if ctx and t.meta["target_ids"]:
            seqs.append([*ctx, think_open, think_close, int(t.meta["target_ids"][0])])
            starts.append(len(seqs[-1]) - 2)
    return seqs, starts
