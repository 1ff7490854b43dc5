"""`TorchSampler`: batched, KV-cached sampling in plain PyTorch over a Hugging Face causal LM.

Each chunk of sequences is prefilled once with LEFT padding (so every sequence's last prompt token sits in the
final column and the next token is decoded in lock-step), then decoded one token per step from a `DynamicCache`.
Explicit position ids make each sequence see exactly the positions it would see unpadded, which is what lets the
trainer recompute the recorded log-probs with an ordinary unpadded forward.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import DynamicCache

from nextrl.accounting.flops import TokenWork
from nextrl.engine.base import EngineCapabilities, PolicyWeights, Rollout, SamplingParams
from nextrl.engine.core import (
    SequenceState,
    autocast_to,
    check_call,
    decode_step,
    device_of,
    new_states,
    to_rollouts,
)


class TorchSampler:
    """In-process `RolloutEngine` over a Hugging Face causal LM (shares the module with the trainer).

    Randomness comes from the sampler's own `torch.Generator`, created on the model's device at the first call
    and seeded from `seed` (a fresh sampler with the same seed, model and inputs reproduces its rollouts; later
    calls continue the stream). Without a seed it is seeded non-deterministically. Sampling results depend on
    `batch_size` (how sequences are grouped), greedy results do not.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int,
        batch_size: int = 64,
        autocast_dtype: torch.dtype | None = None,
        seed: int | None = None,
    ):
        self.model = model
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.seed = seed
        self.policy_version = 0
        self._gen: torch.Generator | None = None
        # tokens processed by the last `generate` call, for FLOP accounting
        self.last_work: dict[str, TokenWork] = {"prefill": TokenWork(), "decode": TokenWork()}
        self.last_seconds: dict[str, float] = {"prefill": 0.0, "decode": 0.0}

    capabilities = EngineCapabilities(entropies=True, work=True, state=True, lead=True, score=True)

    def sync_weights(self, weights: PolicyWeights) -> None:
        # the module is shared with the in-process learner, which updates it in place: nothing to copy
        self.policy_version = weights.version

    def state_dict(self) -> dict:
        """The sampling RNG stream, saved in checkpoints so that a resumed run samples what it would have."""
        return {
            "rng": self._gen.get_state() if self._gen is not None else None,
            "version": self.policy_version,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy_version = state.get("version", self.policy_version)
        if state.get("rng") is not None:
            self._generator(device_of(self.model)).set_state(state["rng"])

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            if self.seed is None:
                self._gen.seed()
            else:
                self._gen.manual_seed(self.seed)
        return self._gen

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Rollout]]:
        check_call(prompts, params)
        groups = [new_states(p, params, i) for i, p in enumerate(prompts)]
        seqs = [s for group in groups for s in group]
        with self._inference():
            for i in range(0, len(seqs), self.batch_size):
                self._run_chunk(seqs[i : i + self.batch_size], params)
        return to_rollouts(groups, params, self.policy_version)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """One `generate` call's model use: its work counters reset, the model in eval mode without gradients
        (then back in the mode it was in, also when sampling fails)."""
        self.last_work = {"prefill": TokenWork(), "decode": TokenWork()}
        self.last_seconds = {"prefill": 0.0, "decode": 0.0}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _run_chunk(self, seqs: list[SequenceState], params: SamplingParams) -> None:
        t = time.perf_counter()
        state = self._prefill_chunk(seqs)
        t1 = time.perf_counter()
        self._decode_chunk(seqs, params, state)
        self.last_seconds["prefill"] += t1 - t
        self.last_seconds["decode"] += time.perf_counter() - t1

    def _prefill_chunk(self, seqs: list[SequenceState]):
        """The prompts through the model at once (left-padded): the cache and the first logits."""
        model, device = self.model, device_of(self.model)
        width = max(len(s.prompt) for s in seqs)
        ids = torch.tensor(
            [[self.pad_token_id] * (width - len(s.prompt)) + s.prompt for s in seqs], device=device
        )
        attn = torch.tensor(
            [[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs], device=device
        )
        pos = (attn.cumsum(-1) - 1).clamp(min=0)  # pads get 0; real tokens 0..len-1 as if unpadded
        for s in seqs:
            self.last_work["prefill"].add_sequence(len(s.prompt), logits=1)
        cache = DynamicCache()
        with autocast_to(device, self.autocast_dtype):
            logits = model(
                input_ids=ids,
                attention_mask=attn,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,  # only the last prompt token is sampled from
            ).logits[:, -1]
        next_pos = attn.sum(-1)  # position of each sequence's next token
        return cache, attn, next_pos, logits

    def _decode_chunk(self, seqs: list[SequenceState], params: SamplingParams, state) -> None:
        model, device = self.model, device_of(self.model)
        gen = self._generator(device)
        cache, attn, next_pos, logits = state
        live = list(range(len(seqs)))  # indices into seqs of the rows still in the batch
        while True:
            # drop finished rows (from the cache too) so they stop costing compute
            keep = [row for row, i in enumerate(live) if seqs[i].finish is None]
            if not keep:
                return
            if len(keep) < len(live):
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                attn, next_pos, logits = attn[sel], next_pos[sel], logits[sel]
                live = [live[row] for row in keep]
            decode_step([seqs[i] for i in live], logits, params, gen, device)
            if all(seqs[i].finish is not None for i in live):
                return
            # feed every live row's new token (sampled or forced; finished rows are dropped next round)
            attn = torch.cat([attn, attn.new_ones(len(live), 1)], dim=-1)
            self.last_work["decode"].add(len(live), int(next_pos.sum()) + len(live), logits=len(live))
            with autocast_to(device, self.autocast_dtype):
                logits = model(
                    input_ids=torch.tensor([seqs[i].ids[-1] for i in live], device=device)[:, None],
                    attention_mask=attn,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                    use_cache=True,
                ).logits[:, -1]
            next_pos = next_pos + 1
