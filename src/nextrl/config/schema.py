"""Typed configuration: one model per pipeline stage, composed into `RunConfig`.

Every model forbids unknown keys and checks ranges, so a typo in a preset or in `--set` fails before any work
starts, with an error that names the dotted key (see `nextrl.config.load`).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nextrl.config.reward_spec import RewardSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        # pydantic reads `true` as 1 for an int field; `rl.steps=true` is a mistake, not one step
        ann = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and ann in (int, float, int | None, float | None):
            raise ValueError(f"expected a number, got {value!r}")
        return value


def _moved(data: Any, moves: dict[str, str]) -> Any:
    """Reject keys that moved or were removed with a message that says where they went."""
    if isinstance(data, dict):
        for old, new in moves.items():
            if old in data:
                raise ValueError(f"'{old}' {new}")
    return data


SHARING_MOVES = {"share_prefix": "enabled", "max_tree_nodes": "max_tree_nodes"}
SYNTHETIC_TASKS = ("add", "multiply", "running_total", "count", "reverse", "sort")


class SyntheticConfig(_Strict):
    """The positive control's document generator (`kind: synthetic`, see `nextrl.data.synthetic`): pages of
    sentences whose results (sums, products, running totals, counts, reversed and sorted lists) are tokens a
    small model cannot compute in one forward pass but can with written steps."""

    documents: int = Field(2000, ge=1, description="documents generated")
    tasks: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(SYNTHETIC_TASKS, 1.0),
        description=f"task -> weight; tasks: {', '.join(SYNTHETIC_TASKS)}",
    )
    worked_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="fraction of documents that show the steps in <think> … </think>"
    )
    guess_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="fraction of documents whose <think> … </think> holds a guess ('about 47') instead of "
        "steps, as unhelpful reasoning appears on the web: a model pretrained on both can compute with steps "
        "but does not always choose to",
    )
    thoughts: Literal["inline", "beside"] = Field(
        "inline",
        description="where the shown thoughts go: 'inline' writes <think> … </think> into the text (a vocabulary "
        "nextrl trains, where those are tokens); 'beside' keeps the text bare and inserts each thought at token "
        "level in the run's thought delimiters (env.format, env.delimiters): a pretrained tokenizer would merge "
        "a delimiter written into the text with its neighbours",
    )
    computed_digit: Literal["first", "last"] = Field(
        "first",
        description="which character of a result is the computed position (and where a shown thought goes): "
        "'first' (the leading digit, which a model can often estimate from the operands' size) or 'last' "
        "(the digits before it are context; the units digit needs the column step itself)",
    )
    digits: int = Field(2, ge=1, le=6, description="digits of the operands (add, multiply)")
    items: int = Field(5, ge=3, le=12, description="most list items (running_total, count, reverse, sort)")
    problems: int = Field(4, ge=1, le=64, description="problems per document")
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, tasks: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(tasks) - set(SYNTHETIC_TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(SYNTHETIC_TASKS)}")
        if any(w < 0 for w in tasks.values()) or sum(tasks.values()) <= 0:
            raise ValueError("task weights must be >= 0 with a positive sum")
        return tasks

    @model_validator(mode="after")
    def _fractions(self) -> SyntheticConfig:
        if self.worked_fraction + self.guess_fraction > 1.0 + 1e-9:
            raise ValueError("'worked_fraction' + 'guess_fraction' must be at most 1")
        return self


class SourceConfig(_Strict):
    """One document source. `kind` picks the reader; the other fields apply to the kinds that name them."""

    kind: Literal["stdlib", "pydoc", "text", "jsonl", "parquet", "hf", "synthetic"] = Field(
        "stdlib",
        description="stdlib (the Python standard library's code), pydoc (the Python documentation's English "
        "prose), text, jsonl, parquet, hf, synthetic",
    )
    path: str | None = Field(
        None, description="file, folder or glob (text/jsonl/parquet); dataset path or hub id (hf)"
    )
    text_field: str = Field("text", description="field holding the document text (jsonl/parquet/hf)")
    split: str = Field("train", description="split name (hf)")
    streaming: bool = Field(False, description="stream a hub dataset instead of downloading it (hf)")
    max_documents: int | None = Field(None, ge=1, description="stop after this many usable documents")
    weight: float = Field(
        1.0, gt=0.0, description="share of this source when data.mix is 'interleave' (relative to the others)"
    )
    synthetic: SyntheticConfig | None = Field(
        None, description="generator settings (synthetic; defaults of SyntheticConfig when left out)"
    )

    @model_validator(mode="after")
    def _path_needed(self) -> SourceConfig:
        if self.kind not in ("stdlib", "pydoc", "synthetic") and not self.path:
            raise ValueError(f"source kind '{self.kind}' needs 'path'")
        if self.kind != "synthetic" and self.synthetic is not None:
            raise ValueError(f"'synthetic' settings given for a source of kind '{self.kind}'")
        return self


class DataConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()])
    mix: Literal["sequential", "interleave"] = Field(
        "sequential",
        description="'sequential' reads the sources one after another; 'interleave' alternates them in "
        "proportion to their weights (deterministically), continuing with the others when one runs out",
    )
    min_chars: int = Field(64, ge=1, description="documents shorter than this are skipped as empty")
    max_chars: int = Field(
        20_000,
        ge=64,
        description="longer documents are split at line breaks into pieces of at most this many characters",
    )
    max_doc_chars: int = Field(
        1_000_000,
        ge=64,
        description="a document longer than this (a whole book on one line, a dump) is cut into documents of "
        "their own before the train/held-out split, which otherwise puts every piece of a document on one side",
    )
    heldout_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="fraction of documents held out for evaluation"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _doc_limits(self) -> DataConfig:
        if self.max_doc_chars < self.max_chars:
            raise ValueError("config key 'data.max_doc_chars' must be at least data.max_chars")
        return self


class TokenizerConfig(_Strict):
    path: str | None = Field(None, description="Hugging Face tokenizer folder or hub id; None trains one")
    vocab_size: int = Field(4096, ge=300, description="size of a trained byte-level BPE vocabulary")
    train_documents: int = Field(2000, ge=1, description="documents used to train the BPE vocabulary")
    split_digits: bool = Field(True, description="every digit its own token in a trained vocabulary")


class ModelConfig(_Strict):
    path: str | None = Field(None, description="Hugging Face causal LM folder or hub id; None pretrains one")
    hidden_size: int = Field(256, ge=8)
    intermediate_size: int = Field(688, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(1024, ge=16)
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="autocast dtype for matmuls; 'auto' takes bf16 on a GPU that supports it and on a CPU "
        "whose measured bf16 matmul peak beats fp32 (CPUs without native bf16 run it ~100x slower), else fp32",
    )

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class PretrainConfig(_Strict):
    """From-scratch pretraining of the base model (skipped when `model.path` is set)."""

    tokens: int = Field(600_000, ge=1, description="training tokens")
    seq_len: int = Field(128, ge=8)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    think_insert_prob: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="fraction of training windows with a <think> span inserted (format warm-up for the structured format)",
    )
    think_empty_prob: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="share of the inserted thoughts that are empty (<think></think>), so that closing the "
        "thought at once costs the base model nothing",
    )
    thoughts_per_window: int = Field(
        8, ge=1, le=64, description="thoughts inserted into a warm-up window (at distinct random points)"
    )
    cache_dir: str | None = Field(
        None, description="cache of pretrained base models; default $NEXTRL_CACHE or ~/.cache/nextrl"
    )


class WarmupConfig(_Strict):
    """A format warm-up of the base model before selection: continued pretraining on the training documents,
    with the thoughts they show (`synthetic.thoughts: beside`) written in the run's thought delimiters. A
    pretrained model learns there what a thought in its format looks like and that the text goes on after it,
    as nextrl's own small models learn it in pretraining (`pretrain.think_insert_prob`). 0 tokens: no warm-up.
    The warmed model is cached like a pretrained base, and it is the run's `base`."""

    tokens: int = Field(0, ge=0, description="training tokens (0: no warm-up)")
    seq_len: int = Field(256, ge=8)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-5, gt=0)
    warmup_steps: int = Field(4, ge=0, description="linear learning-rate warm-up steps (then cosine decay)")
    checkpoint_every: int = Field(
        10,
        ge=0,
        description="steps between checkpoints in the run folder's warmup/checkpoints, from which `nextrl run "
        "--resume` continues a killed warm-up (0: none); they are deleted once the warmed model is cached",
    )


