"""Prefix trees, the tree loss path and the prefix-sharing sampler against the plain paths (fp32, exact
within float rounding), and the work/FLOP counts that make the saving visible."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nextrl.accounting.flops import FlopModel, TokenWork
from nextrl.engine import Phase, PrefixSharingSampler, SamplingParams, TorchSampler
from nextrl.positions.cursor import PositionSampler
from nextrl.sharing.logprobs import completion_logprobs, tree_completion_logprobs
from nextrl.sharing.prefix_tree import build_tree, group_by_prefix
from nextrl.trainer.learner import plan_micro_batches
from tiny_models import tiny_gemma3, tiny_llama

V = 64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def workload(seed: int, docs: int, positions: int, G: int, max_len: int, tail: int = 1):
    """Positions of several documents, each prompt = document prefix + `tail` fixed tokens (like <think>),
    G completions each, of random lengths 1..max_len (early stops) and sometimes identical."""
    rng = random.Random(seed)
    prompts, comps = [], []
    for _ in range(docs):
        doc = [rng.randrange(1, V) for _ in range(80)]
        for p in sorted(rng.sample(range(2, 70), positions)):
            for _ in range(G):
                prompts.append(doc[:p] + [3] * tail)
                comps.append([rng.randrange(1, V) for _ in range(rng.randint(1, max_len))])
    if len(comps) > 2:
        comps[1] = list(comps[0])  # two samples of one position with the same completion
    order = list(range(len(prompts)))
    rng.shuffle(order)  # the tree path must not depend on the input order
    return [prompts[i] for i in order], [comps[i] for i in order]


# ---------------------------------------------------------------- trees


def test_build_tree_is_the_trie():
    rng = random.Random(1)
    seqs = [[rng.randrange(3) for _ in range(rng.randint(1, 6))] for _ in range(40)]
    t = build_tree(seqs)
    distinct = {tuple(s[: k + 1]) for s in seqs for k in range(len(s))}
    assert len(t) == len(distinct)  # one node per distinct prefix
    for s, nodes in zip(seqs, t.seq_nodes, strict=True):
        assert [t.tokens[n] for n in nodes] == s
        assert [t.depth[n] for n in nodes] == list(range(len(s)))
        assert [t.parent[n] for n in nodes] == [-1] + nodes[:-1]
    assert all(p < i for i, p in enumerate(t.parent))  # parents precede children
    # ancestor mask against the definition: j is an ancestor-or-self of i iff its path is a prefix of i's
    path = {}
    for s, nodes in zip(seqs, t.seq_nodes, strict=True):
        for k, n in enumerate(nodes):
            path[n] = tuple(s[: k + 1])
    mask = t.ancestor_mask()
    for i in range(len(t)):
        for j in range(len(t)):
            assert mask[i, j] == (path[i][: len(path[j])] == path[j]), (i, j)
    # the longest path is numbered first: its nodes see exactly the nodes before them (a causal block)
    T = t.trunk
    assert max(map(len, seqs)) == T
    assert (mask[:T, :T] == np.tril(np.ones((T, T), dtype=bool))).all() and not mask[:T, T:].any()
    assert t.parent[T] != T - 1  # the chain ends where the trunk says


def test_trunk_of_a_document_stripe_is_its_longest_prompt():
    doc = list(range(10, 40))
    prompts = [doc[:p] + [3] for p in (12, 20, 27)]  # nested prefixes, each closed by its own <think>
    t = build_tree(prompts)
    assert t.trunk == 28 and len(t) == 30  # the longest prompt, then the two other <think> leaves
    assert [t.tokens[n] for n in t.seq_nodes[2]] == prompts[2] and t.seq_nodes[2] == list(range(28))


def test_group_by_prefix_budget_and_cover():
    rng = random.Random(2)
    docs = [[rng.randrange(1, 50) for _ in range(40)] for _ in range(3)]
    seqs = [d[:p] for d in docs for p in range(5, 40, 3)] + [[99] * 100]
    groups = group_by_prefix(seqs, max_nodes=60)
    assert sorted(i for g in groups for i in g) == list(range(len(seqs)))
    for g in groups:
        size = len(build_tree([seqs[i] for i in g]))
        assert size <= 60 or len(g) == 1
        assert len({tuple(seqs[i][:1]) for i in g}) == 1  # unrelated documents never share a tree
    assert [len(seqs) - 1] in groups  # longer than the budget: alone


# ---------------------------------------------------------------- loss path


TINY = {"llama": tiny_llama, "gemma3": tiny_gemma3}  # Gemma 3: a window of 6 among prompts of 3-71 tokens


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    ("docs", "positions", "G", "max_len", "max_nodes"),
    [(1, 1, 1, 4, 4096), (2, 3, 4, 7, 4096), (3, 4, 8, 17, 4096), (2, 3, 4, 7, 90)],
)
def test_tree_logprobs_and_gradients_equal_plain(family, attn, docs, positions, G, max_len, max_nodes):
    model = TINY[family](V, attn).float()
    prompts, comps = workload(docs * 10 + G, docs, positions, G, max_len)
    weights = torch.randn(len(prompts), max_len, generator=torch.Generator().manual_seed(0))

    def run(fn, **kw):
        model.zero_grad()
        lp = fn(model, prompts, comps, 0.8, 0, **kw)
        (lp * weights[:, : lp.shape[1]]).sum().backward()  # a loss that weighs every token differently
        return lp.detach(), [p.grad.clone() for p in model.parameters()]

    lp_plain, g_plain = run(completion_logprobs)
    lp_tree, g_tree = run(tree_completion_logprobs, max_nodes=max_nodes)
    assert lp_tree.shape == lp_plain.shape
    assert (lp_tree - lp_plain).abs().max().item() < 1e-5
    for a, b in zip(g_tree, g_plain, strict=True):
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-12


def test_tree_logprobs_catch_a_wrong_mask(monkeypatch):
    # mutation check: a plain causal mask over the packed prompt tree (a node also sees the other positions'
    # tails packed before it) changes the numbers, so the exactness test above can fail
    model = tiny_llama(V).float().eval()
    prompts, comps = workload(5, 1, 3, 3, 5)
    ref = completion_logprobs(model, prompts, comps, 1.0, 0)
    assert (tree_completion_logprobs(model, prompts, comps, 1.0, 0) - ref).abs().max() < 1e-5
    from nextrl.sharing.prefix_tree import PackedTree

    monkeypatch.setattr(PackedTree, "ancestor_mask", lambda t: np.tril(np.ones((len(t), len(t)), dtype=bool)))
    bad = tree_completion_logprobs(model, prompts, comps, 1.0, 0)
    assert (bad - ref).abs().max() > 1e-3


def test_tree_logprobs_catch_a_wrong_trunk(monkeypatch):
    # mutation check: a trunk one node longer than the chain runs the first off-trunk node through the causal
    # kernel (it then sees the trunk's tokens past its own depth), and the exactness test sees it
    model = tiny_llama(V).float().eval()
    rng = random.Random(0)
    doc = [rng.randrange(4, V) for _ in range(70)]
    prompts = [doc[:p] + [3] for p in (20, 40, 65) for _ in range(3)]  # one tree: a stripe of one document
    comps = [[rng.randrange(4, V) for _ in range(4)] for _ in prompts]
    ref = completion_logprobs(model, prompts, comps, 1.0, 0)
    from nextrl.sharing.prefix_tree import PackedTree

    real = PackedTree.trunk.fget
    assert (real(build_tree(prompts)), len(build_tree(prompts))) == (66, 68)  # both kernels run
    assert (tree_completion_logprobs(model, prompts, comps, 1.0, 0) - ref).abs().max() < 1e-5
    monkeypatch.setattr(PackedTree, "trunk", property(lambda t: real(t) + 1))
    bad = tree_completion_logprobs(model, prompts, comps, 1.0, 0)
    assert (bad - ref).abs().max() > 1e-3


@pytest.mark.parametrize("prompt_len", [4, 30])  # the trunk within the window (6) or far past it
def test_gemma3_tree_logprobs_window_along_each_sequence(prompt_len, monkeypatch):
    """Gemma 3's sliding layers in the loss's tree path: a completion token sees its prompt's ancestors and its
    own earlier tokens only within the window, in positions along its own sequence (branches are packed end to
    end, so column distances are not position distances). Log-probs equal the plain path; without the window
    they do not."""
    model = tiny_gemma3(V).float().eval()
    rng = random.Random(prompt_len)
    doc = [rng.randrange(4, V) for _ in range(prompt_len + 8)]
    prompts = [doc[:prompt_len] + [3]] * 3 + [doc[: prompt_len + 1] + [3]] * 2
    assert (build_tree(prompts).trunk <= model.config.sliding_window) == (prompt_len == 4)
    comps = [[rng.randrange(4, V) for _ in range(rng.randint(8, 14))] for _ in prompts]
    ref = completion_logprobs(model, prompts, comps, 1.0, 0)
    assert (tree_completion_logprobs(model, prompts, comps, 1.0, 0) - ref).abs().max() < 1e-5
    monkeypatch.setattr("nextrl.sharing.branch_attention.window_mask", lambda mask, *_: mask)
    assert (tree_completion_logprobs(model, prompts, comps, 1.0, 0) - ref).abs().max() > 1e-3


def test_tree_logprobs_refuse_softcapping():
    model = tiny_gemma3(V)
    model.config.attn_logit_softcapping = 50.0
    with pytest.raises(ValueError, match="attn_logit_softcapping.*sharing.enabled=false"):
        tree_completion_logprobs(model, [[5, 6]], [[7, 8]], 1.0, 0)


def test_work_counts_the_prefix_once():
    model = tiny_llama(V).float()
    P, G, c = 20, 8, 5
    prompts = [list(range(1, P + 1))] * G
    comps = [[40 + g] + [50] * (c - 1) for g in range(G)]  # distinct first tokens: no shared completion node
    plain, tree = TokenWork(), TokenWork()
    completion_logprobs(model, prompts, comps, 1.0, 0, work=plain)
    tree_completion_logprobs(model, prompts, comps, 1.0, 0, work=tree)
    assert plain.tokens == G * (P + c)
    assert tree.tokens == P + G * (c - 1)  # a completion's last token is a target only, never an input
    # attention: the prefix's causal triangle once, then each branch token sees P + its index + 1 keys
    assert tree.attended == P * (P + 1) // 2 + G * sum(P + j + 1 for j in range(c - 1))
    assert plain.attended == G * (P + c) * (P + c + 1) // 2
    # logits: the plain path projects every completion token; the tree projects each distinct node once: the
    # shared last prompt node (for the G first tokens), then each branch's own c - 1
    assert plain.logits == G * c
    assert tree.logits == 1 + G * (c - 1)
    fm = FlopModel(matmul_params=1000, num_layers=2, hidden_size=8, unembed_params=300)
    assert fm.forward_work(tree) == 2 * 700 * tree.tokens + 2 * 300 * tree.logits + 2 * 2 * 8 * tree.attended
    full = TokenWork()
    full.add_sequence(P + c, logits=P + c)  # every position projected: the pretraining count
    assert fm.forward_work(full) == pytest.approx(fm.forward(P + c, (P + c + 1) / 2))


# ---------------------------------------------------------------- generation


PARAMS = dict(phases=(Phase(6, (5,), (5,)), Phase(2)), eos_token_ids=(9,))


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("batch_size", [4, 64])
def test_shared_sampler_greedy_equals_plain(batch_size, family):
    model = TINY[family](V).eval()
    prompts, _ = workload(3, 2, 3, 1, 1)
    params = SamplingParams(n=3, temperature=0.0, **PARAMS)
    plain = TorchSampler(model, 0, batch_size=64).generate(prompts, params)
    shared = PrefixSharingSampler(model, 0, batch_size=batch_size).generate(prompts, params)
    for ga, gb in zip(plain, shared, strict=True):
        for a, b in zip(ga, gb, strict=True):
            assert (a.completion_ids, a.action_mask, a.phase_starts, a.finish_reason) == (
                b.completion_ids,
                b.action_mask,
                b.phase_starts,
                b.finish_reason,
            )
            assert np.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_shared_sampler_logprobs_and_work():
    model = tiny_llama(V).eval()
    prompts, _ = workload(4, 2, 3, 1, 1)
    params = SamplingParams(n=4, temperature=1.0, **PARAMS)
    engine = PrefixSharingSampler(model, 0, batch_size=16, seed=3)
    out = engine.generate(prompts, params)
    flat = [r for g in out for r in g]
    assert len({len(r.completion_ids) for r in flat}) > 1  # some branches stopped early
    ref = completion_logprobs(model, [r.prompt_ids for r in flat], [r.completion_ids for r in flat], 1.0, 0)
    for i, r in enumerate(flat):
        m = torch.tensor(r.action_mask, dtype=torch.bool)
        got = torch.tensor(r.logprobs)
        assert (got[m] - ref[i, : len(m)][m]).abs().max() < 1e-4
    # prefill: each distinct prompt token of a tree once (the trie of its prompts), not once per sample;
    # prompts that share fewer than MIN_SHARED leading tokens are separate trees
    groups = group_by_prefix(prompts, 4096)
    assert len(groups) < len(prompts)
    distinct = sum(
        len({tuple(prompts[i][: k + 1]) for i in g for k in range(len(prompts[i]))}) for g in groups
    )
    assert engine.last_work["prefill"].tokens == distinct
    # decode: every completion token but the last is fed back (a finished branch is never fed again)
    assert engine.last_work["decode"].tokens == sum(len(r.completion_ids) - 1 for r in flat)
    plain = TorchSampler(model, 0, batch_size=16, seed=3)
    plain.generate(prompts, params)
    assert plain.last_work["prefill"].tokens == params.n * sum(map(len, prompts))


# ---------------------------------------------------------------- batching and order


def test_micro_batches_keep_prefix_groups_together():
    rng = random.Random(0)
    docs = [[rng.randrange(1, 50) for _ in range(30)] for _ in range(4)]
    prompts = [d[:p] for d in docs for p in (10, 12, 14) for _ in range(8)]
    chunks = plan_micro_batches(prompts, size=30, share_prefix=True, max_nodes=4096)
    assert sorted(i for c in chunks for i in c) == list(range(len(prompts)))
    for c in chunks:
        assert len({tuple(prompts[i][:10]) for i in c}) == 1  # one document per chunk here (24 <= 30 < 48)
    plain = plan_micro_batches(prompts, size=30, share_prefix=False, max_nodes=4096)
    assert plain == [list(range(s, min(s + 30, 96))) for s in range(0, 96, 30)]


def test_a_token_bound_splits_a_prefix_group_by_hand():
    """One group of 6 samples sharing a 10-token prompt, completions of 5 tokens, and one next-token
    sequence riding along: a bound of 20 tokens gives pieces of 2 samples (10 + 2 x 5), the rider with the
    first; without the bound, one micro-batch."""
    prompts = [list(range(1, 11))] * 6 + [list(range(1, 13))]
    lengths = [5] * 6
    whole = plan_micro_batches(prompts, size=2, share_prefix=True, max_nodes=4096, counted=6)
    assert whole == [list(range(7))]
    split = plan_micro_batches(
        prompts,
        size=2,
        share_prefix=True,
        max_nodes=4096,
        counted=6,
        completion_lengths=lengths,
        max_tokens=20,
    )
    assert split == [[0, 1, 6], [2, 3], [4, 5]]
    # a sample alone above the bound is a piece of its own
    alone = plan_micro_batches(prompts[:2], 8, True, 4096, completion_lengths=[30, 1], max_tokens=20)
    assert alone == [[0], [1]]


def test_position_sampler_units():
    units = [[0, 1, 2], [3], [4, 5]]
    s = PositionSampler(units, seed=0)
    epoch = s.take(6)
    assert sorted(epoch) == list(range(6))
    runs = {tuple(u) for u in units}
    # units come out whole and in order within an epoch
    k = 0
    while k < 6:
        unit = next(u for u in runs if epoch[k] == u[0])
        assert tuple(epoch[k : k + len(unit)]) == unit
        k += len(unit)
    resumed = PositionSampler(units, seed=0)
    resumed.load_state_dict(s.state_dict())
    assert resumed.take(7) == s.take(7)
    assert sorted(PositionSampler([5, 7], seed=1).take(2)) == [5, 7]  # single rows still work
    with pytest.raises(ValueError, match="no positions"):
        PositionSampler([[], []], seed=0)


def test_tree_logprobs_single_token_completions_and_gqa():
    # completions of one token have no branch inputs at all (the prompt's last node predicts them)
    model = tiny_llama(V).float()
    prompts, _ = workload(7, 2, 3, 4, 1)
    comps = [[5 + i % 7] for i in range(len(prompts))]
    ref = completion_logprobs(model, prompts, comps, 1.0, 0)
    assert (tree_completion_logprobs(model, prompts, comps, 1.0, 0) - ref).abs().max() < 1e-5
    prompts, comps = workload(8, 2, 2, 3, 6)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    ref = completion_logprobs(model, prompts, comps, 0.7, 0)
    assert (tree_completion_logprobs(model, prompts, comps, 0.7, 0) - ref).abs().max() < 1e-5
