"""TRL's `GRPOTrainer` on nextrl's next-token workload, timed per optimizer step.

`bench/rl_step.py` calls `run_trl_grpo` next to nextrl's own trainer in one process, on the same model, tasks
and reward, to compare samples per second. What is measured is the wall clock of whole optimizer steps
(generation, reward, the GRPO loss forward/backward and the AdamW step), as TRL runs them with its best settings
for a single CPU process; TRL's own logging, saving and completion tables are switched off because they are not
the algorithm.

Differences that remain (recorded in the returned `settings`):
- TRL samples the thought and the answer as one completion of `thought + 1 + answer` tokens and cannot force
  `</think>` when the thought budget runs out; a completion without `</think>` scores as a missing answer, and
  after an early `</think>` TRL keeps sampling (and training on) tokens past the answer, which are not scored.
- On CPU (no Triton) TRL's fused log-prob head projects every prompt and completion position through the LM
  head, not only the completion tokens, and always computes the entropy: that is TRL's cost as shipped.
- TRL tokenizes prompt text itself; when decoding a task's ids does not tokenize back to the same ids, the
  tokenizer given to TRL looks the exact ids up, so both frameworks see prompts of equal length.
"""

from __future__ import annotations

import copy
import random
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase, PrinterCallback, TrainerCallback

from nextrl.engine.base import Rollout
from nextrl.env.base import Task
from nextrl.env.next_token import NextTokenEnv
from nextrl.model.tokenizer import THINK_CLOSE


