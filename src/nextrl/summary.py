"""The schema of a run's `summary.json`: one typed model that the main job writes and the report reads.

`nextrl.pipeline.run` builds a `RunSummary` and writes it with `RunSummary.write`; the HTML report, the
terminal table and `nextrl report` read it back with `RunSummary.load`. Every block whose keys are known is a
model with `extra="forbid"`, so a key that one side adds or renames fails loudly (naming the key and the file)
instead of silently vanishing from the report. Only the resolved config, the base model's info and the
curriculum settings stay free-form.

Keys that a real run may leave out (the verdict without a FLOP-matched baseline, the positive control without
`computed` positions, a comparison against a model that was not trained) are optional fields with default
None; they are left out of the JSON when absent, as before, rather than written as null.

This module sits low in the import layering: it imports nothing from nextrl except `nextrl.utils`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from nextrl.utils.io import atomic_write_json

SCHEMA_VERSION = 1

Mode = Literal["standard", "with_thought"]
PER_MODEL = (  # the blocks keyed by model name
    "perplexity",
    "accuracy",
    "accuracy_stderr",
    "thought_length",
    "empty_thoughts",
    "thought_vs_standard",
    "information_gain",
)


class SummaryError(ValueError):
    """A summary.json (or a summary dict) that cannot be read or does not match `RunSummary`."""


class _Schema(BaseModel):
    """Strict base: unknown keys are errors; optional fields (default None) are left out of dumps when None."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler):
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if not field.is_required() and field.default is None and getattr(self, name) is None:
                data.pop(name, None)
        return data


class PairedTest(_Schema):
    """McNemar's exact test plus the paired-bootstrap 95% interval (`nextrl.eval.stats.compare`): a against b
    on the same positions."""

    n: int
    a_only: int
    b_only: int
    diff: float
    p_value: float
    ci_low: float
    ci_high: float
    detectable: float | None = (
        None  # smallest true difference seen with 80% power at p < 0.01 (older runs: None)
    )


class ControlComparison(PairedTest):
    """One arm of the positive control: RL with thought against another model's `mode`."""

    mode: Mode
    passed: bool


class ControlCheck(_Schema):
    """The positive control's pass rule (`nextrl.eval.heldout.control_check`); only with `computed` positions."""

    bucket: str
    n: int
    margin: float
    rl_with_thought: float
    vs_base: ControlComparison | None = None
    vs_baseline: ControlComparison | None = None
    passed: bool


class Verdict(_Schema):
    """RL against the FLOP-matched baseline (`nextrl.eval.heldout.verdict`); only when a baseline was trained."""

    rl_beats_baseline: bool
    significant: bool
    metric: str
    bucket: str
    n: int
    rl: float
    rl_mode: Mode
    baseline: float
    baseline_mode: Mode
    base: float
    base_mode: Mode
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    vs_base: PairedTest
    text: str
    detectable: float | None = (
        None  # smallest difference RL vs baseline this evaluation detects (80%, p < 0.01)
    )
    flop_matched: bool | None = (
        None  # False when the baseline's FLOPs are off by more than 25% (the text says so)
    )


class ByMode(_Schema):
    """A per-bucket figure ({bucket: value}, "all" included) for each prediction mode of one model."""

    standard: dict[str, float]
    with_thought: dict[str, float]

    def by_mode(self) -> dict[str, dict[str, float]]:
        return {"standard": self.standard, "with_thought": self.with_thought}


class InformationGain(_Schema):
    """Nats per position that the model's own thought buys (`nextrl.eval.info_gain.information_gain_nats`)."""

    mean: float
    stderr: float
    n: int


class FlopsSummary(_Schema):
    """FLOPs per stage; `rl_breakdown` splits the RL total by pass (prefill, decode, loss_forward, ...)."""

    pretrain: float
    warmup: float | None = None  # the format warm-up (`warmup.tokens` > 0)
    rl: float
    baseline: float | None = None
    rl_breakdown: dict[str, float]


class StageSeconds(_Schema):
    pretrain: float
    warmup: float | None = None  # the format warm-up (`warmup.tokens` > 0)
    selection: float
    rl: float
    baseline: float | None = None
    eval: float


class StepsSummary(_Schema):
    pretrain: int
    warmup: int | None = None  # the format warm-up (`warmup.tokens` > 0)
    rl: int
    baseline: int | None = None


class TokensPerSecond(_Schema):
    pretrain: float
    warmup: float | None = None  # the format warm-up (`warmup.tokens` > 0)
    rl: float
    baseline: float | None = None


