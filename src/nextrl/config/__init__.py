"""Typed configuration for every stage; see `schema.py` for the keys and `presets/` for shipped presets."""

from nextrl.config.load import ConfigError, available_presets, dump_config, load_config
from nextrl.config.schema import (
    BaselineConfig,
    DataConfig,
    EnvConfig,
    EvalConfig,
    ModelConfig,
    PlacementConfig,
    PositionsConfig,
    PretrainConfig,
    RLConfig,
    RunConfig,
    SamplingConfig,
    SelectionConfig,
    SharingConfig,
    SourceConfig,
    TokenizerConfig,
    WarmupConfig,
)

__all__ = [
    "BaselineConfig",
    "ConfigError",
    "DataConfig",
    "EnvConfig",
    "EvalConfig",
    "ModelConfig",
    "PlacementConfig",
    "PositionsConfig",
    "PretrainConfig",
    "WarmupConfig",
    "RLConfig",
    "RunConfig",
    "SamplingConfig",
    "SelectionConfig",
    "SharingConfig",
    "SourceConfig",
    "TokenizerConfig",
    "available_presets",
    "dump_config",
    "load_config",
]