class SelectionConfig(_Strict):
    """Which positions become tasks (RPT's hard-token selection)."""

    proxy: str = Field(
        "base",
        description="'base' scores with the base model, or a Hugging Face model path; 'none' scores nothing "
        "and keeps only the corpus's `computed` positions (a corpus of marked spans, such as the synthetic one)",
    )
    top_k: int = Field(16, ge=2, description="entropy over the renormalised top-k next-token probabilities")
    min_entropy: float = Field(
        0.5, ge=0.0, description="positions at or below this proxy entropy are dropped"
    )
    buckets: dict[str, float] = Field(
        default_factory=lambda: {"easy": 0.5, "medium": 1.0, "hard": 1.5},
        description="bucket name -> lower entropy bound (exclusive); a position takes the highest bound it exceeds",
    )
    skip_first: int = Field(16, ge=0, description="skip the first N tokens of each document")
    context: int = Field(
        128,
        ge=1,
        description="most prefix tokens before a position; prompts start on a stride of context/2 so the "
        "positions of one stripe share their prefix (each sees between context/2 and context tokens)",
    )
    max_documents: int = Field(400, ge=1, description="documents scored")
    max_doc_tokens: int = Field(1024, ge=8, description="only the first N tokens of a document are scored")
    max_positions_per_doc: int = Field(
        64,
        ge=1,
        description="at most this many positions kept per document (a seeded sample of those above the threshold)",
    )
    batch_size: int = Field(16, ge=1)


