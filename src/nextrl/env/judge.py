"""Judged writing: open-ended prompts (continue a story, write in a style) scored by a judge model.

Task records (JSONL, `env.options.path`): `{"prompt": "Continue the story: ...", "rubric": "..."}` (the rubric
is optional; `env.options.rubric` is the default one).

The judge is any Hugging Face causal LM (`env.options.judge`, a folder), or by default a frozen copy of the
policy as it starts (self-evaluation). It reads a rubric prompt with the response and is asked for a rating
from 1 to 5; the score is not parsed from generated text but read from the judge's next-token distribution
over the rating tokens: `judge` = (E[rating] − 1) / 4 in [0, 1], with E under the renormalised probabilities
of "1" … "5".

Guards against the usual hacks of a judge: `repetition` is −(1 − distinct-2), the share of repeated word
bigrams (0 for varied text, near −1 for a loop), and `length` is −1 for an empty response. `form` is against
the forms a policy finds first when it writes for a small judge rather than for the request: it is −1 for a
response that claims a score ("Rating: 10", "Rating (1-5): 5", "I rate this 10 out of 10"), and otherwise
−min(1, 2 × the larger of the share of its content words that are the rubric's (the rubric's own words
repeated back) and the share of its word trigrams that are the prompt's (the prompt copied)): −1 from half
on. It costs an honest response a little where it shares words with the rubric or quotes the prompt, and a
story in which a character scores "3 out of 5" (see `claims_a_score`). Write the reward as e.g.
`judge+0.5*repetition+length+form`: as `judge` is in [0, 1], a response with `form` = −1 scores below every
response with `form` = 0 and no repetition, whatever the judge thinks of either.

Options: `path` (required), `judge` (a model folder; default: the policy's frozen copy), `rubric`,
`max_tokens` (128).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch

from nextrl.engine.base import Rollout, SamplingParams
from nextrl.env.base import Environment, Reward, ScoringModel, Task
from nextrl.env.records import RecordTasks, file_tasks
from nextrl.errors import ConfigError, DataError
from nextrl.model.tokenizer import end_of_turn_ids

RUBRIC = (
    "Rate the response to the request from 1 (poor) to 5 (excellent) for coherence, fluency and how well it "
    "follows the request."
)
TEMPLATE = "{rubric}\n\nRequest: {prompt}\n\nResponse: {response}\n\nRating (1-5):"  # then " 1" … " 5"
RATINGS = ("1", "2", "3", "4", "5")
# a score claimed in the response: "Rating: 10", "Score (1-5) = 5", "rated it a 9", "5/5", "10 out of 10"
SCORE_CLAIM = re.compile(
    r"\b(?:rating|score|grade|verdict)\b\s*(?:\(\s*\d+\s*-\s*\d+\s*\))?\s*(?::|=|is|of)\s*\d"
    r"|\brat(?:e|es|ed|ing)\b[^.\n]{0,30}?\b\d+(?:\.\d+)?\b"
    r"|\b\d+(?:\.\d+)?\s*(?:/|out\s+of)\s*(?:5|10|100)\b",
    re.IGNORECASE,
)
# words too common to say that a response repeats the rubric
STOPWORDS = frozenset((
    "about", "after", "also", "been", "both", "could", "each", "from", "have", "here", "into", "just",
    "like", "more", "most", "much", "only", "other", "over", "same", "some", "such", "than", "that",
    "their", "them", "then", "there", "these", "they", "this", "those", "very", "well", "were", "what",
    "when", "which", "while", "will", "with", "would", "your",
))  # fmt: skip


def distinct_2(words: Sequence[str]) -> float:
    """Distinct bigrams / bigrams (1.0 for fewer than two words)."""
    pairs = list(zip(words, words[1:], strict=False))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def claims_a_score(text: str) -> bool:
    return SCORE_CLAIM.search(text) is not None


def content_stems(text: str) -> list[str]:
    """Words of four letters or more, less the commonest, cut to five letters ("coherent" and "coherence"
    are one stem)."""
    words = re.findall(r"[a-z]+", text.lower())
    return [w[:5] for w in words if len(w) >= 4 and w not in STOPWORDS]


def word_trigrams(text: str) -> list[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def form_penalty(response: str, prompt: str, rubric: str) -> float:
    """The `form` guard: −1 for a claimed score, else −min(1, 2 × max(rubric words share, prompt trigram
    share)); 0 for a response that neither claims, echoes the rubric nor copies the prompt."""
    if claims_a_score(response):
        return -1.0
    stems = content_stems(response)
    judged = set(content_stems(rubric + " " + TEMPLATE.format(rubric="", prompt="", response="")))
    echo = sum(s in judged for s in stems) / len(stems) if stems else 0.0
    grams = word_trigrams(response)
    copied = set(word_trigrams(prompt))
    copy_share = sum(g in copied for g in grams) / len(grams) if grams else 0.0
    penalty = min(1.0, 2.0 * max(echo, copy_share))
    return -penalty if penalty else 0.0


class JudgeEnv(Environment):
    name = "judge"
    reward_components = ("judge", "repetition", "length", "form")

    def __init__(self, options: dict[str, Any], tokenizer, autocast=None):
        unknown = set(options) - {"path", "judge", "rubric", "max_tokens"}
        if unknown:
            raise ConfigError(
                f"config key 'env.options': unknown option(s) {sorted(unknown)} for env 'judge'"
            )
        if "path" not in options:
            raise ConfigError("config key 'env.options.path': the judge environment needs a file of prompts")
        self.options, self.tok = options, tokenizer
        self.max_tokens = int(options.get("max_tokens", 128))
        self.rubric = options.get("rubric", RUBRIC)
        self.eos_ids = end_of_turn_ids(tokenizer)
        self.rating_ids = []
        for r in RATINGS:
            ids = tokenizer(" " + r, add_special_tokens=False)["input_ids"]
            ids = ids if len(ids) == 1 else tokenizer(r, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ConfigError(f"the tokenizer splits the rating {r!r} into {len(ids)} tokens")
            self.rating_ids.append(ids[0])
        self.judge: ScoringModel | None = None

    def bind_scorer(self, scorer: ScoringModel) -> None:
        if self.judge is not None:
            return
        path = self.options.get("judge")
        if path:
            from nextrl.model.build import load_model
            from nextrl.model.tokenizer import has_think_tokens, load_tokenizer

            try:  # with <think>/</think> when the policy's tokenizer has them (the structured format)
                judge_vocab = load_tokenizer(str(path), think_tokens=has_think_tokens(self.tok)).get_vocab()
            except (OSError, ValueError) as e:
                raise ConfigError(f"config key 'env.options.judge': no tokenizer in {path} ({e})") from None
            if judge_vocab != self.tok.get_vocab():
                raise ConfigError(
                    f"config key 'env.options.judge': {path} has another vocabulary than the policy; the judge "
                    "reads the policy's tokens, so it must share its tokenizer"
                )
            model = load_model(path, vocab_size=len(self.tok), key="env.options.judge")
        else:  # self-evaluation: the policy as it starts, frozen
            model = copy.deepcopy(scorer.model)
        model.eval().requires_grad_(False)
        self.judge = scorer.like(model)

    def make_task(self, record: dict[str, Any], index: int) -> Task:
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise DataError(f"{self.options['path']} record {index}: no text field 'prompt'")
        ids = list(self.tok(prompt + "\n", add_special_tokens=False)["input_ids"])
        return Task(
            f"judge:{index}", ids, domain="writing", meta={"prompt": prompt, "rubric": record.get("rubric")}
        )

    def sampling_params(self, n: int, temperature: float, top_p: float) -> SamplingParams:
        return SamplingParams.simple(self.max_tokens, n, temperature, top_p, eos_token_ids=self.eos_ids)

    @torch.no_grad()
    def ratings(
        self, prompts: Sequence[str], responses: Sequence[str], rubrics: Sequence[str | None]
    ) -> list[float]:
        """The judge's expected rating, mapped to [0, 1], for each (prompt, response)."""
        if self.judge is None:
            raise RuntimeError("the judge environment needs bind_scorer() before scoring")
        texts = [
            TEMPLATE.format(rubric=rb or self.rubric, prompt=p, response=r)
            for p, r, rb in zip(prompts, responses, rubrics, strict=True)
        ]
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        # log p(rating | judge prompt) for each of the five rating tokens: five one-token completions per text
        prompts_x5 = [x for x in ids for _ in RATINGS]
        comps = [[rid] for _ in ids for rid in self.rating_ids]
        logp = self.judge.logprobs(prompts_x5, comps)[:, 0].reshape(len(ids), len(RATINGS))
        probs = torch.softmax(logp, dim=-1)  # renormalised over the five ratings
        expected = (probs * torch.arange(1, 6, dtype=probs.dtype, device=probs.device)).sum(-1)
        return ((expected - 1.0) / 4.0).tolist()

    def score(
        self, tasks: Sequence[Task], rollouts: Sequence[Sequence[Rollout]], scorer: ScoringModel | None = None
    ) -> list[list[Reward]]:
        flat = [
            (t, self.tok.decode(r.completion_ids, skip_special_tokens=True))
            for t, g in zip(tasks, rollouts, strict=True)
            for r in g
        ]
        scores = iter(
            self.ratings(
                [t.meta["prompt"] for t, _ in flat], [x for _, x in flat], [t.meta["rubric"] for t, _ in flat]
            )
        )
        texts = iter(flat)
        out = []
        for group in rollouts:
            rewards = []
            for _ in group:
                (task, text), judged = next(texts), next(scores)
                comps = {
                    "judge": float(judged),
                    "repetition": -(1.0 - distinct_2(text.split())),
                    "length": 0.0 if text.strip() else -1.0,
                    "form": form_penalty(text, task.meta["prompt"], task.meta["rubric"] or self.rubric),
                }
                rewards.append(Reward(self.total(comps), comps, text[:200], parsed=bool(text.strip())))
            out.append(rewards)
        return out

    def state_dict(self) -> dict | None:
        return None  # the judge is frozen: rebuilt from its source on resume

    def task_source(self, cfg) -> RecordTasks:
        """The prompts of `env.options.path`."""
        return file_tasks(self, cfg.rl.seed, "prompts")
