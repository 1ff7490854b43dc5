"""How a next-token task is put to the policy, and how its answer is read back.

- structured (base and small models): the prompt is the raw context ids plus `<think>`; the thought and the
  answer are separate sampling phases, so the answer is read by position, with no parsing.
- prompted (instruction/reasoning models): a plain-language instruction (RPT's template); the answer is the
  last `\\boxed{...}` after `</think>` in the decoded completion.
"""

from __future__ import annotations

from collections.abc import Sequence

from nextrl.engine.base import Phase, Rollout, SamplingParams

# Room for `</think>`, `\boxed{...}` and a closing token after the thought budget (prompted format).
PROMPTED_ANSWER_SLACK = 32


# ---------------------------------------------------------------- structured


def structured_prompt(
    context_ids: Sequence[int], think_open: int, think_close: int, thought_tokens: int
) -> list[int]:
    # With no thought budget the empty thought is part of the prompt and only the answer is sampled.
    suffix = [think_open] if thought_tokens > 0 else [think_open, think_close]
    return [*context_ids, *suffix]


def structured_sampling(
    thought_tokens: int,
    answer_tokens: int,
    think_close: int,
    eos_ids: tuple[int, ...],
    n: int,
    temperature: float,
    top_p: float,
) -> SamplingParams:
    answer = Phase(answer_tokens)
    if thought_tokens > 0:
        thought = Phase(thought_tokens, stop_token_ids=(think_close,), force_on_length=(think_close,))
        phases: tuple[Phase, ...] = (thought, answer)
    else:
        phases = (answer,)
    return SamplingParams(phases=phases, n=n, temperature=temperature, top_p=top_p, eos_token_ids=eos_ids)


def structured_answer_ids(rollout: Rollout, n_phases: int, eos_ids: Sequence[int]) -> list[int] | None:
    """Token ids of the answer (last) phase, cut at the first eos; None when no answer token was produced."""
    starts = rollout.phase_starts or ([0] if n_phases == 1 else [])
    if not starts:
        # phase_starts[0] == 0 always, so an empty list means the engine did not record phases: a bug, not a
        # missing answer (silently scoring every sample as missing would hide it).
        raise ValueError("rollout has no phase_starts for a multi-phase completion")
    if len(starts) < n_phases:
        return None  # the completion ended (eos) inside the thought
    ids = rollout.completion_ids[starts[n_phases - 1] :]
    for k, t in enumerate(ids):
        if t in eos_ids:
            ids = ids[:k]
            break
    return ids or None


# ---------------------------------------------------------------- prompted

_INSTRUCTION = (
    "Read the text below and predict the most probable next token that follows it.\n"
    "First reason step by step inside <think> ... </think>. Then, after </think>, give your prediction of the "
    "next token inside \\boxed{}. The token is a piece of text as a tokenizer would split it: it may begin "
    "with a space (for example \\boxed{ the}), which must be kept.\n\n"
    "Text:\n"
)


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


_BOXED = "\\boxed{"


def parse_boxed_answer(completion_text: str, max_answer_chars: int | None = None) -> str | None:
    """Content of the last balanced `\\boxed{...}` after the first `</think>`; None if there is no `</think>`,
    no box, the last box is unterminated, or its content is longer than `max_answer_chars` (a long box is not
    a token guess). Braces nest; escaped braces (`\\{`) are not special-cased."""
    end = completion_text.find("</think>")
    if end < 0:
        return None
    text = completion_text[end + len("</think>") :]
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


def closed_thought(rollout: Rollout, think_close: int, eos_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The thought tokens including `</think>`, and whether `</think>` had to be added.

    The thought ends at `phase_starts[1]` when there is a second phase, else it is the whole completion (only
    the thought phase was sampled). It normally ends with `</think>` (sampled, or forced when the budget ran
    out); a thought cut by eos gets its eos dropped and `</think>` appended, so the answer is still scored after
    a closed thought, as the RL reward would be."""
    end = rollout.phase_starts[1] if len(rollout.phase_starts) > 1 else len(rollout.completion_ids)
    thought = list(rollout.completion_ids[:end])
    if thought and thought[-1] == think_close:
        return thought, False
    while thought and thought[-1] in eos_ids:
        thought.pop()
    return [*thought, think_close], True