class MixtureAdaptConfig(_Strict):
    """Adaptive mixture shares (`nextrl.env.mixture_source`): share_k ∝ weight_k · (floor + ŝ_k)^strength, where ŝ_k is
    a moving average of the fraction of environment k's groups that carry learning signal."""

    strength: float = Field(1.0, ge=0.0, description="how strongly shares follow signal (0: fixed weights)")
    rate: float = Field(0.1, gt=0.0, le=1.0, description="moving-average rate of ŝ_k, one update per RL step")
    floor: float = Field(0.05, gt=0.0, description="added to ŝ_k so that a silent environment can recover")
    min_share: float = Field(
        0.05, ge=0.0, lt=1.0, description="least share of an environment with weight > 0"
    )


class EnvConfig(_Strict):
    """The environment: what a task is and how a rollout is scored. `name` picks a registered environment
    (`nextrl.env.registry`; 'next_token' is RPT's) or imports one from a user's module ('package.module:factory');
    the other keys configure the next-token environment, `options` any other."""

    name: str = Field(
        "next_token", min_length=1, description="registered environment, or 'package.module:factory'"
    )
    format: Literal["structured", "aside", "prompted"] = Field(
        "structured",
        description="thought format (nextrl.env.formats): 'structured' (<think> … </think>, for models nextrl "
        "pretrained), 'aside' (delimiters from the model's own vocabulary and an empty thought that is exactly "
        "no thought, for pretrained models nextrl did not pretrain), 'prompted' (instruction models)",
    )
    delimiters: tuple[str, str] = Field(
        (" (", ")"),
        description="aside format: the strings that open and close a thought, each exactly one token of the "
        "model's vocabulary",
    )
    thought_tokens: int = Field(16, ge=0, description="maximum thought length m")
    answer_tokens: int = Field(1, ge=1, description="tokens predicted after the thought (structured, aside)")
    mix_weight: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="aside format with answer_tokens 1: read the answer after a thought from the mixture "
        "w * p(. | context ( thought )) + (1 - w) * p(. | context) (Quiet-STaR's mixing with a constant weight "
        "w), so a useless thought costs at most -log(1 - w) nats. Applies to info_gain and likelihood (the bare "
        "term is the policy's own) and to evaluation (with-thought prediction, information gain); RL's sampled "
        "answer (prefix_match) is still drawn after the thought alone (the engine cannot mix), so use it with "
        "the info_gain reward. null: no mixing",
    )
    max_answer_chars: int = Field(64, ge=1, description="longest answer scored (prompted format)")
    enable_thinking: bool = Field(
        True,
        description="prompted format with a chat template: Qwen3's thinking switch (on: the model opens its own "
        "<think> after the generation prompt; templates without it ignore it)",
    )
    target_tokens: int = Field(8, ge=1, description="true continuation tokens kept for scoring (the set B)")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of a user's environment (passed to its factory); with a mixture, one entry "
        "per environment name, e.g. {math: {path: gsm8k.jsonl}}",
    )
    mixture: dict[str, float] | None = Field(
        None,
        description="train on several environments at once: name -> share of the tasks, e.g. "
        "{next_token: 3, math: 1} (env.name is then ignored); rewards per environment in reward.by_env",
    )
    mixture_adapt: MixtureAdaptConfig | None = Field(
        None,
        description="with env.mixture: move the shares toward environments whose groups carry learning "
        "signal, e.g. {strength: 1, min_share: 0.1} (null: the weights of env.mixture hold all run)",
    )

    @field_validator("mixture")
    @classmethod
    def _mixture(cls, m: dict[str, float] | None) -> dict[str, float] | None:
        if m is not None and (len(m) < 2 or any(w < 0 for w in m.values()) or sum(m.values()) <= 0):
            raise ValueError("a mixture needs at least two environments, weights >= 0 with a positive sum")
        return m

    @model_validator(mode="after")
    def _mix_weight_needs_aside(self) -> EnvConfig:
        if self.mix_weight is not None and (self.format != "aside" or self.answer_tokens != 1):
            raise ValueError(
                f"config key 'env.mix_weight': mixing the answer after a thought with the bare context's needs "
                f"env.format=aside and env.answer_tokens=1 (got format={self.format}, "
                f"answer_tokens={self.answer_tokens}); set env.mix_weight=null otherwise"
            )
        return self

    @model_validator(mode="after")
    def _adapt_needs_mixture(self) -> EnvConfig:
        if self.mixture_adapt is not None and self.mixture is None:
            raise ValueError("env.mixture_adapt has no effect without env.mixture (a single environment)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        return _moved(
            data,
            {
                "missing_answer_reward": "was removed: it never changed the reward (the total comes from "
                "the reward spec). Penalise a missing answer with the `format` term instead, e.g. "
                "reward=prefix_match+0.5*format (format is -1 for a missing answer, else 0)"
            },
        )


