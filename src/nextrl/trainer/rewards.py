"""The reward of a batch: the environment's verifier components plus the model-scored ones, composed by the spec.

`prefix_match` and `format` come from the environment (`env.score`, no model). `info_gain` and `likelihood` are
teacher-forced: the true continuation is scored after `prompt + thought + </think>` by the current policy, and
after the bare context by the EMA baseline (RLP). Both passes go through the prefix-tree path, so the document
prefix shared by a stripe's positions and their G thoughts is encoded once per pass, not once per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nextrl.algo.ema import EMAModel
from nextrl.algo.logprobs import tree_completion_logprobs
from nextrl.config import RunConfig
from nextrl.config.schema import REWARD_COMPONENTS
from nextrl.engine.base import Rollout
from nextrl.env.base import Reward, Task
from nextrl.env.formats import closed_thought
from nextrl.env.likelihood import RewardSpec, copies_target, information_gain, likelihood_gain
from nextrl.model.flops import TokenWork

MODEL_SCORED = ("info_gain", "likelihood")


class RewardScorer:
    def __init__(self, cfg: RunConfig, env, tokenizer, policy, autocast: torch.dtype | None):
        self.cfg, self.rc = cfg, cfg.reward
        self.env, self.tokenizer, self.policy, self.autocast = env, tokenizer, policy, autocast
        self.spec = RewardSpec.parse(self.rc.spec, REWARD_COMPONENTS)
        self.model_scored = [n for n in self.spec.names if n in MODEL_SCORED]
        self.ema: EMAModel | None = None
        if self.model_scored:
            if cfg.env.format != "structured":
                raise ValueError(
                    f"config key 'reward': {', '.join(self.model_scored)} needs env.format=structured "
                    "(the continuation is teacher-forced right after </think>)"
                )
            # fp32 copy: a 0.1% step is below bf16 resolution, so a bf16 EMA would never move
            self.ema = EMAModel(policy, self.rc.ema_tau, dtype=torch.float32)
        self.work = TokenWork()  # tokens the scoring passes processed (reset by the trainer each step)

    @property
    def verifier_free(self) -> bool:
        """True when no term needs the answer to be right (RLP-style training on the thought only)."""
        return "prefix_match" not in self.spec.names

    def update_baseline(self) -> None:
        if self.ema is not None:
            self.ema.update(self.policy)

    def score(self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]]) -> list[list[Reward]]:
        verified = self.env.score(tasks, rollouts)
        comps = [[{**r.components, "format": 0.0 if r.parsed else -1.0} for r in group] for group in verified]
        if self.model_scored:
            for name, values in self._model_scored(tasks, rollouts).items():
                for i, group in enumerate(comps):
                    for j, c in enumerate(group):
                        c[name] = values[i][j]
        return [
            [Reward(float(self.spec.total(c)), c, r.answer, r.parsed) for c, r in zip(cg, rg, strict=True)]
            for cg, rg in zip(comps, verified, strict=True)
        ]

    @torch.no_grad()
    def _model_scored(self, tasks, rollouts) -> dict[str, list[list[float]]]:
        k = max(
            self.rc.info_gain_tokens if "info_gain" in self.model_scored else 1,
            self.rc.likelihood_tokens if "likelihood" in self.model_scored else 1,
        )
        env = self.env
        targets = [list(t.meta["target_ids"][:k]) for t in tasks]
        # with the thought, under the current policy: one sequence per sample
        prompts, comps, thoughts = [], [], []
        for t, group, tgt in zip(tasks, rollouts, targets, strict=True):
            for r in group:
                th, _ = closed_thought(r, env.think_close, env.eos_ids)
                prompts.append(list(t.prompt_ids) + th)
                comps.append(tgt)
                thoughts.append(th[:-1])
        was_training = self.policy.training
        self.policy.eval()
        try:
            with_t = self._logprobs(self.policy, prompts, comps)
        finally:
            self.policy.train(was_training)
        # without the thought, under the EMA baseline: one sequence per position (the bare context)
        contexts = [list(t.meta["context_ids"]) or [int(t.prompt_ids[0])] for t in tasks]
        without = self._logprobs(self.ema.model, contexts, targets)
        G = [len(g) for g in rollouts]
        without = torch.repeat_interleave(without, torch.tensor(G, device=without.device), dim=0)
        mask = torch.zeros_like(with_t)
        row = 0
        for tgt, g in zip(targets, G, strict=True):
            mask[row : row + g, : len(tgt)] = 1.0
            row += g
        out: dict[str, torch.Tensor] = {}
        if "info_gain" in self.model_scored:
            n = min(self.rc.info_gain_tokens, with_t.shape[1])
            out["info_gain"] = information_gain(with_t, without, mask, tokens=n)
        if "likelihood" in self.model_scored:
            n = min(self.rc.likelihood_tokens, with_t.shape[1])
            out["likelihood"] = likelihood_gain(with_t[:, :n], without[:, :n], mask[:, :n])
        if self.rc.copy_guard:
            # a thought that writes out the start of the target gets no positive gain (Quiet-STaR's hack)
            flags, row = [], 0
            for t, g in zip(tasks, G, strict=True):
                for th in thoughts[row : row + g]:
                    flags.append(
                        copies_target(
                            env.token_bytes.join(th), t.meta["target_bytes"], self.rc.copy_min_bytes
                        )
                    )
                row += g
            copied = torch.tensor(flags, device=with_t.device)
            out = {n: torch.where(copied, v.clamp(max=0.0), v) for n, v in out.items()}
        result = {}
        for name, v in out.items():
            vals, row = v.tolist(), 0
            result[name] = []
            for g in G:
                result[name].append(vals[row : row + g])
                row += g
        return result

    def _logprobs(self, model, prompts, comps) -> torch.Tensor:
        return tree_completion_logprobs(
            model,
            prompts,
            comps,
            1.0,
            self.tokenizer.pad_token_id,
            self.autocast,
            max_nodes=self.cfg.rl.max_tree_nodes,
            work=self.work,
        )

    def state_dict(self) -> dict | None:
        return self.ema.state_dict() if self.ema is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.ema is not None and state is not None:
            self.ema.load_state_dict(state)