class _StepTimer(TrainerCallback):
    """Wall clock of each optimizer step: on_step_begin comes before TRL generates, on_step_end after the
    optimizer step, so a step's time holds generation, reward, loss, backward and update."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._t0)


def _decode_prompts(
    tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task]
) -> tuple[list[str], dict[str, list[int]], dict[str, Any]]:
    """Prompt texts for TRL, the exact ids of those that do not tokenize back, and round-trip statistics."""
    texts = [
        tokenizer.decode(t.prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for t in tasks
    ]
    # The same call TRL makes for non-conversational prompts (special tokens added as the tokenizer decides).
    encoded = tokenizer(text=texts)["input_ids"]
    exact: dict[str, list[int]] = {}
    diffs: list[int] = []
    for text, task, ids in zip(texts, tasks, encoded, strict=True):
        if list(ids) != list(task.prompt_ids):
            if text in exact and exact[text] != list(task.prompt_ids):
                raise ValueError("two tasks decode to the same prompt text with different ids")
            exact[text] = list(task.prompt_ids)
            diffs.append(len(ids) - len(task.prompt_ids))
    stats = {
        "prompts": len(tasks),
        "not_round_tripping": len(diffs),
        "max_abs_length_diff": max((abs(d) for d in diffs), default=0),
        "mean_length_diff": statistics.fmean(diffs) if diffs else 0.0,
        "mean_prompt_tokens": statistics.fmean(len(t.prompt_ids) for t in tasks),
    }
    return texts, exact, stats


def _exact_prompt_tokenizer(
    tokenizer: PreTrainedTokenizerBase, exact: dict[str, list[int]]
) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` whose batch call returns the task's own ids for prompt texts that do not round-trip.

    TRL only accepts prompt text and tokenizes it with `processing_class(text=prompts)`; re-tokenizing a decoded
    slice of a document can merge or split tokens at the slice start, which would change the prompt length and
    so the work. Looking the ids up costs nothing measurable and keeps the workload identical."""
    base = type(tokenizer)

    def __call__(self, text=None, *args, **kwargs):
        out = base.__call__(self, text, *args, **kwargs)
        # Only TRL's exact call (a list of texts, no options) is redirected; anything else is left untouched.
        if isinstance(text, list) and not args and not kwargs and any(t in exact for t in text):
            ids = [exact.get(t, list(i)) for t, i in zip(text, out["input_ids"], strict=True)]
            out = BatchEncoding({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
        return out

    tok = copy.deepcopy(tokenizer)
    tok.__class__ = type(f"ExactPrompt{base.__name__}", (base,), {"__call__": __call__})
    return tok


def _reward_fn(env: NextTokenEnv, tasks: Sequence[Task], think_close: int):
    """TRL reward function giving nextrl's next-token reward: the completion becomes the Rollout nextrl would have
    made (a thought up to and including the first `</think>`, then `answer_tokens` answer tokens) and is scored
    by `env.score`."""
    thought, answer = env.cfg.thought_tokens, env.cfg.answer_tokens

    def next_token_reward(
        prompts: list, completions: list, completion_ids: list[list[int]], task_index: list[int], **kwargs
    ) -> list[float]:
        rewards = []
        for ids, i in zip(completion_ids, task_index, strict=True):
            task = tasks[int(i)]
            ids = [int(t) for t in ids]
            k = ids.index(think_close) + 1 if think_close in ids else len(ids)
            if k > thought + 1:
                # A thought over budget cannot occur in nextrl (it forces `</think>`): no answer.
                k = len(ids)
            # TRL keeps sampling after the answer (it has no phase end); nextrl's answer is the next
            # `answer_tokens` tokens, so what follows is not part of the prediction.
            ids = ids[: k + answer]
            n = len(ids)
            rollout = Rollout(
                prompt_ids=list(task.prompt_ids),
                completion_ids=ids,
                logprobs=[0.0] * n,
                action_mask=[1] * n,
                finish_reason="length",
                phase_starts=[0, k],
            )
            rewards.append(float(env.score([task], [[rollout]])[0][0].total))
        return rewards

    next_token_reward.__name__ = "next_token_reward"  # TRL logs rewards under the function's name
    return next_token_reward


def _bf16_works_on_cpu() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = torch.ones(4, 4) @ torch.ones(4, 4)
        return x.dtype == torch.bfloat16
    except RuntimeError:
        return False


def run_trl_grpo(
    model,
    tokenizer,
    tasks,
    env,
    *,
    group_size: int,
    steps: int,
    positions_per_step: int,
    temperature: float,
    lr: float,
    bf16: bool,
    out_dir: str | Path,
    warmup_steps: int = 1,
) -> dict:
    """Run `warmup_steps + steps` GRPO optimizer steps of TRL on `tasks` (each step = positions_per_step
    prompts x group_size samples) and return {"step_seconds": [per timed step], "samples_per_second": float,
    "seconds_per_step": float, "samples_per_step": int, "trl_version": str, "settings": {...the TRL config used}}."""
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if steps < 1 or warmup_steps < 0:
        raise ValueError("steps must be at least 1 and warmup_steps at least 0")
    if len(tasks) < positions_per_step:
        raise ValueError(f"{len(tasks)} tasks cannot fill a step of {positions_per_step} positions")
    if env.cfg.format != "structured":
        raise ValueError("run_trl_grpo supports the structured format (prompt = context + <think>)")
    total_steps = warmup_steps + steps
    samples_per_step = positions_per_step * group_size
    thought, answer = env.cfg.thought_tokens, env.cfg.answer_tokens
    max_completion_length = thought + 1 + answer if thought > 0 else answer

    texts, exact, roundtrip = _decode_prompts(tokenizer, tasks)
    trl_tok = _exact_prompt_tokenizer(tokenizer, exact) if exact else copy.deepcopy(tokenizer)
    # Without a chat template TRL tokenizes the plain text; a template would add role markers to every prompt.
    if getattr(trl_tok, "chat_template", None):
        trl_tok.chat_template = None
    dataset = Dataset.from_dict({"prompt": texts, "task_index": list(range(len(tasks)))})

    bf16_used = bool(bf16) and _bf16_works_on_cpu()
    config: dict[str, Any] = {
        # the algorithm, matched to nextrl's GRPO: no reference model/KL, DAPO token-level loss, clip-higher
        "beta": 0.0,
        "loss_type": "dapo",
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "scale_rewards": "group",
        "num_iterations": 1,
        "num_generations": group_size,
        "mask_truncated_completions": False,
        # one optimizer step = positions_per_step prompts x group_size samples, generated and trained as one batch
        "per_device_train_batch_size": samples_per_step,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
        "max_steps": total_steps,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        # sampling
        "max_completion_length": max_completion_length,
        "temperature": temperature,
        "top_p": 1.0,
        "top_k": 0,
        "use_vllm": False,
        "use_transformers_continuous_batching": False,
        # in order, so that step s uses tasks[s*P:(s+1)*P] like a caller feeding nextrl the same list
        "shuffle_dataset": False,
        # hardware: CPU, bf16 autocast (fp32 masters) when asked and supported
        "use_cpu": True,
        "bf16": bf16_used,
        "fp16": False,
        # the deprecated alias `gradient_checkpointing` (TRL's default: True) follows this field
        "activation_checkpointing": False,
        "torch_compile": False,
        "dataloader_num_workers": 0,
        # bookkeeping that is not the algorithm
        "report_to": "none",
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "log_completions": False,
        "disable_tqdm": True,
        "seed": 0,
    }
    timer = _StepTimer()
    bf16_note = (
        "accelerate bf16 autocast on CPU (generation and loss), fp32 master weights" if bf16_used else "fp32"
    )
    if bf16 and not bf16_used:
        bf16_note = "bf16 asked for but torch CPU autocast has no bf16 here: fp32"
    policy = copy.deepcopy(model)  # TRL trains (and retags) the model in place; the caller's stays untouched
    # The Trainer seeds the global RNGs (set_seed); restore them so that a run compared next in the same process
    # starts from the state it would have had without this one.
    rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    try:
        with warnings.catch_warnings():
            # transformers 5 renamed gradient_checkpointing; TRL still reads the old name (a FutureWarning a call)
            warnings.filterwarnings(
                "ignore", message=".*deprecated and will be removed in v6", category=FutureWarning
            )
            try:
                args = GRPOConfig(output_dir=str(out_dir), **config)
            except ValueError as e:
                if not config["bf16"] or "bf16" not in str(e).lower():
                    raise
                # Some transformers/accelerate versions refuse bf16 without a GPU: measure fp32 and say so.
                config["bf16"] = False
                bf16_note = f"bf16 refused by TRL/transformers on CPU ({e}): fp32"
                args = GRPOConfig(output_dir=str(out_dir), **config)
            trainer = GRPOTrainer(
                model=policy,
                reward_funcs=_reward_fn(env, tasks, trl_tok.convert_tokens_to_ids(THINK_CLOSE)),
                args=args,
                train_dataset=dataset,
                processing_class=trl_tok,
                callbacks=[timer],
            )
            # With tqdm off, transformers prints the end-of-training metrics; the caller prints its own summary.
            trainer.remove_callback(PrinterCallback)
            trainer.train()
    finally:
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.random.set_rng_state(rng[2])
    if len(timer.seconds) != total_steps:
        raise RuntimeError(f"TRL ran {len(timer.seconds)} optimizer steps, expected {total_steps}")

    timed = timer.seconds[warmup_steps:]
    mean = statistics.fmean(timed)
    settings = {
        **config,
        "optim": str(getattr(args.optim, "value", args.optim)),
        "adam_betas": (args.adam_beta1, args.adam_beta2),
        "bf16_requested": bool(bf16),
        "bf16_note": bf16_note,
        "max_prompt_length": "none (this TRL version has no prompt truncation)",
        "prompt_tokenization": (
            "decoded text tokenized by TRL round-trips exactly"
            if not exact
            else "exact task ids looked up for prompts whose decoded text does not round-trip"
        ),
        "prompt_roundtrip": roundtrip,
        "think_close": "not forced: one completion of thought_tokens + 1 + answer_tokens sampled tokens, "
        "stopped only by eos; no </think> (or one past the budget) means a missing answer; tokens after the "
        "answer are still sampled and trained on but not scored",
        "lm_head": "TRL's fused chunked log-prob head (always on in GRPOTrainer); without Triton (CPU) it "
        "scores every prompt and completion position, not only completion tokens, and always computes entropy",
        "stop_tokens": [int(t) for t in trainer.eos_token_ids],
        "chat_template": None,
        "torch_threads": torch.get_num_threads(),
        "tasks": len(tasks),
        "untimed_warmup_steps": warmup_steps,
    }
    return {
        "step_seconds": timed,
        "samples_per_second": samples_per_step / mean,
        "seconds_per_step": mean,
        "samples_per_step": samples_per_step,
        "trl_version": trl.__version__,
        "settings": settings,
    }


if __name__ == "__main__":
    import json
    import sysconfig
    import tempfile

    from nextrl.config import load_config
    from nextrl.model.build import build_llama, count_params
    from nextrl.model.tokenizer import train_bpe_tokenizer

    # Smoke run: a random Llama of the tiny preset's size, a BPE trained on a few stdlib files, 128-token contexts.
    cfg = load_config("tiny", ["env.thought_tokens=16"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:40]
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    tok = train_bpe_tokenizer(texts, cfg.tokenizer.vocab_size)
    model = build_llama(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id, seed=0)
    env = NextTokenEnv(cfg.env, tok)
    ppos, group, smoke_steps, warm = 4, 8, 2, 1
    tasks = []
    for d, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        # A position that is a multiple of 64 past 128 gets exactly 128 context tokens, also where prompts start
        # on multiples of context // 2 (nextrl.positions.context.context_start).
        position = 128 + 64 * (d % 4)
        if len(ids) > position + cfg.env.target_tokens:
            tasks.append(env.make_task(files[d].name, ids, position, 128))
        if len(tasks) == ppos * (smoke_steps + warm):
            break
    with tempfile.TemporaryDirectory() as tmp:
        result = run_trl_grpo(
            model,
            tok,
            tasks,
            env,
            group_size=group,
            steps=smoke_steps,
            positions_per_step=ppos,
            temperature=1.0,
            lr=1e-4,
            bf16=True,
            out_dir=tmp,
            warmup_steps=warm,
        )
    print(f"model params: {count_params(model) / 1e6:.2f}M, torch threads: {torch.get_num_threads()}")
    print(json.dumps(result, indent=1, default=str))