class SharingConfig(_Strict):
    """Prefix sharing (`nextrl.sharing`): one setting for generation, reward scoring and the loss."""

    enabled: bool = Field(
        True,
        description="encode each shared prompt prefix once and branch the samples from it, in generation and "
        "in the loss (false: every sample is its own plain row, the reference path)",
    )
    max_tree_nodes: int = Field(4096, ge=16, description="most prompt tokens packed into one prefix tree")


class SamplingConfig(_Strict):
    group_size: int = Field(8, ge=1, description="G samples per position")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int = Field(128, ge=1, description="sequences decoded together by the rollout engine")
    engine: Literal["torch", "vllm"] = Field(
        "torch",
        description="rollout engine: nextrl's PyTorch sampler (prefix sharing, exact resume), or vLLM (GPU; "
        "pip install -e '.[vllm]'), loaded from the base model's folder and synced from the learner in memory",
    )
    decode: Literal["auto", "lean", "hf"] = Field(
        "auto",
        description="the prefix-sharing sampler's forward: 'lean' (fused projections, a KV buffer written in place; "
        "Llama, Mistral, Qwen2, Qwen3, Gemma 3 text), 'hf' (the Hugging Face module: any model, the reference), 'auto' (lean "
        "where it covers the model)",
    )
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="vLLM's share of the GPU")
    vllm_block_size: int = Field(32, ge=1, description="vLLM KV block (prefix caching reuses whole blocks)")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return _moved(data, {k: f"moved to sharing.{v}" for k, v in SHARING_MOVES.items()})


