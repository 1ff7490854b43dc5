"""Rollouts on Ray: the producer half of the RL step on `placement.workers` actors, the learner in the driver.

Each `RolloutWorker` holds its own copy of the policy, an engine (the configured in-process sampler, seeded
`rl.seed + worker index`) and the run's environment, so generation and reward scoring (including model-scored
terms) run where the worker is. The driver keeps the task source: it splits each step's tasks among the
workers without cutting a document's prefix unit (positions that share a prompt prefix stay on one worker, so
the prefix is encoded once), gathers the scored groups in task order and feeds them back to the source.
After every update the driver pushes `PolicyWeights` (a versioned state dict, through the object store) and
the environment's state (e.g. RLP's EMA baseline) to every worker; a worker refuses weights older than the
ones it has, and every rollout carries the version that generated it.

Synchronous by default: the learner waits for the step's rollouts, and with one worker and the same seed this
produces exactly what the in-process producer does (tested). With `rl.max_off_policy_steps = d > 0` the
workers generate the next d steps' rollouts while the learner trains (each worker runs its calls in order, so
a weight sync queued behind a rollout applies after it): a sample is then at most d updates old, which is
checked on every group, and the loss corrects for it (`nextrl.algo.grpo`, decoupled objective). Batches in
flight at a checkpoint are saved with it, so a resumed asynchronous run is exact too.

A worker that dies (killed, out of memory) is replaced by a fresh one with the current weights, and the tasks
it had not returned are re-issued to it: every task handed out is rolled out exactly once. A dead driver (the
learner) is the checkpoint's business: `--resume` continues from the last one.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nextrl.config import RunConfig
from nextrl.engine.base import EngineCapabilities, PolicyWeights
from nextrl.env.base import ScoringModel, Task, TaskSource
from nextrl.errors import ConfigError
from nextrl.trainer.producer import Producer, ScoredGroup, feed_back
from nextrl.trainer.step_account import StepAccount

# Unix socket paths are limited to 107 bytes; Ray puts its sockets under the temp dir.
_MAX_RAY_TMP = 60


class RolloutWorker:
    """One rollout worker (run as a Ray actor): policy copy, engine, environment, and the local producer's
    `rollout` (tasks in, scored groups out)."""

    def __init__(
        self, cfg: dict, policy, tokenizer, autocast, seed: int, threads: int, model_path: str | None = None
    ):
        from nextrl.engine import build_engine
        from nextrl.env import build_environment

        torch.set_num_threads(threads)
        self.cfg = cfg = RunConfig.model_validate(cfg)
        self.policy = policy.eval()
        self.env = build_environment(cfg, tokenizer)
        self.engine = build_engine(  # vLLM (sampling.engine=vllm) loads model_path and is synced from then on
            cfg.sampling,
            cfg.sharing,
            policy,
            tokenizer.pad_token_id,
            autocast,
            seed=seed,
            model_path=model_path,
        )
        handle = ScoringModel(
            policy, tokenizer.pad_token_id, autocast, cfg.sharing.enabled, cfg.sharing.max_tree_nodes
        )
        self.env.bind_scorer(handle)
        params = self.env.sampling_params(
            cfg.sampling.group_size, cfg.sampling.temperature, cfg.sampling.top_p
        )
        self.producer = Producer(
            None,
            self.env,
            self.engine,
            params,
            handle,
            cfg.rl.empty_thought_samples,
            cfg.curriculum.min_spread,
        )

    def rollout(self, tasks: list[Task]) -> tuple[list[ScoredGroup], dict[str, tuple[int, int, int]], float]:
        account = StepAccount()
        groups = self.producer.rollout(tasks, account)
        work = {k: (w.tokens, w.attended, w.logits) for k, w in account.work.items()}
        return groups, work, account.rollout_seconds

    def sync(self, state_dict, env_state, version: int) -> int:
        if version < self.producer.version:
            raise RuntimeError(
                f"weights of version {version} are older than the worker's {self.producer.version}"
            )
        if state_dict is not None:
            self.policy.load_state_dict(state_dict)
        self.env.load_state_dict(env_state)
        self.producer.sync(PolicyWeights(version, lambda: state_dict))
        return version

    def version(self) -> int:
        return self.producer.version

    def state_dict(self) -> dict:
        return self.producer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.producer.load_state_dict(state)

    def pid(self) -> int:
        return os.getpid()

    def engine_name(self) -> str:
        return type(self.engine).__name__


def split_tasks(tasks: list[Task], parts: int) -> list[list[Task]]:
    """Consecutive slices of at most about len/parts tasks that never cut a run of tasks sharing a `group_key`
    (a document's positions, whose prompts share a prefix); fewer slices when there are fewer runs."""
    runs: list[list[Task]] = []
    for t in tasks:
        if runs and t.group_key is not None and runs[-1][-1].group_key == t.group_key:
            runs[-1].append(t)
        else:
            runs.append([t])
    size = math.ceil(len(tasks) / max(parts, 1))
    out: list[list[Task]] = []
    for run in runs:
        if out and (len(out[-1]) + len(run) <= size or len(out) == parts):
            out[-1] += run
        else:
            out.append(list(run))
    return out


@dataclass
class _Batch:
    """One step's rollouts: in flight (`futures`) or done (`results`, e.g. restored from a checkpoint)."""

    step: int
    n: int
    futures: list = field(default_factory=list)
    results: list | None = None
    parts: list = field(default_factory=list)  # each future's tasks, to re-issue if its worker dies
    actors: list = field(default_factory=list)  # the worker each future was sent to


class RayProducer:
    """The `Producer` interface (produce / sync / state_dict / load_state_dict / capabilities / close) over
    Ray rollout workers."""

    def __init__(
        self,
        cfg: RunConfig,
        policy,
        tokenizer,
        source: TaskSource,
        env,
        autocast,
        run_dir: Path,
        model_path: Path | None = None,
    ):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "config key 'placement.kind': 'ray' needs Ray: pip install -e '.[ray]'"
            ) from None
        self.ray, self.cfg, self.source, self.env = ray, cfg, source, env
        pc = cfg.placement
        self.started_cluster = False
        if not ray.is_initialized():
            ray.init(
                address=pc.address,
                num_cpus=pc.num_cpus if pc.address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                _temp_dir=_ray_temp_dir(run_dir) if pc.address is None else None,
            )
            self.started_cluster = True
        self._actor = ray.remote(num_cpus=pc.cpus_per_worker, num_gpus=pc.gpus_per_worker)(RolloutWorker)
        self._spawn_args = (cfg.model_dump(mode="json"), ray.put(policy), tokenizer, autocast)
        self._model_path = str(model_path) if model_path is not None else None
        self._threads = max(1, int(pc.cpus_per_worker))
        self.workers = [self._spawn(cfg.rl.seed + i) for i in range(pc.workers)]
        ray.get([w.version.remote() for w in self.workers])  # fail here, not in the first step
        self.restarts = 0  # workers replaced after they died
        self._weights: tuple[Any, Any] | None = None  # object refs of the last pushed weights and env state
        self.version = 0
        self.groups_with_signal = 0
        self.min_spread = cfg.curriculum.min_spread
        self.ahead, self.steps = cfg.rl.max_off_policy_steps, cfg.rl.steps
        self.pending: deque[_Batch] = deque()  # batches generated ahead, oldest first

    @property
    def capabilities(self) -> EngineCapabilities:
        if self.cfg.sampling.engine == "vllm":  # what the workers' engines serve, stated without asking them
            from nextrl.engine.vllm_engine import VLLMEngine

            return VLLMEngine.capabilities
        return EngineCapabilities(entropies=True, work=True, state=True)  # the workers' PyTorch samplers

    def _spawn(self, seed: int):
        cfg, policy_ref, tokenizer, autocast = self._spawn_args
        return self._actor.remote(cfg, policy_ref, tokenizer, autocast, seed, self._threads, self._model_path)

    def _replace(self, i: int) -> None:
        """A fresh worker in slot `i` (the old one died), with the current weights and environment state. Its
        sampler gets a seed of its own, so it does not replay the dead worker's samples."""
        self.restarts += 1
        self.ray.kill(self.workers[i], no_restart=True)
        self.workers[i] = self._spawn(self.cfg.rl.seed + i + 1009 * self.restarts)
        if self._weights is not None:
            self.ray.get(self.workers[i].sync.remote(*self._weights, self.version))

    def _get(self, batch: _Batch) -> list:
        """The batch's results; a part whose worker died is re-issued, once per death, to its replacement, so
        every task of the batch is rolled out exactly once in the results."""
        results = []
        for i, (future, part, actor) in enumerate(zip(batch.futures, batch.parts, batch.actors, strict=True)):
            for _ in range(3):
                try:
                    results.append(self.ray.get(future))
                    break
                except self.ray.exceptions.RayActorError:
                    if self.workers[i]._actor_id == actor._actor_id:  # not replaced yet (e.g. by a sync)
                        self._replace(i)
                    actor = self.workers[i]
                    future = actor.rollout.remote(part)
            else:
                raise RuntimeError(f"rollout worker {i} died three times on the same tasks")
        return results

    def _launch(self, n: int, step: int) -> _Batch:
        parts = split_tasks(self.source.take(n, step), len(self.workers))
        actors = self.workers[: len(parts)]
        futures = [w.rollout.remote(part) for w, part in zip(actors, parts, strict=True)]
        return _Batch(step, n, futures, parts=parts, actors=list(actors))

    def produce(self, n: int, step: int, account: StepAccount) -> list[ScoredGroup]:
        if self.pending and self.pending[0].step == step and self.pending[0].n == n:
            batch = self.pending.popleft()  # generated ahead, while the learner trained
        else:
            if self.pending:
                raise RuntimeError(
                    f"step {step} asked for {n} tasks, but step {self.pending[0].step} is in flight"
                )
            batch = self._launch(n, step)
        t = time.time()
        results = batch.results if batch.results is not None else self._get(batch)
        account.generation_seconds += time.time() - t  # what the learner waited for (overlap excluded)
        account.waiting_seconds += time.time() - t
        groups: list[ScoredGroup] = []
        busy = [seconds for _, _, seconds in results]
        account.rollout_seconds += sum(busy) / max(len(self.workers), 1)  # per worker, on average
        for part_groups, work, _ in results:
            groups += part_groups
            for k, (tokens, attended, logits) in work.items():
                account.pass_work(k).add(tokens, attended, logits)
        stale = max((self.version - g.policy_version for g in groups), default=0)
        if stale > self.ahead:  # the bound is a guarantee, not a hope: never train on older samples
            raise RuntimeError(f"rollouts {stale} updates old exceed rl.max_off_policy_steps={self.ahead}")
        self.groups_with_signal += feed_back(self.source, groups, self.min_spread)
        # keep `ahead` batches in flight; the workers generate them with the weights they hold now
        nxt = step + 1 + len(self.pending)
        while len(self.pending) < self.ahead and nxt < self.steps:
            self.pending.append(self._launch(n, nxt))
            nxt += 1
        return groups

    def sync(self, weights: PolicyWeights) -> None:
        state = {k: v.detach().to("cpu") for k, v in weights.state_dict().items()}
        self._weights = (self.ray.put(state), self.ray.put(self.env.state_dict()))
        self.version = weights.version
        calls = [w.sync.remote(*self._weights, weights.version) for w in self.workers]
        for i, call in enumerate(calls):
            try:
                assert self.ray.get(call) == weights.version
            except self.ray.exceptions.RayActorError:
                self._replace(i)  # the replacement starts from these weights

    def state_dict(self) -> dict[str, Any]:
        # batches in flight are finished and saved with the checkpoint (the source has handed out their tasks)
        pending = [{"step": b.step, "n": b.n, "results": b.results or self._get(b)} for b in self.pending]
        return {
            "workers": self.ray.get([w.state_dict.remote() for w in self.workers]),
            "groups_with_signal": self.groups_with_signal,
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups_with_signal = state["groups_with_signal"]
        self.pending = deque(
            _Batch(b["step"], b["n"], results=b["results"]) for b in state.get("pending", [])
        )
        saved = state.get("workers")
        if saved is None:  # a checkpoint of the in-process producer: its engine state seeds worker 0
            saved = [state] + [None] * (len(self.workers) - 1)
        for w, s in zip(self.workers, saved, strict=False):
            if s is not None:
                self.ray.get(w.load_state_dict.remote(s))

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
        if self.started_cluster and self.ray.is_initialized():
            self.ray.shutdown()


def _ray_temp_dir(run_dir: Path) -> str:
    """Ray's files inside the run folder, unless the path is too long for its sockets (then a short /tmp one)."""
    path = Path(run_dir).resolve() / "ray"
    if len(str(path)) <= _MAX_RAY_TMP:
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    return tempfile.mkdtemp(prefix="nextrl-ray-")
