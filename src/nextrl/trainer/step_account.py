"""What an RL step spent and produced: the work of every pass (for model FLOPs), seconds, groups; turned into
the step's metrics and folded into the run's resumable counters (`RLState`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nextrl.accounting.flops import FlopModel, TokenWork
from nextrl.utils.rewards import is_correct, rewards_differ

FLOP_STAGES = ("prefill", "decode", "scoring", "loss_forward", "loss_backward", "reference", "lm")
GENERATION_STAGES = ("prefill", "decode")
TRAINING_STAGES = ("loss_forward", "loss_backward", "reference", "lm")


@dataclass
class RLState:
    """Everything besides weights/optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    # model FLOPs by stage: rollout prefill/decode, reward scoring, loss forward/backward, reference, lm term
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
    # seconds by stage over the run (the per-step `time/<stage>_s` summed, `other` for what no stage claims)
    stage_seconds: dict[str, float] = field(default_factory=dict)


class StepAccount:
    """Filled during one step: `work[pass]` by every pass (the engine's prefill/decode, reward scoring, the
    loss's forward, the reference, the lm term), `generation_seconds` and `training_seconds` by the stages,
    `rollout_seconds` and `waiting_seconds` by the producer (the roles' time)."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.work: dict[str, TokenWork] = {k: TokenWork() for k in ("prefill", "decode", "scoring")}
        self.generation_seconds = 0.0
        self.training_seconds = 0.0
        self.rollout_seconds = 0.0  # a rollout worker busy generating and scoring (mean over workers)
        self.waiting_seconds = 0.0  # the learner waiting for rollouts
        # seconds by stage in this process (prefill, decode, scoring, loss_forward, loss_backward, lm,
        # optimizer); what no stage claims is reported as `other` (Python, bookkeeping, waiting on workers)
        self.stage_seconds: dict[str, float] = {}

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def pass_work(self, name: str) -> TokenWork:
        return self.work.setdefault(name, TokenWork())

    def flops(self, fm: FlopModel) -> dict[str, float]:
        """Model FLOPs this step really spent, from the tokens each pass processed (shared prefixes count once
        on the prefix-sharing paths); the backward of a pass costs twice its forward."""
        fwd = {k: fm.forward_work(w) for k, w in self.work.items()}
        return {
            "prefill": fwd["prefill"],
            "decode": fwd["decode"],
            "scoring": fwd["scoring"],
            "loss_forward": fwd.get("loss", 0.0),
            "loss_backward": 2.0 * fwd.get("loss", 0.0),
            "reference": fwd.get("reference", 0.0),
            "lm": 3.0 * fwd.get("lm", 0.0),  # forward + backward
        }

    def close(
        self,
        state: RLState,
        drawn: list,
        kept_groups: int,
        batch_rewards: torch.Tensor,
        flop_model: FlopModel,
        peak: float,
        empty_thought_samples: int = 0,
        correctness_of: Callable[[Any], str | None] | None = None,
    ) -> dict[str, Any]:
        """Fold this step into `state` and return its metrics. `drawn`: every scored group generated this step
        (kept or not); `kept_groups`: those trained on; `batch_rewards`: [groups, G] of the batch;
        `correctness_of(task)`: the component that says a sample is right (`Environment.correctness_of`), for
        each domain's accuracy."""
        flops = self.flops(flop_model)
        dt = time.time() - self.t0
        other = max(dt - sum(self.stage_seconds.values()), 0.0)  # seconds no stage claims
        all_totals = [x for g in drawn for x in g.totals]
        mean_reward = sum(all_totals) / max(len(all_totals), 1)
        self._fold(state, drawn, kept_groups, flops, dt, other, mean_reward)
        return {
            **_sample_metrics(drawn, kept_groups, batch_rewards, mean_reward),
            **self._cost_metrics(drawn, flops, state, dt, other, peak),
            **(_empty_thought_metrics(drawn) if empty_thought_samples else {}),
            **_domain_metrics(drawn, correctness_of),
            **_component_metrics(drawn),
        }

    def _fold(
        self, st: RLState, drawn: list, kept_groups: int, flops, dt: float, other: float, mean_reward: float
    ) -> None:
        """The run's counters advanced by this step."""
        for k, v in flops.items():
            st.flops[k] = st.flops.get(k, 0.0) + v
        st.step += 1
        st.groups_kept += kept_groups
        st.groups_dropped += len(drawn) - kept_groups  # by dynamic sampling or by the uniform-group filter
        st.groups_drawn += len(drawn)
        st.samples += sum(len(g.rollouts) for g in drawn)
        st.rollout_tokens += sum(len(r.completion_ids) for g in drawn for r in g.rollouts)
        st.seconds += dt
        st.generation_seconds += self.generation_seconds
        st.training_seconds += self.training_seconds
        for k, v in {**self.stage_seconds, "other": other}.items():
            st.stage_seconds[k] = st.stage_seconds.get(k, 0.0) + v
        st.reward_history.append(mean_reward)

    def _cost_metrics(
        self, drawn: list, flops, st: RLState, dt: float, other: float, peak: float
    ) -> dict[str, float]:
        """Throughput, seconds by stage and role, model FLOPs and MFU of the step."""
        flat = [r for g in drawn for r in g.rollouts]
        tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in flat)
        tokens += self.work["loss"].tokens if "loss" in self.work else 0
        t_gen, t_train = self.generation_seconds, self.training_seconds
        f_gen = sum(flops[k] for k in GENERATION_STAGES)
        f_train = sum(flops[k] for k in TRAINING_STAGES)
        return {
            "samples_per_second": len(flat) / max(dt, 1e-9),
            "tokens_per_second": tokens / max(dt, 1e-9),
            "step_seconds": dt,
            # per role: what a rollout worker spent busy and what the learner waited for (training: below)
            "time/rollout_busy_s": self.rollout_seconds,
            "time/learner_waiting_s": self.waiting_seconds,
            **{f"time/{k}_s": v for k, v in sorted(self.stage_seconds.items())},
            "time/other_s": other,
            "generation_seconds": t_gen,
            "training_seconds": t_train,
            "flops/step": sum(flops.values()),
            "flops/total": sum(st.flops.values()),
            **{f"flops/{k}": v for k, v in flops.items()},
            "flops/per_sample": sum(flops.values()) / max(len(flat), 1),
            "mfu/rollout": f_gen / max(t_gen, 1e-9) / peak,
            "mfu/training": f_train / max(t_train, 1e-9) / peak,
            "mfu/step": sum(flops.values()) / max(dt, 1e-9) / peak,
        }


