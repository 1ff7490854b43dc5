"""The learner half of an RL step: advantages → loss → update.

It consumes a batch of `ScoredGroup`s: group-relative advantages (or RLP's), drops groups without signal,
keeps the loss on the tokens it should train, and takes `rl.updates_per_batch` optimizer steps of the clipped
policy gradient (`nextrl.algo.grpo_loss`), plus `rl.lm_coef` × a plain next-token loss on the text the tasks
read. Micro-batches are weighted so that their sum is exactly the loss of the whole batch.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nextrl.algo.advantages import group_advantages, rlp_advantages, uniform_groups
from nextrl.algo.grpo import PolicyBatch, grpo_loss
from nextrl.config import RunConfig
from nextrl.engine.base import PolicyWeights, Rollout
from nextrl.env.base import Environment
from nextrl.model.fsdp import idle_pass, is_sharded, padded_share, shard_policy, stream_full_weights
from nextrl.model.lm import lm_loss
from nextrl.model.optim import build_optimizer, build_scheduler, clip_grad
from nextrl.sharing.logprobs import completion_logprobs, tree_logprobs_and_nll
from nextrl.sharing.prefix_tree import group_by_prefix
from nextrl.trainer.producer import ScoredGroup
from nextrl.trainer.self_selection import loss_token_masks
from nextrl.trainer.step_account import StepAccount


def plan_micro_batches(
    prompts: list[list[int]],
    size: int,
    share_prefix: bool,
    max_nodes: int,
    counted: int | None = None,
    completion_lengths: Sequence[int] = (),
    max_tokens: int = 0,
) -> list[list[int]]:
    """Indices of each micro-batch, about `size` sequences each. With prefix sharing, sequences whose prompts
    share a prefix stay in one micro-batch so that the prefix is encoded once (a group larger than `size` gets
    a micro-batch of its own, unless `max_tokens` splits it); without, consecutive slices. Only the first
    `counted` sequences (default all) count toward `size`: the others ride along with the sequences they share
    a prefix with. `max_tokens` (with the counted sequences' `completion_lengths`) bounds a micro-batch's
    tokens, its longest prompt once plus its completions, by splitting groups above it."""
    if not share_prefix:
        return [list(range(s, min(s + size, len(prompts)))) for s in range(0, len(prompts), size)]
    counted = len(prompts) if counted is None else counted
    chunks: list[list[int]] = []
    filled = 0
    for g in group_by_prefix(prompts, max_nodes):
        n = sum(i < counted for i in g)
        if chunks and filled + n <= size:
            chunks[-1] += g
            filled += n
        else:
            chunks.append(list(g))
            filled = n
    if not max_tokens:
        return chunks
    return [p for c in chunks for p in _split_by_tokens(c, prompts, counted, completion_lengths, max_tokens)]


def _split_by_tokens(
    chunk: list[int], prompts: list[list[int]], counted: int, lengths: Sequence[int], max_tokens: int
) -> list[list[int]]:
    """`chunk` in pieces of at most `max_tokens` (the longest prompt of a piece once, plus its completions; a
    sequence alone above the bound is a piece of its own); the sequences that ride along (index >= `counted`)
    go with the first piece."""
    pieces: list[list[int]] = [[]]
    longest = completed = 0  # the current piece's longest prompt and its completions' tokens
    for i in (i for i in chunk if i < counted):
        if pieces[-1] and max(longest, len(prompts[i])) + completed + lengths[i] > max_tokens:
            pieces.append([])
            longest = completed = 0
        pieces[-1].append(i)
        longest, completed = max(longest, len(prompts[i])), completed + lengths[i]
    pieces[0] += [i for i in chunk if i >= counted]
    return [p for p in pieces if p]


def loss_weight(loss_norm: str, chunk: list[Rollout], batch: list[Rollout]) -> float:
    """A micro-batch's share of the batch loss's normaliser, so that Σ weight × chunk loss = batch loss:
    loss tokens for `dapo`; for `grpo` and `dr_grpo` (means over sequences), the sequences that have any loss
    token (a sequence without one is left out of the mean, so it must not count in the weight either)."""
    if loss_norm == "dapo":
        return sum(sum(r.action_mask) for r in chunk) / max(sum(sum(r.action_mask) for r in batch), 1)
    if loss_norm == "grpo":
        return sum(any(r.action_mask) for r in chunk) / max(sum(any(r.action_mask) for r in batch), 1)
    return len(chunk) / len(batch)


@dataclass
class LMTargets:
    """The next-token term's sequences (the text the positions read, then the empty-thought sequences), the
    index of each one's first target, and each sequence's weight in the mean of its term (`kind` 0: `lm_loss`,
    1: `lm_loss_empty_thought`)."""

    seqs: list[list[int]]
    starts: list[int]
    weight: torch.Tensor
    kind: torch.Tensor
    names: tuple[str, ...]  # the metrics of the terms present


@dataclass
class LearnResult:
    metrics: dict[str, float]
    batch_rewards: torch.Tensor  # [groups, G]: the rewards of the batch
    kept: int  # groups trained on (with a reward spread, or all without rl.drop_uniform_groups)


class LearnerPeers(Protocol):
    """The data-parallel ranks of a learner group, as one rank sees them (`nextrl.distributed.learner_group`).
    Every rank runs the same `update` on the same batch and trains its share of the micro-batches (`rank`
    of every `world`); the gradients are summed across ranks before each optimizer step, so every rank takes
    the same step and the sum is the whole batch's gradient."""

    rank: int
    world: int

    def start(self, *update_args: Any) -> Callable[[], None]:
        """Start the same update on the other ranks (rank 0 only); returns a wait for them."""
        ...

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None: ...

    def reduce_metrics(self, totals: dict[str, float]) -> dict[str, float]: ...

    def load_from(self, learner: Learner) -> None:
        """Rank 0: copy its weights, optimizer and scheduler to the other ranks (after a resume)."""
        ...

    def close(self) -> None: ...


class Learner:
    peers: LearnerPeers | None = None  # the other data-parallel ranks, if any (set by a learner group)
    # placement.shard=fsdp: the policy handed in, kept whole as the rollout side's copy (rank 0; `shard`)
    rollout_policy: torch.nn.Module | None = None

    def __init__(
        self,
        cfg: RunConfig,
        policy: torch.nn.Module,
        pad_token_id: int,
        env: Environment,
        device: torch.device,
        autocast: torch.dtype | None,
        max_new_tokens: int,
        peers: LearnerPeers | None = None,
    ):
        self.cfg, self.rl, self.max_new_tokens = cfg, cfg.rl, max_new_tokens
        self.peers = peers
        self.policy, self.pad_token_id, self.env = policy, pad_token_id, env
        self.device, self.autocast = device, autocast
        self.optimizer = build_optimizer(policy, self.rl.lr, self.rl.weight_decay)
        self.scheduler = build_scheduler(
            self.optimizer, self.rl.warmup_steps, max(self.rl.steps, 1), self.rl.schedule
        )
        verifier_free = env.verifier_free
        self.advantage_kind = (
            ("rlp" if verifier_free else "group") if self.rl.advantages == "auto" else self.rl.advantages
        )
        self.thought_only = (
            verifier_free if self.rl.loss_tokens == "auto" else self.rl.loss_tokens == "thought"
        )
        self.reference = None
        if self.rl.kl_coef > 0:
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.account = StepAccount()  # replaced by `learn` with the step's own
        self.last_trained: list[Rollout] = []  # the batch the last update trained on, masks as trained

    @property
    def sharded(self) -> bool:
        return is_sharded(self.policy)

    def shard(self, autocast: torch.dtype | None, keep_whole: bool) -> None:
        """placement.shard=fsdp, once the process group is up: train an FSDP2-sharded policy, and rebuild the
        optimizer and schedule over its shards. With `keep_whole` (rank 0, in the driver) the policy handed in
        stays whole as the rollout side's copy (the engine, the scorer and the Hugging Face export read it) and
        a copy is sharded; otherwise the policy itself is sharded."""
        whole = self.policy
        self.policy = shard_policy(copy.deepcopy(whole) if keep_whole else whole, autocast)
        self.rollout_policy = whole if keep_whole else None
        self.optimizer = build_optimizer(self.policy, self.rl.lr, self.rl.weight_decay)
        self.scheduler = build_scheduler(
            self.optimizer, self.rl.warmup_steps, max(self.rl.steps, 1), self.rl.schedule
        )

    def weights(self, version: int) -> PolicyWeights:
        """The weights engines generate with from `version` on (sharded: the rollout side's whole copy, which
        `gather_whole` keeps up to date)."""
        return PolicyWeights(version, (self.rollout_policy or self.policy).state_dict)

    def gather_whole(self) -> float:
        """Sharded: gather the shards, one parameter at a time, into the rollout side's whole copy (rank 0;
        the other ranks take part in the collectives). Returns the seconds, also logged as `weight_gather`."""
        seconds = stream_full_weights(self.policy, self.rollout_policy)
        self.account.add_seconds("weight_gather", seconds)
        return seconds

    def learn(self, groups: list[ScoredGroup], account: StepAccount) -> LearnResult:
        """Advantages within each group (groups with equal rewards carry no signal), then the update."""
        self.account = account
        R = torch.tensor([g.totals for g in groups], dtype=torch.float32).reshape(len(groups), -1)
        adv = (
            rlp_advantages(R)
            if self.advantage_kind == "rlp"
            else group_advantages(R, scale=self.rl.scale_rewards)
        )
        keep = (
            ~uniform_groups(R) if self.rl.drop_uniform_groups else torch.ones(len(groups), dtype=torch.bool)
        )
        kept = [(i, j) for i in range(len(groups)) if keep[i] for j in range(len(groups[i].rollouts))]
        batch = loss_token_masks(
            [groups[i].rollouts[j] for i, j in kept], self.thought_only, self.rl.entropy_mask_rho
        )
        lm_seqs, lm_empty = [], None
        if self.rl.lm_coef > 0:
            tasks = [g.task for g in groups]
            lm_seqs = self.env.lm_sequences(tasks)
            empty_seqs, empty_starts = self.env.empty_thought_targets(tasks)
            lm_empty = (empty_seqs, empty_starts) if empty_seqs else None
        metrics = self.update(batch, [float(adv[i, j]) for i, j in kept], lm_seqs, lm_empty)
        return LearnResult(metrics, R, int(keep.sum()))

    def update(
        self,
        rollouts: list[Rollout],
        advantages: list[float],
        lm_seqs: list[list[int]] | None = None,
        lm_empty: tuple[list[list[int]], list[int]] | None = None,
    ) -> dict[str, float]:
        """`updates_per_batch` optimizer steps over the batch, in micro-batches whose losses are weighted so that
        the sum is exactly the loss of the whole batch under the chosen normalisation; plus, with `rl.lm_coef`,
        the next-token loss on the step's contexts (`lm_seqs`) and on the true next token after an empty
        thought at each position (`lm_empty`: sequences and the index of their one target), each a mean."""
        lm_seqs = lm_seqs or []
        self.last_trained = rollouts
        wait = self.peers.start(rollouts, advantages, lm_seqs, lm_empty) if self.peers else None
        if not rollouts and not lm_seqs and not lm_empty:  # nothing to train: the schedule still advances
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of")
                self.scheduler.step()
            if wait:
                wait()
            return {}
        totals: dict[str, float] = {}
        # With prefix sharing the next-token term rides in the loss's own forward: its sequences nest in the
        # prompt trees the rollouts already encode (`tree_logprobs_and_nll`). Without, it is a pass of its own.
        joint = self.cfg.sharing.enabled
        lm = self.lm_targets(lm_seqs, lm_empty) if joint else None
        chunks = self.rank_chunks(rollouts, lm)
        n_up = self.rl.updates_per_batch
        grad_norm = 0.0
        for _ in range(n_up):
            self.optimizer.zero_grad(set_to_none=True)
            for k, v in self.backward_chunks(rollouts, advantages, chunks, lm).items():
                totals[k] = totals.get(k, 0.0) + v / n_up
            t1 = time.time()
            if not joint:
                for k, v in self.lm_terms(lm_seqs, lm_empty).items():
                    totals[k] = totals.get(k, 0.0) + v / n_up
                self.account.add_seconds("lm", time.time() - t1)
                t1 = time.time()
            # the whole batch's gradient on every rank, before anything reads it (sharded: summed in backward)
            if self.peers and not self.sharded:
                self.peers.reduce_grads([p for p in self.policy.parameters() if p.requires_grad])
                t2 = time.time()
                self.account.add_seconds("gradient_sync", t2 - t1)
                t1 = t2
            grad_norm += clip_grad(self.policy.parameters(), self.rl.grad_clip) / n_up
            self.optimizer.step()
            if self.sharded:  # the whole copy follows every step: the environment reads it next (an EMA)
                t1 += self.gather_whole()
            self.env.after_update()  # e.g. RLP's EMA baseline follows every optimizer step
            self.account.add_seconds("optimizer", time.time() - t1)
        self.scheduler.step()
        if self.peers:  # each rank summed its share of every metric
            totals = self.peers.reduce_metrics(totals)
        if wait:
            wait()
        return {**totals, "grad_norm": grad_norm}

    def rank_chunks(
        self, rollouts: list[Rollout], lm: LMTargets | None
    ) -> list[tuple[list[int], list[int]] | None]:
        """This rank's share of the batch's micro-batches (`plan_chunks`); sharded, padded with None (an idle
        pass) to as many as any rank has, as every pass is a collective."""
        return self.my_share(self.plan_chunks(rollouts, lm.seqs if lm else []))

    def my_share(self, items: list) -> list:
        """This rank's share of `items` (every world-th); sharded, padded with None (an idle pass) to as many as
        any rank has, as every pass is a collective."""
        rank, world = (self.peers.rank, self.peers.world) if self.peers else (0, 1)
        return padded_share(items, rank, world) if self.sharded else items[rank::world]

    def backward_chunks(
        self,
        rollouts: list[Rollout],
        advantages: list[float],
        chunks: list[tuple[list[int], list[int]] | None],
        lm: LMTargets | None = None,
    ) -> dict[str, float]:
        """Forward and backward of the micro-batches `chunks` (`rank_chunks`): Σ weight × policy-gradient loss,
        plus with `lm` `rl.lm_coef` × the next-token term's means from the same forwards. Returns the metrics
        (this rank's share of the batch's)."""
        totals: dict[str, float] = {}
        lm_sums = torch.zeros(2)
        for entry in chunks:
            if entry is None:  # sharded: another rank's extra micro-batch (`rank_chunks`)
                idle_pass(self.policy, self.pad_token_id)
                continue
            idx, lm_idx = entry
            chunk, chunk_adv = [rollouts[i] for i in idx], [advantages[i] for i in idx]
            t = time.time()
            lm_part = ([lm.seqs[i] for i in lm_idx], [lm.starts[i] for i in lm_idx]) if lm else ([], [])
            loss, metrics, nll = self.chunk_loss(chunk, chunk_adv, *lm_part)
            total = torch.zeros((), device=self.device)
            if loss is not None:
                weight = loss_weight(self.rl.loss_norm, chunk, rollouts)
                total = total + loss * weight
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v * weight
            if lm is not None and lm_idx:
                weighted = nll * lm.weight[lm_idx].to(nll.device)
                total = total + self.rl.lm_coef * weighted.sum()
                lm_sums.index_add_(0, lm.kind[lm_idx], weighted.detach().cpu())
            t1 = time.time()
            total.backward()
            # a micro-batch of next-token sequences alone is the lm pass
            forward, backward = ("loss_forward", "loss_backward") if chunk else ("lm", "lm")
            self.account.add_seconds(forward, t1 - t)
            self.account.add_seconds(backward, time.time() - t1)
        if lm is not None:
            for k, name in enumerate(("lm_loss", "lm_loss_empty_thought")):
                if name in lm.names:
                    totals[name] = float(lm_sums[k])
        return totals

    def lm_targets(
        self, lm_seqs: list[list[int]], lm_empty: tuple[list[list[int]], list[int]] | None
    ) -> LMTargets | None:
        """The next-token term's sequences, each weighted by 1 / the predicted tokens of its term (None: no
        term). Both terms are means: the text read over its tokens, the empty-thought targets over theirs."""
        if not lm_seqs and not lm_empty:
            return None
        empty_seqs, empty_starts = lm_empty or ([], [])
        seqs, starts = lm_seqs + empty_seqs, [0] * len(lm_seqs) + list(empty_starts)
        term = [0] * len(lm_seqs) + [1] * len(empty_seqs)
        n_pred = [0, 0]
        for q, a, k in zip(seqs, starts, term, strict=True):
            n_pred[k] += max(len(q) - 1 - a, 0)
        names = ("lm_loss",) * bool(lm_seqs) + ("lm_loss_empty_thought",) * bool(empty_seqs)
        weight = torch.tensor([1.0 / max(n_pred[k], 1) for k in term])
        return LMTargets(seqs, starts, weight, torch.tensor(term, dtype=torch.long), names)

    def lm_terms(
        self, lm_seqs: list[list[int]], lm_empty: tuple[list[list[int]], list[int]] | None
    ) -> dict[str, float]:
        """Backward of `rl.lm_coef` × (the mean next-token loss over `lm_seqs` + the mean loss of `lm_empty`'s
        targets) as a pass of its own; returns both means. With prefix sharing, all sequences go through their
        prefix trees together (they nest in the stripes' text: each shared token is encoded once); without,
        `lm_term` per term. (An update with rollouts trains the term inside the loss's forwards instead.)"""
        if not lm_seqs and not lm_empty:
            return {}
        if not self.cfg.sharing.enabled:
            out = {"lm_loss": self.lm_term(lm_seqs)} if lm_seqs else {}
            if lm_empty:
                out["lm_loss_empty_thought"] = self.lm_term(*lm_empty)
            return out
        lm = self.lm_targets(lm_seqs, lm_empty)
        return self.backward_chunks([], [], self.rank_chunks([], lm), lm)

    def lm_term(self, seqs: list[list[int]], starts: list[int] | None = None) -> float:
        """Backward of `rl.lm_coef` × the mean next-token loss over `seqs` (sequence i trained on its targets
        from index `starts[i]` on, default all), in micro-batches weighted by their share of the predicted
        tokens (exactly the whole batch's mean); returns that mean (nats/token)."""
        starts = starts or [0] * len(seqs)
        n_pred = sum(len(q) - 1 - a for q, a in zip(seqs, starts, strict=True))
        work = self.account.pass_work("lm")
        size, total = self.rl.micro_batch_size, 0.0
        self.policy.train()
        for s in self.my_share(list(range(0, len(seqs), size))):  # this rank's share of the micro-batches
            if s is None:  # sharded: another rank's extra micro-batch
                idle_pass(self.policy, self.pad_token_id)
                continue
            chunk, first = seqs[s : s + size], starts[s : s + size]
            width = max(len(q) for q in chunk)
            tokens = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width - 1), dtype=torch.bool)
            for r, (q, a) in enumerate(zip(chunk, first, strict=True)):
                tokens[r, : len(q)] = torch.tensor(q)
                mask[r, a : len(q) - 1] = True
                work.add_sequence(len(q) - 1, logits=len(q) - 1 - a)
            share = int(mask.sum()) / max(n_pred, 1)
            loss = lm_loss(self.policy, tokens.to(self.device), mask.to(self.device), self.autocast)
            (self.rl.lm_coef * share * loss).backward()
            total += float(loss.detach()) * share
        return total

    def plan_chunks(
        self, rollouts: list[Rollout], lm_seqs: list[list[int]] | None = None
    ) -> list[tuple[list[int], list[int]]]:
        """Micro-batches as (rollout indices, indices into `lm_seqs`): an lm sequence goes with the rollouts
        whose prompts share its prefix (prefix sharing only), and does not count toward the size."""
        prompts = [r.prompt_ids for r in rollouts]
        sharing, size = self.cfg.sharing, self.rl.micro_batch_size
        bound = dict(
            completion_lengths=[len(r.completion_ids) for r in rollouts],
            max_tokens=self.rl.micro_batch_tokens,
        )
        if not lm_seqs:
            planned = plan_micro_batches(prompts, size, sharing.enabled, sharing.max_tree_nodes, **bound)
            return [(c, []) for c in planned]
        n = len(prompts)
        inputs = prompts + [q[:-1] for q in lm_seqs]
        # lm sequences alone (no rollouts) count themselves, as a pass of their own would (and are not split)
        if not n:
            bound["max_tokens"] = 0
        joint = plan_micro_batches(inputs, size, True, sharing.max_tree_nodes, counted=n or None, **bound)
        return [([i for i in c if i < n], [i - n for i in c if i >= n]) for c in joint]

    def logprobs(
        self, model, prompts, comps, work, lm_seqs=(), lm_starts=()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of completions under `model` (the prefix-tree path or the plain reference path),
        and with prefix sharing the summed NLL of each of `lm_seqs`' targets from the same forward."""
        T, pad = self.cfg.sampling.temperature, self.pad_token_id
        if self.cfg.sharing.enabled:
            return tree_logprobs_and_nll(
                model,
                prompts,
                comps,
                T,
                pad,
                self.autocast,
                max_nodes=self.cfg.sharing.max_tree_nodes,
                work=work,
                lm_seqs=lm_seqs,
                lm_starts=lm_starts,
            )
        if lm_seqs:
            raise ValueError("the next-token term rides in the loss's forward only with prefix sharing")
        logp = completion_logprobs(model, prompts, comps, T, pad, self.autocast, work=work)
        return logp, logp.new_zeros(0)

    def chunk_loss(
        self,
        chunk: list[Rollout],
        advantages: list[float],
        lm_seqs: list[list[int]] | tuple = (),
        lm_starts: list[int] | tuple = (),
    ) -> tuple[torch.Tensor | None, dict[str, float], torch.Tensor]:
        """The micro-batch's policy-gradient loss and metrics (None and {} without rollouts), and the summed
        next-token NLL of each of `lm_seqs` from the same forward."""
        prompts = [r.prompt_ids for r in chunk]
        comps = [r.completion_ids for r in chunk]
        self.policy.train()
        work = self.account.pass_work("loss" if chunk else "lm")
        logp, nll = self.logprobs(self.policy, prompts, comps, work, lm_seqs, lm_starts)
        if not chunk:
            return None, {}, nll
        width = logp.shape[1]

        def padded(rows: list[list[float]]) -> torch.Tensor:
            return torch.tensor([row + [0.0] * (width - len(row)) for row in rows], device=logp.device)

        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = self.logprobs(self.reference, prompts, comps, self.account.pass_work("reference"))[0]
        batch = PolicyBatch(
            logprobs=logp,
            old_logprobs=padded([r.logprobs for r in chunk]),
            advantages=torch.tensor(advantages, device=logp.device),
            mask=padded([[float(m) for m in r.action_mask] for r in chunk]),
            ref_logprobs=ref,
            # asynchronous rollouts: the learner's weights before this (single) update are the proximal policy
            prox_logprobs=logp.detach() if self.rl.max_off_policy_steps else None,
        )
        loss, metrics = grpo_loss(
            batch,
            self.rl.loss_norm,
            self.rl.clip_eps_low,
            self.rl.clip_eps_high,
            kl_coef=self.rl.kl_coef,
            max_tokens=self.max_new_tokens,
            is_cap=self.rl.is_cap,
        )
        return loss, metrics, nll
