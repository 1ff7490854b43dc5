"""What one RL step of next-token reasoning costs, per stage, in FLOPs and in bytes moved, and how long each
stage takes on given hardware.

The FLOPs come from the project's own counters: the step's work is written as `TokenWork` (tokens processed,
keys attended, positions projected to logits) exactly as the engine and the loss record it, and
`FlopModel.forward_work` turns it into FLOPs. Prefill, scoring and training are compute-bound (time = FLOPs /
(GPUs × peak × efficiency)); decode is memory-bound where its arithmetic intensity says so: each decode
iteration reads the weights once for the whole batch of live sequences and each sequence's KV cache, and
takes the longer of its compute and its memory time.

Small models on a CPU (and any model at small batch) are also bound by the fixed cost of each call: a kernel
launch or a Python step per layer (`Hardware.layer_overhead_s`), the sampling bookkeeping of each decode
iteration (`iteration_overhead_s`) and of each RL step (`step_overhead_s`). Datasheet profiles leave them at 0;
"this machine" measures the first and `nextrl plan --calibrate` fits the others (`nextrl.plan.calibrate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nextrl.accounting.flops import FlopModel, TokenWork
from nextrl.plan.profiles import Hardware, ModelShape

STAGES = (
    "prefill", "decode", "scoring", "loss_forward", "loss_backward", "lm", "optimizer", "weight_sync", "overhead"
)  # fmt: skip


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
    micro_batch: int = 64  # sequences per loss pass
    # thought tokens a sample really generates on average (None: the whole budget `thought`); decoding still
    # runs until the longest sample of a batch ends, which the budget bounds
    mean_thought: float | None = None
    # share of the groups the loss trains on: GRPO skips groups whose rewards are all equal (no signal)
    trained_fraction: float = 1.0
    recompute: bool = True  # activation checkpointing in the learner (memory only; its FLOPs are not counted)
    # prompt geometry (`PositionIndex.prompt_geometry`): mean prompt length over `context`; positions that
    # really share one prefix (None: `per_prefix`, every stripe full); that prefix's length over `context`
    prompt_fill: float = 1.0
    unit_size: float | None = None
    unit_fill: float = 1.0
    # samples per group whose thought is closed at once (`rl.empty_thought_samples`): their answers are
    # generated from the closed prompts, and the close token's log-prob takes a pass over the prompts
    empty_thought_samples: int = 0
    # the engine closes those thoughts itself, in the same call (`SamplingParams.lead`: nextrl's PyTorch
    # engines): no second prefill of the closed prompts and no pass to score the close; vLLM has neither
    engine_lead: bool = True
    # the engine records the one true token's log-prob after the thought as it samples the answer
    # (`SamplingParams.score_phase`, nextrl's PyTorch engines): the with-thought scoring pass is not run
    engine_scores: bool = True
    # the format reads the answer after a thought mixed with the bare context's (the aside format's
    # `env.mix_weight`): model-scored rewards take one more bare-context pass, under the policy
    mixed: bool = False
    # the learner ranks' state (`placement.shard`): 'fsdp' splits it over the learner GPUs, 'none' keeps it
    # whole on every one (`learner_state_bytes`)
    shard: str = "fsdp"

    @property
    def completion(self) -> float:
        """Tokens a sample generates on average."""
        return (self.thought if self.mean_thought is None else self.mean_thought) + self.answer


@dataclass(frozen=True)
class Efficiency:
    """Shares of the peak the stages reach (the planner's knobs; calibrated against measured runs)."""

    prefill: float = 0.5
    scoring: float = 0.5
    train: float = 0.4  # the RL loss over prefix trees and their branches
    lm: float = 0.4  # the next-token term: plain causal sequences
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
        """Rollouts and their rewards, with the step's fixed overhead (the producer's bookkeeping)."""
        return sum(self.seconds.get(k, 0.0) for k in ("prefill", "decode", "scoring", "overhead"))

    def training_seconds(self) -> float:
        return sum(self.seconds.get(k, 0.0) for k in ("loss_forward", "loss_backward", "lm", "optimizer"))


def flop_model(m: ModelShape) -> FlopModel:
    return FlopModel(m.matmul_params, m.layers, m.hidden, m.vocab * m.hidden)


def step_work(w: Workload) -> dict[str, TokenWork]:
    """The step's work per pass, as the engine and the loss would record it (completions of their mean
    length; prompts as long and as shared as the workload's geometry says).

    One piece on purpose: it follows the passes of one step in the order the trainer runs them, each from the
    same geometry (units, shared and per-position prompt lengths, thinking and empty samples), so that it reads
    against the step it models; split, every part would take all of that geometry."""
    k = w.empty_thought_samples
    thinking = w.positions * (w.group_size - k)  # samples that think; k per group close the thought at once
    samples = w.positions * w.group_size
    comp = w.completion
    units = stripes_of(w)
    shared = w.unit_fill * w.context  # tokens of one unit's shared prompt
    prompt = w.prompt_fill * w.context  # tokens of one position's prompt

    def prompts_once(extra: int, logits: float) -> TokenWork:
        """Every prompt (+ `extra` tokens) through the model once: per unit with sharing, else per position."""
        if w.share_prefix:
            t = _scaled(_seq(shared, 0, 0), units)
            return TokenWork(
                t.tokens + extra * w.positions, t.attended + extra * w.positions * shared, logits
            )
        return _scaled(_seq(prompt + extra, 0, logits / max(w.positions, 1)), w.positions)

    work = {k_: TokenWork() for k_ in ("prefill", "decode", "scoring", "loss", "lm")}
    if w.share_prefix:  # each unit's prefix once (its positions' prompts nest in it); one logit per prompt
        work["prefill"] = _scaled(_seq(shared, 0, 0), units)
        work["prefill"].logits = w.positions
    else:  # every sample prefills its own prompt
        work["prefill"] = _scaled(_seq(prompt, 0, 1), samples if k and w.engine_lead else thinking)
    work["decode"] = _scaled(_seq(comp, prompt, comp), thinking)
    if k and w.engine_lead:  # the empty samples decode </think> and their answer from the prompt's cache
        work["decode"] = _sum(work["decode"], _scaled(_seq(w.answer, prompt + 1, w.answer), w.positions * k))
    elif k:  # the closed prompts' answers (a second prefill, k samples each) and the close token's log-prob
        closed = (
            prompts_once(1, w.positions)
            if w.share_prefix
            else _scaled(_seq(prompt + 1, 0, 1), w.positions * k)
        )
        work["prefill"] = _sum(work["prefill"], closed, prompts_once(1, w.positions))
        work["decode"] = _sum(work["decode"], _scaled(_seq(w.answer, prompt + 2, w.answer), w.positions * k))
    if w.model_scored:  # with the thought under the policy, without it under the EMA baseline
        branch = _scaled(_seq(comp + 1, prompt, 1), samples)
        prefix = (
            _scaled(_seq(shared, 0, 0), units) if w.share_prefix else _scaled(_seq(prompt, 0, 0), samples)
        )
        bare = (
            _scaled(_seq(shared, 0, 1), units) if w.share_prefix else _scaled(_seq(prompt, 0, 1), w.positions)
        )
        work["scoring"] = bare if w.engine_scores else _sum(branch, prefix, bare)
        if w.mixed:
            work["scoring"] = _sum(work["scoring"], bare)
    prefix = _scaled(_seq(shared, 0, 0), units) if w.share_prefix else _scaled(_seq(prompt, 0, 0), samples)
    branches = _scaled(_seq(comp, prompt, comp), samples)
    work["loss"] = _scaled(_sum(prefix, branches), w.updates_per_batch * w.trained_fraction)
    if w.lm_term and w.share_prefix:
        # the next-token term rides in the loss's forwards (`tree_logprobs_and_nll`): the text the positions
        # read is the units' prefix, encoded once for both (every unit's, trained groups or not) with each
        # token projected to the vocabulary; each position's "context <think></think> x_t" adds its </think>
        # node to the tree, one target
        lm = _sum(prefix, TokenWork(0, 0, units * shared))  # type: ignore[arg-type]
        if w.thought > 0:
            lm = _sum(lm, TokenWork(w.positions, w.positions * (prompt + 1), w.positions))  # type: ignore[arg-type]
        work["loss"] = _scaled(_sum(lm, _scaled(branches, w.trained_fraction)), w.updates_per_batch)
    elif w.lm_term:  # a pass of its own: the text read, and every position's context + <think></think> + x_t
        work["lm"] = _scaled(_seq(shared, 0, shared), units)
        if w.thought > 0:
            work["lm"] = _sum(work["lm"], _scaled(_seq(prompt + 2, 0, 1), w.positions))
        work["lm"] = _scaled(work["lm"], w.updates_per_batch)
    return work


def stripes_of(w: Workload) -> float:
    """Prompt-prefix units per step: `positions / per_prefix` when every stripe is full."""
    return w.positions / (w.unit_size or w.per_prefix)


def _seq(length: float, past: int, logits: float) -> TokenWork:
    """`TokenWork.add_sequence` for a length that may be a mean (not rounded: a plan's counts are expected
    values)."""
    return TokenWork(length, length * past + length * (length + 1) / 2, logits)  # type: ignore[arg-type]


def _scaled(t: TokenWork, k: float) -> TokenWork:
    return TokenWork(t.tokens * k, t.attended * k, t.logits * k)


def _sum(*ts: TokenWork) -> TokenWork:
    return TokenWork(sum(t.tokens for t in ts), sum(t.attended for t in ts), sum(t.logits for t in ts))


def step_flops(m: ModelShape, w: Workload) -> dict[str, float]:
    """FLOPs of one step per stage (the backward of the loss costs twice its forward, the lm term three times)."""
    fm = flop_model(m)
    work = step_work(w)
    return {
        "prefill": fm.forward_work(work["prefill"]),
        "decode": fm.forward_work(work["decode"]),
        "scoring": fm.forward_work(work["scoring"]),
        "loss_forward": fm.forward_work(work["loss"]),
        "loss_backward": 2.0 * fm.forward_work(work["loss"]),
        "lm": 3.0 * fm.forward_work(work["lm"]),
        "optimizer": 0.0,
        "weight_sync": 0.0,
    }


def step_cost(
    m: ModelShape,
    w: Workload,
    hw: Hardware,
    gpus: int,
    eff: Efficiency = Efficiency(),
    flops: dict[str, float] | None = None,
) -> StepCost:
    """FLOPs, bytes and seconds of one step on `gpus` GPUs of `hw` (every GPU works on every stage). `flops`
    replaces the work model's FLOPs per stage (a measured run's counted FLOPs, in calibration)."""
    c = StepCost()
    c.flops = {**step_flops(m, w), **(flops or {})}
    peak = gpus * hw.peak_flops
    for k, e in (("prefill", eff.prefill), ("scoring", eff.scoring)):
        c.seconds[k] = c.flops[k] / (peak * e)
    for k in ("loss_forward", "loss_backward"):
        c.seconds[k] = c.flops[k] / (peak * eff.train)
    c.seconds["lm"] = c.flops["lm"] / (peak * eff.lm)
    # decode: iterations of `decode_batch` live sequences per GPU, one token each; a batch decodes until its
    # longest sample ends (the budget), its compute follows the tokens really generated (the mean)
    samples, comp = w.positions * w.group_size, w.completion
    rounds = math.ceil(samples / (w.decode_batch * gpus))
    iterations = rounds * (w.thought + w.answer)
    live = min(w.decode_batch, math.ceil(samples / gpus))
    weights_bytes = 2.0 * m.params
    kv_bytes = live * m.kv_bytes_per_token * (w.context + comp / 2)
    compute = c.flops["decode"] / gpus / (hw.peak_flops * eff.decode_compute)
    memory = iterations * (weights_bytes + kv_bytes) / (hw.hbm_bytes_per_s * eff.decode_memory)
    c.seconds["decode"] = max(compute, memory) + iterations * hw.iteration_overhead_s
    c.bytes["decode"] = iterations * (weights_bytes + kv_bytes) * gpus
    # Adam reads and writes weights, gradients and two moments in fp32: ~16 bytes per parameter, sharded
    c.bytes["optimizer"] = 16.0 * m.params * w.updates_per_batch
    c.seconds["optimizer"] = c.bytes["optimizer"] / (gpus * hw.hbm_bytes_per_s * eff.decode_memory)
    c.bytes["weight_sync"] = weights_bytes
    c.seconds["weight_sync"] = weights_bytes / hw.link_bytes_per_s
    # the fixed cost of calls: every layer of every forward (decode iterations, prefill and scoring batches,
    # loss micro-batches forward and backward), and the step's own bookkeeping
    batches = math.ceil(samples / (w.decode_batch * gpus))
    trained = samples * w.trained_fraction
    micro = math.ceil(trained / (w.micro_batch * gpus)) * w.updates_per_batch
    lm_micro = math.ceil(stripes_of(w) / (w.micro_batch * gpus)) if w.lm_term and not w.share_prefix else 0
    calls = iterations + batches * (1 + (2 + w.mixed) * w.model_scored) + 3 * (micro + lm_micro)
    c.seconds["overhead"] = calls * m.layers * hw.layer_overhead_s + hw.step_overhead_s
    return c


@dataclass(frozen=True)
class Memory:
    """Bytes one GPU holds at the peak of its role (the larger of the two in synchronous mode)."""

    rollout: float  # bf16 weights + the KV cache of `decode_batch` live sequences
    kv_cache: float
    learner: float  # fp32 master, gradient and Adam moments (sharded over `learner_gpus`) + activations
    activations: float
    capacity: float
    max_decode_batch: int  # the most live sequences whose KV cache fits beside the weights

    @property
    def fits(self) -> bool:
        return max(self.rollout, self.learner) <= self.capacity


def learner_state_bytes(
    params: float, ranks: int, shard: str, unit_params: float = 0.0, unit_bytes_per_param: float = 8.0
) -> float:
    """A learner rank's fp32 weights, gradients and two AdamW moments (16 B/param) by the trainer's rule
    (`placement.shard`): 'fsdp' (FSDP2, `nextrl.model.fsdp`) splits every tensor along its first dimension
    over the ranks, so each holds 1/ranks of it (up to padding the first dimension to a multiple of `ranks`), and
    while a unit (a block, or the root with the embeddings) runs, its whole weights and gradients are alive
    and its gradients are copied into the reduce-scatter buffer: `unit_bytes_per_param` x the largest unit's
    `unit_params` (8: bf16 weights and gradients, an fp32 buffer; 12 in fp32). 'none' holds it whole on
    every rank."""
    if shard not in ("fsdp", "none"):
        raise ValueError(f"placement.shard must be 'fsdp' or 'none', got {shard!r}")
    if shard == "none":
        return 16.0 * params
    return 16.0 * params / max(ranks, 1) + unit_bytes_per_param * unit_params


def memory(m: ModelShape, w: Workload, hw: Hardware, learner_gpus: int) -> Memory:
    """What a rollout GPU and a learner GPU must hold (bytes), against `hw.memory_bytes`.

    KV cache: every live sequence's completion, and its prompt once per sequence without prefix sharing or once
    per stripe with it (a stripe's positions nest in one prefix of about `context` tokens). Learner: 16 bytes
    per parameter (fp32 weights, gradients and two Adam moments), split over the learner GPUs when `w.shard` is
    'fsdp', plus the largest unit gathered whole (`learner_state_bytes`, the trainer's rule), and the activations of one micro-batch: ~34 bytes per
    token, hidden unit and layer without recomputation (Korthikanti et al. 2022, bf16); with activation checkpointing (`recompute`) each layer keeps only its bf16
    input (2 bytes) and one layer's activations are alive at a time."""
    per_seq = m.kv_bytes_per_token * (w.thought + w.answer)
    if w.share_prefix:
        per_seq += m.kv_bytes_per_token * w.context / (w.group_size * w.per_prefix)
    else:
        per_seq += m.kv_bytes_per_token * w.context
    weights = 2.0 * m.params
    kv = w.decode_batch * per_seq
    per_token = (2.0 * m.layers + 34.0) if w.recompute else 34.0 * m.layers
    activations = per_token * w.micro_batch * (w.context + w.thought + w.answer) * m.hidden
    learner = learner_state_bytes(m.params, learner_gpus, w.shard, m.largest_unit_params) + activations
    room = max(hw.memory_bytes - weights, 0.0)
    return Memory(weights + kv, kv, learner, activations, hw.memory_bytes, int(room // per_seq))
