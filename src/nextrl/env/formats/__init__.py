"""Thought formats: how a next-token task is put to the policy and its answer read back (`env.format`).

- `structured` (models nextrl pretrained): `context <think>`, thought, `</think>`, answer (`structured.py`);
- `aside` (pretrained models nextrl did not pretrain): `context (`, thought, `)`, answer, with delimiters from the
  model's own vocabulary and an empty thought that is exactly no thought (`aside.py`);
- `prompted` (instruction and reasoning models): an instruction, the answer in `\\boxed{}` (`prompted.py`).

The interface is `ThoughtFormat` (`base.py`); a new format is one module plus its tests, and a line here.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from nextrl.config.schema import EnvConfig
from nextrl.data.shown_thoughts import Delimiters
from nextrl.env.formats.aside import DEFAULT_DELIMITERS, AsideFormat
from nextrl.env.formats.base import EngineSampler, GroupSampler, ThoughtFormat, answer_params
from nextrl.env.formats.prompted import PromptedFormat, build_prompt, parse_boxed_answer
from nextrl.env.formats.structured import StructuredFormat, closed_thought
from nextrl.errors import ConfigError
from nextrl.model.tokenizer import TokenBytes, end_of_turn_ids, has_think_tokens, think_ids

__all__ = [
    "DEFAULT_DELIMITERS",
    "AsideFormat",
    "EngineSampler",
    "GroupSampler",
    "PromptedFormat",
    "StructuredFormat",
    "ThoughtFormat",
    "answer_params",
    "build_format",
    "build_prompt",
    "closed_thought",
    "delimiter_ids",
    "parse_boxed_answer",
    "shown_thought_ids",
]


def build_format(
    cfg: EnvConfig, tokenizer: PreTrainedTokenizerBase, token_bytes: TokenBytes
) -> ThoughtFormat:
    """The format `cfg.format` names, with its delimiter ids resolved against `tokenizer`."""
    if cfg.format == "prompted":
        return PromptedFormat(
            tokenizer,
            cfg.thought_tokens,
            end_of_turn_ids(tokenizer),
            cfg.max_answer_chars,
            cfg.enable_thinking,
        )
    eos = tokenizer.eos_token_id
    eos_ids = () if eos is None else (int(eos),)
    if cfg.format == "aside":
        open_id, close_id = delimiter_ids(tokenizer, cfg.delimiters)
        return AsideFormat(
            open_id, close_id, cfg.thought_tokens, cfg.answer_tokens, eos_ids, token_bytes, cfg.mix_weight
        )
    if not has_think_tokens(tokenizer):
        # convert_tokens_to_ids would silently give unk: fail here instead (see ensure_think_tokens).
        raise ValueError("structured format needs <think> and </think> tokens in the vocabulary")
    open_id, close_id = think_ids(tokenizer)
    return StructuredFormat(open_id, close_id, cfg.thought_tokens, cfg.answer_tokens, eos_ids, token_bytes)


def delimiter_ids(tokenizer: PreTrainedTokenizerBase, delimiters) -> tuple[int, int]:
    """The one token id of each delimiter string; a ConfigError naming `env.delimiters` and the tokenizer when a
    string is not exactly one token of its vocabulary (a split delimiter would be two actions, and a new token
    an untrained embedding)."""
    ids = []
    for text in delimiters:
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ConfigError(
                f"config key 'env.delimiters': {text!r} is {len(enc)} tokens for the tokenizer of {name} "
                f"({enc}); each delimiter must be exactly one token of the model's vocabulary"
            )
        ids.append(int(enc[0]))
    if ids[0] == ids[1]:
        raise ConfigError(
            f"config key 'env.delimiters': {list(delimiters)} open and close are the same token"
        )
    return ids[0], ids[1]


def shown_thought_ids(cfg: EnvConfig, tokenizer: PreTrainedTokenizerBase) -> Delimiters | None:
    """The (open, close) ids that a page's shown thoughts are written in for `cfg.format`
    (`nextrl.data.shown_thoughts`): the aside delimiters, `<think>`/`</think>` for the structured format, None
    for the prompted format (an instruction, not delimiters)."""
    if cfg.format == "aside":  # before a trailing space, as `AsideFormat.prompt` writes it
        return Delimiters(*delimiter_ids(tokenizer, cfg.delimiters), before_space=True)
    if cfg.format == "structured":
        return Delimiters(*think_ids(tokenizer))
    return None
