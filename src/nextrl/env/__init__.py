"""Environments: where tasks come from (`TaskSource`), what they are, how rollouts are scored (`Environment`),
found by name (`registry`). `next_token` is RPT's environment (its task source is `nextrl.positions.source`)."""

from nextrl.env.base import Environment, Reward, ScoringModel, Task, TaskSource, check_reward_spec
from nextrl.env.formats import build_prompt, parse_boxed_answer
from nextrl.env.mixture_source import Adaptation, MixtureTaskSource
from nextrl.env.next_token import NextTokenEnv
from nextrl.env.registry import build_environment, register_environment, registered_environments
from nextrl.env.reward import boundaries, prefix_match_reward

__all__ = [
    "Environment",
    "Adaptation",
    "MixtureTaskSource",
    "NextTokenEnv",
    "Reward",
    "ScoringModel",
    "Task",
    "TaskSource",
    "boundaries",
    "build_environment",
    "build_prompt",
    "check_reward_spec",
    "parse_boxed_answer",
    "prefix_match_reward",
    "register_environment",
    "registered_environments",
]
