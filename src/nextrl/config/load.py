"""Load a preset, apply `key.path=value` overrides, validate, and report errors by dotted key."""

from __future__ import annotations

import contextlib
import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nextrl.config.schema import RunConfig, move_deprecated_keys, moved_key
from nextrl.errors import ConfigError


def available_presets() -> list[str]:
    folder = resources.files("nextrl.config") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of config keys")
    return data


def preset_dict(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The raw mapping of a shipped preset name or a YAML file path, and a label saying where it came from."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return _read_yaml(path.read_text(), str(path)), str(path)
    names = available_presets()
    if name_or_path not in names:
        raise ConfigError(f"unknown preset '{name_or_path}'; shipped presets: {', '.join(names)}")
    text = (resources.files("nextrl.config") / "presets" / f"{name_or_path}.yaml").read_text()
    data = _read_yaml(text, f"preset {name_or_path}")
    data.setdefault("preset", name_or_path)
    return data, f"preset {name_or_path}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """`rl.lr=1e-5` -> (['rl', 'lr'], 1e-05). Values are parsed as YAML, so lists and mappings work too."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-5 as a string (no dot); numbers in scientific notation are common in overrides.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
    return key.split("."), value


# Sections that take a plain value as shorthand for one of their keys (`--set reward=info_gain`).
SHORTHANDS = {"reward": "spec"}


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    if len(path) == 1 and path[0] in SHORTHANDS and not isinstance(value, dict):
        path = [path[0], SHORTHANDS[path[0]]]
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if part in SHORTHANDS and node is data and not isinstance(child, dict):
            child = node[part] = {SHORTHANDS[part]: child}  # a preset's shorthand, e.g. `reward: info_gain`
        if not isinstance(child, dict):
            raise ConfigError(f"override key '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown config key"
        if not key or msg.startswith("config key"):  # a cross-check names its own keys
            lines.append(msg)
            continue
        lines.append(f"config key '{key}': {msg} (input: {e.get('input')!r})")
    return f"invalid configuration from {origin}:\n  " + "\n  ".join(lines)


def validate(data: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None


def load_config(preset: str = "tiny", overrides: list[str] | None = None) -> RunConfig:
    """The resolved config of a preset (name or YAML path) with `key=value` overrides applied."""
    data, origin = preset_dict(preset)
    try:  # keys moved since the preset was written go to their new place before the overrides apply to it
        data = move_deprecated_keys(copy.deepcopy(data))
    except ValueError as e:
        raise ConfigError(f"invalid configuration from {origin}:\n  {e}") from None
    if overrides:
        origin += " with --set " + " ".join(overrides)
        for item in overrides:
            path, value = parse_override(item)
            apply_override(data, moved_key(path), value)
    return validate(data, origin)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