def _sample_metrics(
    drawn: list, kept_groups: int, batch_rewards: torch.Tensor, mean_reward: float
) -> dict[str, float]:
    """Rewards, groups kept and with signal, thought lengths and parsed answers of the step's samples."""
    flat = [r for g in drawn for r in g.rollouts]
    all_totals = [x for g in drawn for x in g.totals]
    thought = [r.phase_starts[1] if len(r.phase_starts) > 1 else len(r.completion_ids) for r in flat]
    return {
        "reward/mean": mean_reward,
        "reward/std": float(torch.tensor(all_totals).std()) if len(all_totals) > 1 else 0.0,
        "reward/batch_mean": float(batch_rewards.mean()) if batch_rewards.numel() else 0.0,
        "groups/kept": kept_groups,
        "groups/dropped": len(drawn) - kept_groups,
        "groups/drawn": len(drawn),
        # groups whose rewards differ: the only ones that carry a policy gradient
        "groups/signal_fraction": sum(rewards_differ(g.totals) for g in drawn) / max(len(drawn), 1),
        "thought/len_mean": sum(thought) / max(len(thought), 1),
        # thoughts closed at once (the closing delimiter first), sampled or forced by rl.empty_thought_samples
        "thought/empty_frac": sum(n <= 1 for n in thought) / max(len(thought), 1),
        "answer/parsed_frac": sum(r.parsed for g in drawn for r in g.rewards) / max(len(flat), 1),
    }


def _empty_thought_metrics(drawn: list) -> dict[str, float]:
    """Mean reward of not thinking vs thinking. The forced empty thoughts are the last k of a group (only in
    groups that had them: in a mixture, an environment without a thought phase has none)."""
    empty = [x for g in drawn if g.empty_samples for x in g.totals[-g.empty_samples :]]
    think = [x for g in drawn if g.empty_samples for x in g.totals[: -g.empty_samples]]
    return {
        "reward/empty_thought": sum(empty) / max(len(empty), 1),
        "reward/thinking": sum(think) / max(len(think), 1),
    }


def _domain_metrics(drawn: list, correctness_of: Callable[[Any], str | None] | None) -> dict[str, float]:
    """In a mixture (more than one domain this step): each domain's reward, signal, groups and accuracy."""
    domains = sorted({g.task.domain for g in drawn})
    if len(domains) < 2:
        return {}
    metrics = {}
    for d in domains:
        mine = [g for g in drawn if g.task.domain == d]
        vals = [x for g in mine for x in g.totals]
        metrics[f"domain/{d}/reward"] = sum(vals) / len(vals)
        metrics[f"domain/{d}/signal_fraction"] = sum(rewards_differ(g.totals) for g in mine) / len(mine)
        metrics[f"domain/{d}/groups"] = len(mine)
        # (component naming a sample right, the sample's components), where its environment has one
        samples = (
            [(correctness_of(g.task), r.components) for g in mine for r in g.rewards]
            if correctness_of
            else []
        )
        if samples and all(name in c for name, c in samples):
            metrics[f"domain/{d}/accuracy"] = sum(is_correct(c, name) for name, c in samples) / len(samples)
    return metrics


def _component_metrics(drawn: list) -> dict[str, float]:
    """Each reward component's mean over the step's samples (0 where a sample's environment lacks it)."""
    rewards = [r for g in drawn for r in g.rewards]
    names = sorted({k for r in rewards for k in r.components})
    return {f"reward/{n}": sum(r.components.get(n, 0.0) for r in rewards) / len(rewards) for n in names}


def run_mfu(state: RLState, peak: float) -> tuple[float, float]:
    """MFU of training and of rollout generation over the whole run."""
    f = state.flops
    train = sum(f.get(k, 0.0) for k in TRAINING_STAGES) / max(state.training_seconds, 1e-9) / peak
    gen = sum(f.get(k, 0.0) for k in GENERATION_STAGES) / max(state.generation_seconds, 1e-9) / peak
    return train, gen
