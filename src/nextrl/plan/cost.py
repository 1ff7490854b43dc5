"""What one RL step of next-token reasoning costs, per stage, in FLOPs and in bytes moved, and how long each
stage takes on given hardware.

The FLOPs come from the project's own counters: the step's work is written as `TokenWork` (tokens processed,
keys attended, positions projected to logits) exactly as the engine and the loss record it, and
`FlopModel.forward_work` turns it into FLOPs. Prefill, scoring and training are compute-bound (time = FLOPs /
(GPUs × peak × efficiency)); decode is memory-bound where its arithmetic intensity says so: each decode
iteration reads the weights once for the whole batch of live sequences and each sequence's KV cache, and
takes the longer of its compute and its memory time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nextrl.accounting.flops import FlopModel, TokenWork
from nextrl.plan.profiles import Hardware, ModelShape

STAGES = ("prefill", "decode", "scoring", "loss_forward", "loss_backward", "lm", "optimizer", "weight_sync")


@dataclass(frozen=True)
class Workload:
    """One RL step: `positions` positions of `context` tokens, `group_size` samples each, a thought of
    `thought` tokens and an answer of `answer`, `per_prefix` positions sharing one document prefix."""

    positions: int = 512
    group_size: int = 8
    context: int = 1024
    thought: int = 256
    answer: int = 8
    per_prefix: int = 4
    share_prefix: bool = True
    model_scored: bool = True  # info gain / likelihood: two teacher-forced passes
    lm_term: bool = True
    updates_per_batch: int = 1
    decode_batch: int = 256  # live sequences per GPU in a decode iteration


@dataclass(frozen=True)
class Efficiency:
    """Shares of the peak the stages reach (the planner's knobs; calibrated against measured runs)."""

    prefill: float = 0.5
    scoring: float = 0.5
    train: float = 0.4
    decode_compute: float = 0.5
    decode_memory: float = 0.7


@dataclass
class StepCost:
    flops: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    def generation_seconds(self) -> float:
        return sum(self.seconds.get(k, 0.0) for k in ("prefill", "decode", "scoring"))

    def training_seconds(self) -> float:
        return sum(self.seconds.get(k, 0.0) for k in ("loss_forward", "loss_backward", "lm", "optimizer"))


def flop_model(m: ModelShape) -> FlopModel:
    return FlopModel(m.matmul_params, m.layers, m.hidden, m.vocab * m.hidden)


def step_work(w: Workload) -> dict[str, TokenWork]:
    """The step's work per pass, as the engine and the loss would record it."""
    samples = w.positions * w.group_size
    comp = w.thought + w.answer
    stripes = math.ceil(w.positions / w.per_prefix)
    work = {k: TokenWork() for k in ("prefill", "decode", "scoring", "loss", "lm")}
    if w.share_prefix:  # each stripe's prefix once (its positions' prompts nest in it); one logit per prompt
        work["prefill"] = _scaled(_seq(w.context, 0, 0), stripes)
        work["prefill"].logits = w.positions
    else:  # every sample prefills its own prompt
        work["prefill"] = _scaled(_seq(w.context, 0, 1), samples)
    work["decode"] = _scaled(_seq(comp, w.context, comp), samples)
    if w.model_scored:  # with the thought under the policy, without it under the EMA baseline
        branch = _scaled(_seq(comp + 1, w.context, 1), samples)
        prefix = _scaled(_seq(w.context, 0, 0), stripes if w.share_prefix else samples)
        bare = _scaled(_seq(w.context, 0, 1), w.positions if not w.share_prefix else stripes)
        work["scoring"] = _sum(branch, prefix, bare)
    prefix = _scaled(_seq(w.context, 0, 0), stripes if w.share_prefix else samples)
    work["loss"] = _scaled(_sum(prefix, _scaled(_seq(comp, w.context, comp), samples)), w.updates_per_batch)
    if w.lm_term:
        work["lm"] = _scaled(_seq(w.context, 0, w.context), stripes)
    return work


def _seq(length: int, past: int, logits: int) -> TokenWork:
    t = TokenWork()
    t.add_sequence(length, past, logits)
    return t


def _scaled(t: TokenWork, k: int) -> TokenWork:
    return TokenWork(t.tokens * k, t.attended * k, t.logits * k)


def _sum(*ts: TokenWork) -> TokenWork:
    return TokenWork(sum(t.tokens for t in ts), sum(t.attended for t in ts), sum(t.logits for t in ts))


def step_cost(
    m: ModelShape, w: Workload, hw: Hardware, gpus: int, eff: Efficiency = Efficiency()
) -> StepCost:
    """FLOPs, bytes and seconds of one step on `gpus` GPUs of `hw` (every GPU works on every stage)."""
    fm = flop_model(m)
    work = step_work(w)
    c = StepCost()
    c.flops = {
        "prefill": fm.forward_work(work["prefill"]),
        "decode": fm.forward_work(work["decode"]),
        "scoring": fm.forward_work(work["scoring"]),
        "loss_forward": fm.forward_work(work["loss"]),
        "loss_backward": 2.0 * fm.forward_work(work["loss"]),
        "lm": 3.0 * fm.forward_work(work["lm"]),
        "optimizer": 0.0,
        "weight_sync": 0.0,
    }
    peak = gpus * hw.peak_flops
    for k, e in (("prefill", eff.prefill), ("scoring", eff.scoring)):
        c.seconds[k] = c.flops[k] / (peak * e)
    for k in ("loss_forward", "loss_backward", "lm"):
        c.seconds[k] = c.flops[k] / (peak * eff.train)
    # decode: iterations of `decode_batch` live sequences per GPU, one token each
    samples, comp = w.positions * w.group_size, w.thought + w.answer
    rounds = math.ceil(samples / (w.decode_batch * gpus))
    live = min(w.decode_batch, math.ceil(samples / gpus))
    weights_bytes = 2.0 * m.params
    kv_bytes = live * m.kv_bytes_per_token * (w.context + comp / 2)
    per_iter_flops = c.flops["decode"] / (samples * comp) * live
    per_iter = max(
        per_iter_flops / (hw.peak_flops * eff.decode_compute),
        (weights_bytes + kv_bytes) / (hw.hbm_bytes_per_s * eff.decode_memory),
    )
    c.seconds["decode"] = rounds * comp * per_iter
    c.bytes["decode"] = rounds * comp * (weights_bytes + kv_bytes) * gpus
    # Adam reads and writes weights, gradients and two moments in fp32: ~16 bytes per parameter, sharded
    c.bytes["optimizer"] = 16.0 * m.params * w.updates_per_batch
    c.seconds["optimizer"] = c.bytes["optimizer"] / (gpus * hw.hbm_bytes_per_s * eff.decode_memory)
    c.bytes["weight_sync"] = weights_bytes
    c.seconds["weight_sync"] = weights_bytes / hw.link_bytes_per_s
    return c
