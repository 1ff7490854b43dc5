"""The next-token environment (RPT, RLP): a document position becomes a task; a sampled prediction is scored by
byte-level prefix match, a format term and, teacher-forced through a scoring model, information gain and
likelihood (`nextrl.env.model_scored`), composed by the config's reward spec."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from nextrl.config.schema import EnvConfig, RewardConfig
from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env.base import Environment, Reward, ScoringModel, Task, check_reward_spec
from nextrl.env.formats import ThoughtFormat, build_format
from nextrl.env.model_scored import MODEL_SCORED, ModelScoredTerms
from nextrl.env.reward import boundaries, prefix_match_reward
from nextrl.errors import ConfigError
from nextrl.model.tokenizer import TokenBytes, document_prefix
from nextrl.positions.context import context_start


class NextTokenEnv(Environment):
    """RPT-style next-token reasoning in the thought format `cfg.format` (`nextrl.env.formats`), rewarded by
    `reward.spec` over the components `prefix_match` (0/1), `format` (−1 for a missing or unparseable answer,
    else 0), `info_gain` and `likelihood` (model-scored). Without a reward config it scores prefix match only
    (evaluation)."""

    name = "next_token"
    reward_components = ("prefix_match", "format", *MODEL_SCORED)
    correctness = "prefix_match"

    def __init__(
        self, cfg: EnvConfig, tokenizer: PreTrainedTokenizerBase, reward: RewardConfig | None = None
    ):
        self.cfg = cfg
        self.reward_cfg = reward or RewardConfig()
        self.tok = tokenizer
        self.token_bytes = TokenBytes(tokenizer)
        self.prefix_ids = document_prefix(tokenizer)  # <bos> where the model was pretrained after one
        self.thought_format: ThoughtFormat = build_format(cfg, tokenizer, self.token_bytes)
        self.eos_ids = self.thought_format.eos_ids
        self.spec = check_reward_spec(self.reward_cfg.spec, self)
        if dict(self.spec.terms).get("format", 0.0) < 0:
            raise ConfigError(
                f"config key 'reward': '{self.spec}' gives `format` a negative weight, which *rewards* a missing "
                "answer: format is already a penalty (−1 for a missing answer, else 0); write +w*format"
            )
        self.model_scored = ModelScoredTerms(
            self.reward_cfg, self.spec.names, self.thought_format, self.token_bytes
        )
        if self.model_scored.names and not self.thought_format.teacher_forced:
            raise ConfigError(
                f"config key 'reward': {', '.join(self.model_scored.names)} needs a format whose answer directly "
                f"follows the thought (env.format=structured or aside; not {cfg.format}): the continuation is "
                "teacher-forced there"
            )

    @property
    def verifier_free(self) -> bool:
        """No term needs the answer to be right: RLP-style training on the thought only."""
        return "prefix_match" not in self.spec.names

    # ------------------------------------------------------------ tasks

    def make_task(
        self,
        doc_id: str,
        doc_tokens: Sequence[int],
        position: int,
        context: int,
        bucket: str = "",
        domain: str = "text",
    ) -> Task:
        """Task "predict token `position` given tokens[:position]", seeing the prefix from `context_start`."""
        # Callers pass numpy arrays and scalars: store plain Python values so tasks log and serialise cleanly.
        doc_id, position, bucket = str(doc_id), int(position), str(bucket)
        if not 0 <= position < len(doc_tokens):
            raise ValueError(f"position {position} outside document of {len(doc_tokens)} tokens")
        ctx = self.prefix_ids + [int(t) for t in doc_tokens[context_start(position, context) : position]]
        target_ids = [int(t) for t in doc_tokens[position : position + self.cfg.target_tokens]]
        pieces = [self.token_bytes(t) for t in target_ids]
        prompt_ids = self.thought_format.prompt(ctx)
        meta = {
            "position": position,
            "bucket": bucket,
            "target_ids": target_ids,
            "target_bytes": b"".join(pieces),
            "boundaries": boundaries(pieces),
            "context_ids": ctx,  # raw context, for the no-thought (standard) protocol in evaluation
        }
        return Task(
            task_id=f"{doc_id}@{position}", prompt_ids=prompt_ids, domain=domain, group_key=doc_id, meta=meta
        )

    # ------------------------------------------------------------ sampling

    @property
    def _n_phases(self) -> int:
        return self.thought_format.n_phases

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return self.thought_format.sampling(n, temperature, top_p)

    # ------------------------------------------------------------ scoring

    def answer_bytes(self, task: Task, rollout: Rollout) -> bytes | None:
        """The predicted bytes, or None when the answer is missing or unparseable."""
        return self.thought_format.answer_bytes(rollout)

    def verify(self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]]) -> list[list[Reward]]:
        """The model-free components of every rollout: `prefix_match` and `format`, and the parsed answer."""
        if len(tasks) != len(rollouts):
            raise ValueError(f"{len(tasks)} tasks but {len(rollouts)} rollout groups")
        out: list[list[Reward]] = []
        for task, group in zip(tasks, rollouts, strict=True):
            rewards = []
            for ro in group:
                pred = self.answer_bytes(task, ro)
                if pred is None:
                    rewards.append(Reward(0.0, {"prefix_match": 0.0, "format": -1.0}, None, parsed=False))
                    continue
                r = prefix_match_reward(pred, task.meta["target_bytes"], task.meta["boundaries"])
                comps = {"prefix_match": r, "format": 0.0}
                rewards.append(Reward(r, comps, pred.decode("utf-8", errors="replace")))
            out.append(rewards)
        return out

    def score(
        self,
        tasks: Sequence[Task],
        rollouts: Sequence[Sequence[Rollout]],
        scorer: ScoringModel | None = None,
    ) -> list[list[Reward]]:
        verified = self.verify(tasks, rollouts)
        comps = [[dict(r.components) for r in group] for group in verified]
        if self.model_scored.names:
            for name, values in self.model_scored(tasks, rollouts, scorer).items():
                for i, group in enumerate(comps):
                    for j, c in enumerate(group):
                        c[name] = values[i][j]
        return [
            [Reward(self.total(c), c, r.answer, r.parsed) for c, r in zip(cg, rg, strict=True)]
            for cg, rg in zip(comps, verified, strict=True)
        ]

    # ------------------------------------------------------------ model-scored state

    def bind_scorer(self, scorer: ScoringModel) -> None:
        self.model_scored.bind(scorer)

    def after_update(self) -> None:
        self.model_scored.update_baseline()  # RLP's EMA follows every optimizer step

    def state_dict(self) -> dict | None:
        return self.model_scored.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.model_scored.load_state_dict(state)

    # ------------------------------------------------------------ the joint next-token term (rl.lm_coef)

    def lm_sequences(self, tasks: Sequence[Task]) -> list[list[int]]:
        return lm_sequences(tasks)

    def score_plan(self, tasks: Sequence[Task]) -> tuple[int, list[int]] | None:
        """RLP's info gain scores the true next token after the closed thought: exactly the
        distribution the engine samples the answer from, so the engine records it (phase 1's first step) and
        the with-thought pass is not run. Only when every model-scored term reads one token."""
        if self._n_phases < 2 or not self.model_scored.names or self.model_scored.tokens != 1:
            return None
        if not all(t.meta.get("target_ids") for t in tasks):
            return None
        return 1, [int(t.meta["target_ids"][0]) for t in tasks]

    def empty_thought_targets(self, tasks: Sequence[Task]) -> tuple[list[list[int]], list[int]]:
        return self.thought_format.empty_thought_targets(tasks)

    def standard_prediction_correct(self, task: Task, predicted_token_id: int) -> bool:
        """No-thought protocol: one greedy token, judged by the same byte rule as a reasoned answer."""
        pred = self.token_bytes(int(predicted_token_id))
        return prefix_match_reward(pred, task.meta["target_bytes"], task.meta["boundaries"]) == 1.0


def lm_sequences(tasks: Sequence[Task]) -> list[list[int]]:
    """The text the positions read, once: each position's context plus its true next token, minus those that
    are a prefix of another (positions of one stripe nest)."""
    seqs = sorted({(*t.meta["context_ids"], t.meta["target_ids"][0]) for t in tasks if t.meta["target_ids"]})
    out = [s for a, s in enumerate(seqs) if not (a + 1 < len(seqs) and seqs[a + 1][: len(s)] == s)]
    return [list(s) for s in out if len(s) > 1]
