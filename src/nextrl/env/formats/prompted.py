"""The prompted format (instruction and reasoning models): a plain-language instruction (RPT's template) over the
decoded context; the model reasons inside `<think> ... </think>` by itself and the answer is the last
`\\boxed{...}` after `</think>` in the decoded completion. One sampling phase, no empty thought, and no
teacher-forced continuation (the answer is parsed, not read at a position)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from nextrl.engine.base import Phase, Rollout, SamplingParams
from nextrl.env.formats.base import ThoughtFormat

# Room for `</think>`, `\boxed{...}` and a closing token after the thought budget.
PROMPTED_ANSWER_SLACK = 32

_INSTRUCTION = (
    "Read the text below and predict the most probable next token that follows it.\n"
    "First reason step by step inside <think> ... </think>. Then, after </think>, give your prediction of the "
    "next token inside \\boxed{}. The token is a piece of text as a tokenizer would split it: it may begin "
    "with a space (for example \\boxed{ the}), which must be kept.\n\n"
    "Text:\n"
)
_BOXED = "\\boxed{"
_CLOSE_TEXT = "</think>"


class PromptedFormat(ThoughtFormat):
    name = "prompted"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        thought_tokens: int,
        eos_ids,
        max_answer_chars: int,
        enable_thinking: bool,
    ):
        self.tok, self.thought_tokens, self.eos_ids = tokenizer, thought_tokens, tuple(eos_ids)
        self.max_answer_chars, self.enable_thinking = max_answer_chars, enable_thinking

    def prompt(self, context_ids: Sequence[int]) -> list[int]:
        text = build_prompt(
            self.tok.decode(context_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
        if getattr(self.tok, "chat_template", None):
            # The template writes its own BOS/role markers, so no extra special tokens are added.
            # enable_thinking: Qwen3's switch (other templates ignore it); on, the model opens its own thought
            chat = self.tok.apply_chat_template(
                [{"role": "user", "content": text}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=self.enable_thinking,
            )
            return list(self.tok(chat, add_special_tokens=False)["input_ids"])
        return list(self.tok(text)["input_ids"])

    def sampling(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return prompted_sampling(self.thought_tokens, self.eos_ids, n, temperature, top_p)

    def answer_bytes(self, rollout: Rollout) -> bytes | None:
        # Special tokens are kept so that the thought's close survives decoding.
        text = self.tok.decode(
            rollout.completion_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        ans = parse_boxed_answer(text, self.max_answer_chars)
        return None if ans is None else ans.encode("utf-8")


def build_prompt(context_text: str) -> str:
    return _INSTRUCTION + context_text


def prompted_sampling(
    thought_tokens: int, eos_ids: tuple[int, ...], n: int, temperature: float, top_p: float
) -> SamplingParams:
    return SamplingParams(
        phases=(Phase(thought_tokens + PROMPTED_ANSWER_SLACK),),
        n=n,
        temperature=temperature,
        top_p=top_p,
        eos_token_ids=eos_ids,
    )


def parse_boxed_answer(completion_text: str, max_answer_chars: int | None = None) -> str | None:
    """Content of the last balanced `\\boxed{...}` after the first `</think>`; None if there is no `</think>`,
    no box, the last box is unterminated, or its content is longer than `max_answer_chars` (a long box is not
    a token guess). Braces nest; escaped braces (`\\{`) are not special-cased."""
    end = completion_text.find(_CLOSE_TEXT)
    if end < 0:
        return None
    text = completion_text[end + len(_CLOSE_TEXT) :]
    last: str | None = None
    i = text.find(_BOXED)
    while i >= 0:
        start = i + len(_BOXED)
        depth, j = 1, start
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            return None  # the last box is unterminated: the final answer is unreadable, not an earlier box
        last = text[start : j - 1]
        i = text.find(_BOXED, j)
    if last is None or (max_answer_chars is not None and len(last) > max_answer_chars):
        return None
    return last