class SelectionSummary(_Schema):
    """The position index (`PositionIndex.stats()`), the curriculum settings and, with a curriculum, the RL
    position pool's counts at the end of the run (the `rl_positions_*` keys)."""

    documents: int
    positions: dict[str, int]
    buckets: dict[str, int]
    mean_entropy: float | None = None  # None: nothing was scored (`selection.proxy: none`)
    skipped: dict[str, int] | None = None  # inputs the document stream skipped while selecting, by reason
    curriculum: dict[str, Any]
    rl_positions_active: int | None = None
    rl_positions_active_units: int | None = None
    rl_positions_active_by_bucket: dict[str, int] | None = None
    rl_positions_retired: int | None = None
    rl_positions_retired_by_reason: dict[str, int] | None = None
    rl_positions_visits: int | None = None
    # what a task source other than the position pool counts: problems given, a mixture's sources and shares
    rl_task_source: dict[str, Any] | None = None


class RLRunSummary(_Schema):
    """The part of `RLTrainer.summary()` that summary.json keeps (its step count and FLOPs go to `steps` and
    `flops`). `reward_first` / `reward_last` are the mean reward of the first and last tenth of the steps (None
    before the first step)."""

    reward_first: float | None
    reward_last: float | None
    groups_kept: int
    groups_dropped: int
    samples: int
    samples_per_second: float
    generation_seconds: float
    training_seconds: float
    stage_seconds: dict[str, float] = {}  # by pass, as `flops.rl_breakdown` (summaries before it: empty)
    mfu_training: float
    mfu_rollout: float
    matmul_peak_flops: float
    reward: str
    advantages: str
    loss_tokens: str
    groups_drawn: int
    groups_with_signal: int
    signal_fraction: float
    empty_thought_samples: int
    lm_coef: float


class RunSummary(_Schema):
    """Everything summary.json holds. Per-model blocks are keyed by model name (one of `models`)."""

    schema_version: int = SCHEMA_VERSION
    nextrl_version: str
    preset: str
    date: str
    run_dir: str
    models: list[str]
    # evaluation (`nextrl.eval.heldout.evaluate_models`)
    perplexity: dict[str, float]
    accuracy: dict[str, ByMode]
    accuracy_stderr: dict[str, ByMode]
    eval_counts: dict[str, int]
    thought_length: dict[str, dict[str, float]]
    empty_thoughts: dict[str, float] = {}  # fraction of evaluated thoughts that are empty (the close alone)
    thought_vs_standard: dict[str, dict[str, PairedTest]]
    information_gain: dict[str, InformationGain]
    # compute
    flops: FlopsSummary
    wall_seconds: float
    stage_seconds: StageSeconds
    steps: StepsSummary
    tokens_per_second: TokensPerSecond
    selection: SelectionSummary
    rl_summary: RLRunSummary
    base_model: dict[str, Any]
    config: dict[str, Any]
    verdict: Verdict | None = None
    control: ControlCheck | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"schema version {v} is not the one this nextrl reads ({SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _models_listed(self) -> Self:
        for name in PER_MODEL:
            extra = sorted(set(getattr(self, name)) - set(self.models))
            if extra:
                raise ValueError(f"{name} has models {extra} that are not in models {self.models}")
        return self

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "summary") -> RunSummary:
        """Validate a summary dict; a mismatch raises `SummaryError` naming `source` and every bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SummaryError(f"{source}: does not match the summary schema: {_describe(e)}") from e

    @classmethod
    def load(cls, path: str | Path) -> RunSummary:
        """Read and validate a summary.json; any failure raises `SummaryError` naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise SummaryError(f"{path}: not found") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SummaryError(f"{path}: not readable as JSON ({e})") from e
        if not isinstance(data, dict):
            raise SummaryError(f"{path}: holds a JSON {type(data).__name__}, not an object")
        return cls.from_dict(data, path)

    def write(self, path: str | Path) -> None:
        """Write summary.json atomically (a reader never sees half a file)."""
        atomic_write_json(path, self.model_dump(mode="json"))


def _describe(e: ValidationError) -> str:
    """Pydantic's errors as `dotted.key: message` items, one per problem."""
    items = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        items.append(f"{loc}: {err['msg']}")
    return "; ".join(items)


__all__ = [
    "SCHEMA_VERSION",
    "ByMode",
    "ControlCheck",
    "ControlComparison",
    "FlopsSummary",
    "InformationGain",
    "PairedTest",
    "RLRunSummary",
    "RunSummary",
    "SelectionSummary",
    "StageSeconds",
    "StepsSummary",
    "SummaryError",
    "TokensPerSecond",
    "Verdict",
]
