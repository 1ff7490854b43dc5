"""The environment interfaces: where tasks come from (`TaskSource`), what a task and a reward are, and how an
environment generates and scores (`Environment`).

Environments must not assume one domain or one reward: next-token prediction on web text, math with a verifier
and sandboxed code all produce `Task`s and score `Rollout`s through this interface, so a trainer can mix them in
one batch (each task carries its `domain`). An environment declares the reward components it produces; the
config's reward spec is checked against them. Rewards that need a model read it through a `ScoringModel` handle,
never through the trainer's objects, so scoring can run where the learner is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from nextrl.accounting.flops import TokenWork
from nextrl.config.reward_spec import RewardSpec
from nextrl.engine.base import Rollout, SamplingParams
from nextrl.errors import ConfigError
from nextrl.sharing.logprobs import completion_logprobs, tree_completion_logprobs

if TYPE_CHECKING:  # the formats build on this module's Task
    from nextrl.env.formats.base import ThoughtFormat


@dataclass
class Task:
    task_id: str
    prompt_ids: list[int]
    domain: str = "text"
    # Tasks with the same group_key share a prompt prefix (positions of one document); engines may exploit it.
    group_key: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reward:
    total: float
    components: dict[str, float] = field(default_factory=dict)
    answer: str | None = None  # the parsed prediction, for logs and reports
    parsed: bool = True  # False when the answer was missing or unparseable


class TaskSource(Protocol):
    """Where the trainer draws tasks from: the position index with its curriculum, a file of math problems, a
    weighted mixture of sources. `visit` feeds back what a task's group got, for curricula; the state makes a
    resumed run draw exactly what it would have."""

    def take(self, n: int, step: int) -> list[Task]:
        """At least `n` tasks (a source may round up to keep tasks that share a prefix together)."""
        ...

    def visit(self, task: Task, rewards: Sequence[float], signal: bool, uncertainty: float | None) -> None:
        """The group of `task` got `rewards`; `signal` says whether they differ enough to teach anything."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counts for logs and the summary (visits, retirements, …); {} when there is nothing to count."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ScoringModel:
    """The handle through which a reward reads a model: per-token log-probs of completions after prompts, in
    eval mode and without gradient, through the prefix-tree path (or the plain one), with the work charged to
    `work`. In-process it wraps the policy module; a remote scorer holds its own copy of the weights."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int,
        autocast: torch.dtype | None,
        share_prefix: bool = True,
        max_nodes: int = 4096,
        work: TokenWork | None = None,
    ):
        self.model, self.pad_token_id, self.autocast = model, pad_token_id, autocast
        self.share_prefix, self.max_nodes = share_prefix, max_nodes
        self.work = work if work is not None else TokenWork()

    def like(self, model: torch.nn.Module) -> ScoringModel:
        """A handle on another model (e.g. an EMA baseline) with the same settings, charging the same work."""
        return ScoringModel(
            model, self.pad_token_id, self.autocast, self.share_prefix, self.max_nodes, self.work
        )

    @torch.no_grad()
    def logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        temperature: float = 1.0,
        work: TokenWork | None = None,
    ) -> torch.Tensor:
        """[N, max completion length] log p(completion token | prompt, earlier tokens) at `temperature`."""
        was_training = self.model.training
        self.model.eval()
        work = self.work if work is None else work
        try:
            if self.share_prefix:
                return tree_completion_logprobs(
                    self.model,
                    prompts,
                    completions,
                    temperature,
                    self.pad_token_id,
                    self.autocast,
                    max_nodes=self.max_nodes,
                    work=work,
                )
            return completion_logprobs(
                self.model, prompts, completions, temperature, self.pad_token_id, self.autocast, work=work
            )
        finally:
            self.model.train(was_training)


class Environment:
    """Makes the sampling plan for its tasks and scores their rollouts. Subclass it (or provide the same
    attributes); only `sampling_params` and `score` are required, the rest have neutral defaults.

    - `reward_components`: the names `score` fills in `Reward.components`; the reward spec may use only these.
    - `verifier_free`: no reward term needs the answer to be right (RLP-style), so `rl.advantages=auto` and
      `rl.loss_tokens=auto` pick RLP's advantages and a thought-only loss.
    - `correctness`: the component that says a sample is right (1) or not (0), for accuracies and pass@k
      (default: `correct` where there is one); None when there is no right answer (a judge's rating).
      `correctness_of(task)` reads it per task.
    - `thought_format`: how this environment's tasks put a thought to the policy (`nextrl.env.formats`; None:
      no thought format). The producer asks it to sample groups with empty thoughts
      (`rl.empty_thought_samples` needs `thought_format.has_empty_thought`).
    - `spec`: the run's reward spec (`reward` in the config), checked against `reward_components`; set by
      `build_environment`. `total(components)` applies it, so `score` returns `Reward(self.total(c), c, …)`.
    """

    name: str = ""
    reward_components: tuple[str, ...] = ()
    thought_format: ThoughtFormat | None = None
    spec: RewardSpec | None = None

    @property
    def correctness(self) -> str | None:
        """Unless an environment names its own (a class attribute, e.g. `correctness = "passed"`): its
        component `correct`, if it has one."""
        return "correct" if "correct" in self.reward_components else None

    def correctness_of(self, task: Task) -> str | None:  # noqa: ARG002 - a mixture answers per task
        """The component that says whether a sample of `task` is right (see `correctness`)."""
        return self.correctness

    def total(self, components: dict[str, float]) -> float:
        """The reward of one rollout: the spec's weighted sum of its components."""
        if self.spec is None:
            raise RuntimeError(
                f"environment '{self.name}' has no reward spec: build it with build_environment"
            )
        return float(self.spec.total(components))

    @property
    def verifier_free(self) -> bool:
        return False

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        """How the policy must generate for this environment's tasks (phases, stop tokens)."""
        raise NotImplementedError

    def split(self, tasks: Sequence[Task]) -> list[tuple[Environment, list[int]]]:
        """Which environment generates and scores which tasks (by index): all of them here; a mixture routes."""
        return [(self, list(range(len(tasks))))]

    def task_source(self, cfg) -> TaskSource | None:
        """The environment's own tasks (e.g. a file of problems named in `env.options`), or None: the run's
        positions of the document index then become its tasks (`make_task`, the next-token environment)."""
        return None

    def bind_scorer(self, scorer: ScoringModel) -> None:
        """The model that model-scored rewards read from now on (and the start of any baseline following it)."""

    def score(
        self,
        tasks: Sequence[Task],
        rollouts: Sequence[Sequence[Rollout]],
        scorer: ScoringModel | None = None,
    ) -> list[list[Reward]]:
        """Rewards for `rollouts[i][j]`, the j-th sample of `tasks[i]`; `scorer` for model-scored terms."""
        raise NotImplementedError

    def after_update(self) -> None:
        """Called after every optimizer step of the policy (e.g. an EMA baseline follows it)."""

    def lm_sequences(self, tasks: Sequence[Task]) -> list[list[int]]:
        """Token sequences whose plain next-token loss `rl.lm_coef` adds to the step (the text the tasks read)."""
        return []

    def empty_thought_targets(self, tasks: Sequence[Task]) -> tuple[list[list[int]], list[int]]:
        """Sequences and the index of their one target for the loss on "an empty thought changes nothing"."""
        return [], []

    def score_plan(self, tasks: Sequence[Task]) -> tuple[int, list[int]] | None:
        """(phase, one token per task) whose log-prob at that phase's first step `score` can read from the
        rollouts (`Rollout.target_logprob`, filled by engines with `capabilities.score`) instead of a
        teacher-forced pass of its own; None: nothing to read."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass


def check_reward_spec(spec: str, env: Environment, key: str = "reward") -> RewardSpec:
    """The config's reward spec, parsed and checked against the components `env` declares."""
    try:
        return RewardSpec.parse(spec, env.reward_components)
    except ValueError as e:
        raise ConfigError(f"config key '{key}': {e} (environment '{env.name}')") from None