class RewardConfig(_Strict):
    """What the reward is: named components with weights. `--set reward=...` sets `spec` directly.

    Components: `prefix_match` (RPT's byte-level exact match, 0/1), `info_gain` (RLP: log p_θ(x_t | context,
    thought) − log p_EMA(x_t | context), teacher-forced, no verifier), `likelihood` (mean log-prob of the next
    `likelihood_tokens` true tokens after the thought minus the EMA's without it, Quiet-STaR's signal) and
    `format` (−1 when the answer is missing or unparseable, else 0)."""

    spec: str = Field(
        "prefix_match", description="e.g. 'prefix_match', 'info_gain', 'prefix_match+0.1*info_gain'"
    )
    ema_tau: float = Field(
        0.999, ge=0.0, le=1.0, description="EMA baseline: φ ← τ·φ + (1−τ)·θ per optimizer step"
    )
    info_gain_tokens: int = Field(1, ge=1, description="true tokens scored by info_gain (1 = RLP)")
    likelihood_tokens: int = Field(4, ge=1, description="true tokens k scored by likelihood")
    copy_guard: bool = Field(
        True, description="a thought containing the start of the target gets no positive info_gain/likelihood"
    )
    copy_min_bytes: int = Field(2, ge=1, description="shortest target start the copy guard looks for")
    by_env: dict[str, str] = Field(
        default_factory=dict,
        description="with env.mixture: environment name -> its reward spec (the others use `spec`), e.g. "
        "{math: 'correct+0.2*format'}",
    )

    @field_validator("by_env")
    @classmethod
    def _by_env(cls, specs: dict[str, str]) -> dict[str, str]:
        for spec in specs.values():
            RewardSpec.parse(spec)
        return specs

    @model_validator(mode="after")
    def _spec(self) -> RewardConfig:
        # syntax only: the environment checks the names against the components it declares
        RewardSpec.parse(self.spec)
        return self


class CurriculumConfig(_Strict):
    """Which positions each step trains on, beyond the proxy's selection (self-selection)."""

    schedule: Literal["none", "easy_to_hard"] = Field(
        "none", description="'easy_to_hard' moves the draw from the easiest entropy bucket to the hardest"
    )
    prefer: Literal["uniform", "uncertain"] = Field(
        "uniform",
        description="'uncertain' re-scores positions online by the policy's own entropy at its answer and "
        "draws uncertain ones more often (proxy entropy until a position is visited)",
    )
    retire_after: int = Field(
        0, ge=0, description="retire a position after this many visits in a row without signal (0 = never)"
    )
    min_spread: float = Field(
        0.0,
        ge=0.0,
        description="a group whose rewards spread (max − min) by no more than this gives its position no "
        "signal ('no_gain'; with retire_after such positions retire); 0: only equal rewards give none",
    )
    bucket_weights: dict[str, float] | None = Field(
        None,
        description="bucket -> share of the positions drawn (with schedule 'none'); a bucket left out is "
        "never drawn, e.g. {computed: 3, hard: 1}; units are then bucket-pure stripes",
    )

    @field_validator("bucket_weights")
    @classmethod
    def _weights_positive(cls, w: dict[str, float] | None) -> dict[str, float] | None:
        if w is not None and (any(v < 0 for v in w.values()) or sum(w.values()) <= 0):
            raise ValueError("bucket weights must be >= 0 with a positive sum")
        return w

    @model_validator(mode="after")
    def _weights(self) -> CurriculumConfig:
        if self.bucket_weights is not None and self.schedule != "none":
            raise ValueError("'bucket_weights' sets the draw itself: use it with schedule 'none'")
        return self

    @property
    def enabled(self) -> bool:
        return (
            self.schedule != "none"
            or self.prefer != "uniform"
            or self.retire_after > 0
            or self.bucket_weights is not None
        )


