"""Environments: tasks in, rewards out (see `base` for the interface, `next_token` for RPT's environment)."""

from nextrl.env.base import Environment, Reward, Task
from nextrl.env.formats import build_prompt, parse_boxed_answer
from nextrl.env.next_token import NextTokenEnv
from nextrl.env.reward import boundaries, prefix_match_reward

__all__ = [
    "Environment",
    "NextTokenEnv",
    "Reward",
    "Task",
    "boundaries",
    "build_prompt",
    "parse_boxed_answer",
    "prefix_match_reward",
]
