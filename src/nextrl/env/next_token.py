"""The next-token environment: a document position becomes a task, a sampled prediction a prefix-match reward."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from nextrl.config.schema import EnvConfig
from nextrl.data.positions import context_start
from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env import formats
from nextrl.env.base import Reward, Task
from nextrl.env.reward import boundaries, prefix_match_reward
from nextrl.model.tokenizer import THINK_CLOSE, THINK_OPEN, TokenBytes, think_ids


class NextTokenEnv:
    """Implements `nextrl.env.base.Environment` for RPT-style next-token reasoning (format from `cfg.format`)."""

    name = "next_token"

    def __init__(self, cfg: EnvConfig, tokenizer: PreTrainedTokenizerBase):
        self.cfg = cfg
        self.tok = tokenizer
        self.token_bytes = TokenBytes(tokenizer)
        eos = tokenizer.eos_token_id
        self.eos_ids: tuple[int, ...] = () if eos is None else (int(eos),)
        self.think_open = self.think_close = -1
        if cfg.format == "structured":
            vocab = tokenizer.get_vocab()
            if THINK_OPEN not in vocab or THINK_CLOSE not in vocab:
                # convert_tokens_to_ids would silently give unk: fail here instead (see ensure_think_tokens).
                raise ValueError("structured format needs <think> and </think> tokens in the vocabulary")
            self.think_open, self.think_close = think_ids(tokenizer)

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
        ctx = [int(t) for t in doc_tokens[context_start(position, context) : position]]
        target_ids = [int(t) for t in doc_tokens[position : position + self.cfg.target_tokens]]
        pieces = [self.token_bytes(t) for t in target_ids]
        if self.cfg.format == "structured":
            prompt_ids = formats.structured_prompt(
                ctx, self.think_open, self.think_close, self.cfg.thought_tokens
            )
        else:
            prompt_ids = self._prompted_ids(ctx)
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

    def _prompted_ids(self, ctx: list[int]) -> list[int]:
        text = formats.build_prompt(
            self.tok.decode(ctx, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
        if getattr(self.tok, "chat_template", None):
            # The template writes its own BOS/role markers, so no extra special tokens are added.
            chat = self.tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return list(self.tok(chat, add_special_tokens=False)["input_ids"])
        return list(self.tok(text)["input_ids"])

    # ------------------------------------------------------------ sampling

    @property
    def _n_phases(self) -> int:
        return 2 if self.cfg.format == "structured" and self.cfg.thought_tokens > 0 else 1

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        if self.cfg.format == "structured":
            return formats.structured_sampling(
                self.cfg.thought_tokens,
                self.cfg.answer_tokens,
                self.think_close,
                self.eos_ids,
                n,
                temperature,
                top_p,
            )
        return formats.prompted_sampling(self.cfg.thought_tokens, self.eos_ids, n, temperature, top_p)

    # ------------------------------------------------------------ scoring

    def answer_bytes(self, task: Task, rollout: Rollout) -> bytes | None:
        """The predicted bytes, or None when the answer is missing or unparseable."""
        if self.cfg.format == "structured":
            ids = formats.structured_answer_ids(rollout, self._n_phases, self.eos_ids)
            return None if ids is None else self.token_bytes.join(ids)
        # Special tokens are kept so that `</think>` survives decoding.
        text = self.tok.decode(
            rollout.completion_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        ans = formats.parse_boxed_answer(text, self.cfg.max_answer_chars)
        return None if ans is None else ans.encode("utf-8")

    def score(self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]]) -> list[list[Reward]]:
        if len(tasks) != len(rollouts):
            raise ValueError(f"{len(tasks)} tasks but {len(rollouts)} rollout groups")
        out: list[list[Reward]] = []
        for task, group in zip(tasks, rollouts, strict=True):
            rewards = []
            for ro in group:
                pred = self.answer_bytes(task, ro)
                if pred is None:
                    rewards.append(
                        Reward(self.cfg.missing_answer_reward, {"prefix_match": 0.0}, None, parsed=False)
                    )
                    continue
                r = prefix_match_reward(pred, task.meta["target_bytes"], task.meta["boundaries"])
                rewards.append(Reward(r, {"prefix_match": r}, pred.decode("utf-8", errors="replace")))
            out.append(rewards)
        return out

    def standard_prediction_correct(self, task: Task, predicted_token_id: int) -> bool:
        """No-thought protocol: one greedy token, judged by the same byte rule as a reasoned answer."""
        pred = self.token_bytes(int(predicted_token_id))
        return prefix_match_reward(pred, task.meta["target_bytes"], task.meta["boundaries"]) == 1.0
