"""Environments by name. `env.name` in a config picks a registered factory, or imports one from a user's module
with `package.module:factory`, so that a new domain plugs in without editing nextrl:

    from nextrl.env import Environment, register_environment

    @register_environment("arithmetic")
    def make(cfg, tokenizer):          # cfg: the RunConfig; cfg.env.options holds the user's settings
        return ArithmeticEnv(cfg.env.options, tokenizer)

A factory takes the run's config and the tokenizer and returns an `Environment`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from nextrl.env.base import Environment, check_reward_spec
from nextrl.errors import ConfigError

EnvFactory = Callable[[Any, Any], Environment]
_REGISTRY: dict[str, EnvFactory] = {}


def register_environment(name: str, factory: EnvFactory | None = None):
    """Register `factory` under `name` (usable as a decorator). Registering a taken name is an error."""

    def add(f: EnvFactory) -> EnvFactory:
        if name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"an environment named '{name}' is already registered")
        _REGISTRY[name] = f
        return f

    return add if factory is None else add(factory)


def registered_environments() -> list[str]:
    return sorted(_REGISTRY)


def _import_factory(spec: str) -> EnvFactory:
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"config key 'env.name': cannot import module '{module}' ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"config key 'env.name': module '{module}' has no '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"config key 'env.name': '{spec}' is not callable")
    return obj


def build_environment(cfg, tokenizer) -> Environment:
    """The environment `cfg.env.name` names (or the mixture `cfg.env.mixture` names), built for this run (see
    the module docstring)."""
    unknown = sorted(set(cfg.reward.by_env) - set(cfg.env.mixture or {}))
    if unknown:
        raise ConfigError(
            f"config key 'reward.by_env': {unknown} are not environments of env.mixture "
            f"({sorted(cfg.env.mixture or {})})"
        )
    if cfg.env.mixture:
        from nextrl.env.mixed_environment import MixedEnvironment

        envs = {}
        for part in cfg.env.mixture:
            sub_env = cfg.env.model_copy(
                update={"name": part, "mixture": None, "options": cfg.env.options.get(part, {})}
            )
            sub_reward = cfg.reward.model_copy(
                update={"spec": cfg.reward.by_env.get(part, cfg.reward.spec), "by_env": {}}
            )
            try:
                envs[part] = build_environment(
                    cfg.model_copy(update={"env": sub_env, "reward": sub_reward}), tokenizer
                )
            except ConfigError as e:  # name the mixture's own keys for this environment
                msg = str(e).replace("config key 'env.options", f"config key 'env.options.{part}")
                msg = msg.replace("config key 'reward'", f"config key 'reward.by_env.{part}'")
                raise ConfigError(f"{msg} (environment '{part}' of env.mixture)") from None
        return MixedEnvironment(envs, cfg.env.mixture)
    name = cfg.env.name
    if ":" in name:
        factory = _import_factory(name)
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise ConfigError(
            f"config key 'env.name': unknown environment '{name}'; registered: "
            f"{', '.join(registered_environments())} (or give 'package.module:factory')"
        )
    env = factory(cfg, tokenizer)
    if not isinstance(env, Environment):
        raise ConfigError(
            f"config key 'env.name': '{name}' made a {type(env).__name__}, not a nextrl.env.Environment "
            "(subclass it: its defaults are what the trainer needs beyond sampling_params and score)"
        )
    if env.spec is None:
        env.spec = check_reward_spec(cfg.reward.spec, env)
    return env


def _next_token(cfg, tokenizer) -> Environment:
    from nextrl.env.next_token import NextTokenEnv

    return NextTokenEnv(cfg.env, tokenizer, cfg.reward)


def _math(cfg, tokenizer) -> Environment:
    from nextrl.env.math import MathEnv

    return MathEnv(cfg.env.options, tokenizer)


def _code(cfg, tokenizer) -> Environment:
    from nextrl.env.code import CodeEnv

    return CodeEnv(cfg.env.options, tokenizer)


register_environment("next_token", _next_token)
register_environment("math", _math)


def _judge(cfg, tokenizer) -> Environment:
    from nextrl.env.judge import JudgeEnv

    return JudgeEnv(cfg.env.options, tokenizer)


register_environment("code", _code)
register_environment("judge", _judge)