class PositionsConfig(_Strict):
    """How many positions an RL step trains on, and how many of them share one prompt prefix
    (`nextrl.positions`). In the other domains a position is a task (a problem), one group each."""

    per_step: int = Field(16, ge=1, description="positions (groups) per optimizer step")
    per_prefix: int = Field(
        4,
        ge=1,
        description="positions of one document stripe (one shared prefix) taken together in a step",
    )


# Keys that left `rl` for `positions`; still read, with a warning, for one release (then rejected).
POSITIONS_MOVES = {"positions_per_step": "per_step", "positions_per_prefix": "per_prefix"}


def _warn_moved(old: str, new: str) -> None:
    warnings.warn(
        f"config key 'rl.{old}' is deprecated and will be removed in the next release: use 'positions.{new}'",
        FutureWarning,
        stacklevel=3,
    )


def moved_key(path: list[str]) -> list[str]:
    """The current dotted path of an override's key: `rl.positions_per_step` -> `positions.per_step` (warned)."""
    if len(path) == 2 and path[0] == "rl" and path[1] in POSITIONS_MOVES:
        _warn_moved(path[1], POSITIONS_MOVES[path[1]])
        return ["positions", POSITIONS_MOVES[path[1]]]
    return path


def move_deprecated_keys(data: Any) -> Any:
    """A config mapping (a preset, a saved config.yaml) with `rl.positions_per_step` (and per_prefix) moved to
    `positions.per_step`, warned; a mapping that sets both the old and the new key is refused."""
    rl = data.get("rl") if isinstance(data, dict) else None
    if not isinstance(rl, dict) or not POSITIONS_MOVES.keys() & rl.keys():
        return data
    rl, positions = dict(rl), data.get("positions") or {}
    if not isinstance(positions, dict):
        return data  # the section's own validation names the error
    positions = dict(positions)
    for old, new in POSITIONS_MOVES.items():
        if old not in rl:
            continue
        if new in positions:
            raise ValueError(
                f"config key 'rl.{old}' moved to 'positions.{new}', and both are set: keep only 'positions.{new}'"
            )
        positions[new] = rl.pop(old)
        _warn_moved(old, new)
    return {**data, "rl": rl, "positions": positions}


class RLConfig(_Strict):
    algorithm: Literal["grpo"] = "grpo"
    steps: int = Field(80, ge=0)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(2, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    loss_norm: Literal["grpo", "dapo", "dr_grpo"] = "dapo"
    clip_eps_low: float = Field(0.2, ge=0)
    clip_eps_high: float = Field(0.28, ge=0)
    kl_coef: float = Field(0.0, ge=0, description="weight of the k3 KL to a frozen reference; 0 disables it")
    scale_rewards: bool = Field(
        False, description="divide advantages by the group's std (GRPO) or not (Dr. GRPO)"
    )
    drop_uniform_groups: bool = Field(True, description="drop groups whose rewards are all equal (no signal)")
    dynamic_sampling: bool = Field(
        False, description="refill the batch with fresh positions until every group carries signal (DAPO)"
    )
    max_draws: int = Field(4, ge=1, description="rollout rounds per step at most, with dynamic sampling")
    advantages: Literal["auto", "group", "rlp"] = Field(
        "auto",
        description="'group': r − group mean (÷ std if scale_rewards); 'rlp': G/(G−1)·(r − mean); "
        "'auto': rlp when the reward has no prefix_match term, else group",
    )
    loss_tokens: Literal["auto", "all", "thought"] = Field(
        "auto",
        description="tokens the loss trains: 'thought' (RLP: the answer is teacher-forced) or 'all'; "
        "'auto': thought when the reward has no prefix_match term, else all",
    )
    entropy_mask_rho: float = Field(
        1.0, gt=0.0, le=1.0, description="train only the top-ρ fraction of tokens by entropy (1 = all)"
    )
    updates_per_batch: int = Field(
        1, ge=1, description="optimizer steps per rollout batch (1 = strictly on-policy)"
    )
    empty_thought_samples: int = Field(
        0,
        ge=0,
        description="samples of each group with an empty thought (as the thought format makes it: structured "
        "closes the thought at once, `</think>` trained as the policy's action; aside answers from the bare "
        "context): the other samples' advantages are then measured against not thinking, and the policy "
        "learns where thinking pays",
    )
    lm_coef: float = Field(
        0.0,
        ge=0.0,
        description="weight of a plain next-token loss on the contexts of the step's positions (Quiet-STaR's "
        "joint NLL term), so that RL on thoughts does not cost the model its next-token prediction, plus the "
        "same weight on the true next token after an empty thought at each position (structured format), so "
        "that closing the thought at once costs nothing",
    )
    max_off_policy_steps: int = Field(
        0,
        ge=0,
        le=8,
        description="asynchronous rollouts (placement.kind=ray): the workers generate up to this many steps "
        "ahead while the learner trains, so a sample may come from weights this many updates old; the loss then "
        "clips against the learner's weights and reweights each token by a truncated importance weight. "
        "0: synchronous",
    )
    is_cap: float = Field(
        2.0, gt=0.0, description="truncation of the importance weight of off-policy tokens (min(w, is_cap))"
    )
    micro_batch_size: int = Field(
        64, ge=1, description="sequences per forward/backward (memory bound; exact accumulation)"
    )
    micro_batch_tokens: int = Field(
        0,
        ge=0,
        description="most tokens in one forward/backward with prefix sharing (each prompt prefix once, plus "
        "every completion): a group of samples that share a prefix is otherwise one micro-batch whatever its "
        "size, and its activations grow with G x thought length (Gemma 3 270M, G = 16, thought 256: over 24 "
        "GiB). Above the bound the group is split, its prefix encoded once per piece; exact accumulation. "
        "0: groups are never split",
    )
    checkpoint_every: int = Field(20, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return _moved(data, {k: f"moved to sharing.{v}" for k, v in SHARING_MOVES.items()})


class PlacementConfig(_Strict):
    """Where the RL step runs. 'local': one process (the default). 'ray': rollouts on `workers` Ray actors, each
    with its own copy of the policy and its own engine, while the learner stays in the driver; a local Ray
    cluster is started for the run (its files under the run folder) unless `address` names one."""

    kind: Literal["local", "ray"] = "local"
    workers: int = Field(2, ge=1, description="rollout workers (Ray actors)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per rollout worker")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved per rollout worker")
    learners: int = Field(
        1,
        ge=1,
        description="data-parallel learner ranks: rank 0 in the driver, the others on Ray actors, gradients "
        "summed by torch.distributed (gloo on CPU) before each optimizer step",
    )
    shard: Literal["none", "fsdp"] = Field(
        "none",
        description="'fsdp': the learner ranks split the policy's weights, gradients and AdamW state with "
        "FSDP2 (one unit per transformer block, then the root), 16 B/param / learners each; 'none': every "
        "rank holds all of it",
    )
    cpus_per_learner: float = Field(1.0, gt=0, description="CPUs reserved per extra learner rank")
    gpus_per_learner: float = Field(0.0, ge=0, description="GPUs reserved per extra learner rank")
    address: str | None = Field(
        None, description="an existing Ray cluster ('auto' or host:port); None starts one"
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of a local cluster started for the run (default: all)"
    )


class BaselineConfig(_Strict):
    """FLOP-matched continued pretraining of the same base model."""

    enabled: bool = True
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(128, ge=8)


class EvalConfig(_Strict):
    positions: int = Field(256, ge=1, description="held-out positions evaluated per model")
    batch_size: int = Field(256, ge=1, description="sequences decoded together in evaluation")
    perplexity_tokens: int = Field(20_000, ge=1, description="held-out tokens for perplexity")
    thought_temperature: float = Field(0.0, ge=0.0, description="0 = greedy thought in the with-thought mode")


class RunConfig(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _shorthand_and_moved_keys(cls, data):
        # `reward: info_gain` in a YAML preset is short for `reward: {spec: info_gain}` (as `--set reward=...`)
        if isinstance(data, dict) and isinstance(data.get("reward"), str):
            data = {**data, "reward": {"spec": data["reward"]}}
        return move_deprecated_keys(data)

    preset: str = "tiny"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    sharing: SharingConfig = Field(default_factory=SharingConfig)
    positions: PositionsConfig = Field(default_factory=PositionsConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        # settings under which RL cannot change the model: refuse them instead of printing a verdict on nothing
        if self.sampling.group_size < 2:
            raise ValueError(
                "config key 'sampling.group_size': 1 sample per position gives every group a single reward, so "
                "no group-relative advantage and no update; use at least 2"
            )
        if self.sampling.temperature == 0:
            raise ValueError(
                "config key 'sampling.temperature': 0 (greedy) makes the G samples of a group identical, so "
                "their rewards are equal and RL does nothing; use a temperature > 0"
            )
        if self.rl.steps == 0:
            raise ValueError(
                "config key 'rl.steps': 0 steps train nothing (and leave the baseline no FLOPs to match); "
                "use at least 1"
            )
        if not self.model.path:
            longest = self.selection.context + self.env.thought_tokens + self.env.answer_tokens + 2
            if longest > self.model.max_position_embeddings:
                raise ValueError(
                    f"config key 'selection.context': a prompt of {self.selection.context} tokens plus the "
                    f"thought and answer ({longest} tokens) exceeds model.max_position_embeddings="
                    f"{self.model.max_position_embeddings}; lower one or raise the other"
                )
            if self.pretrain.seq_len + 1 > self.model.max_position_embeddings:
                raise ValueError(
                    f"config key 'pretrain.seq_len': {self.pretrain.seq_len} exceeds "
                    f"model.max_position_embeddings={self.model.max_position_embeddings}"
                )
        if self.placement.learners > 1 and self.placement.kind != "ray":
            raise ValueError(
                "config key 'placement.learners': more than one learner rank needs Ray (placement.kind=ray)"
            )
        if self.rl.max_off_policy_steps:
            if self.placement.kind != "ray":
                raise ValueError(
                    "config key 'rl.max_off_policy_steps': asynchronous rollouts need rollout workers "
                    "(placement.kind=ray); in one process generation and training cannot overlap"
                )
            if self.rl.updates_per_batch != 1 or self.rl.dynamic_sampling:
                raise ValueError(
                    "config key 'rl.max_off_policy_steps': needs rl.updates_per_batch=1 and no "
                    "rl.dynamic_sampling (a batch's size must be known when it is generated ahead)"
                )
        self._check_selection_and_empty_thoughts()
        return self

    def _check_selection_and_empty_thoughts(self) -> None:
        if self.selection.proxy == "none" and self.curriculum.prefer == "uncertain":
            raise ValueError(
                "config key 'curriculum.prefer': 'uncertain' starts from the proxy's entropy, which "
                "selection.proxy 'none' does not score; use prefer 'uniform' or a proxy"
            )
        k = self.rl.empty_thought_samples
        if k and k >= self.sampling.group_size:
            raise ValueError(
                f"config key 'rl.empty_thought_samples': {k} empty-thought samples leave no thinking sample in a "
                f"group of sampling.group_size={self.sampling.group_size}"
            )
        if k and self.env.thought_tokens == 0:
            # whether a format has an empty thought at all is its own answer, checked when the trainer is built
            raise ValueError(
                "config key 'rl.empty_thought_samples': needs env.thought_tokens > 0 (with no thought phase "
                "there is no thought to leave empty)"
            )
