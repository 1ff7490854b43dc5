"""The loss's tree attention, kernel by kernel, on the masks of a real RL step (issue 10, item 2).

One step of `bench/rl_step.py`'s workload (TRL's, context `--context`) is run to capture the layout its loss
builds: the prompt trie's ancestor mask [B, 1, Np, Np] and the packed branches' mask [B, 1, Nb, Np + Nb]. Then
each candidate computes the attention of one layer on random queries, keys and values of those shapes, forward
and forward + backward, checked against the reference (what nextrl runs: one masked SDPA call per region):

- `sdpa_masked` (the reference, nextrl before the trunk split): `F.scaled_dot_product_attention` with the
  bool masks;
- `trunk_causal` (nextrl, prompt trie only): the trie's longest path, numbered first, through SDPA's causal
  kernel, the other nodes against the whole trie under their mask (`sharing.branch_attention.trunk_attention`);
- `key_blocks`: the queries in blocks of `--block` rows, each against only the key columns some row of the
  block sees (a tree mask is about half empty; SDPA's CPU kernel splits keys in blocks of 512 and skips none);
- `math`: scores, masked softmax and the value product as three plain ops (what autograd sees unfused);
- `flex`: `torch.nn.attention.flex_attention` with a block mask made from the same bool mask, compiled
  (inductor). On CPU it has no backward in torch 2.13: its forward is timed and the backward reported as
  unsupported.

    python bench/tree_attention.py                      # context 512, appends the table to docs/benchmarks-history.md
    python bench/tree_attention.py --context 1024 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nextrl.sharing.branch_attention import trunk_attention
from publish import publish  # bench/publish.py, beside this script


def capture_layout(context: int):
    """The BranchLayout of the first loss forward of a real step (TRL's workload of bench/rl_step.py)."""
    import argparse as ap_

    import rl_step
    from nextrl.config import load_config
    from nextrl.model.build import autocast_dtype
    from nextrl.model.pretrain import prepare_base
    from nextrl.pipeline import build_rl_trainer
    from nextrl.sharing import branch_attention as ba

    args = ap_.Namespace(positions=16, per_prefix=8, group_size=8, thought=16, steps=1, main_job_terms=False)
    base = prepare_base(load_config("tiny"))
    index = rl_step.build_index(base.tokenizer, context, 2, 8, seed=context)
    cfg = load_config(
        "tiny",
        [f"selection.context={context}", "positions.per_step=16", "positions.per_prefix=8",
         "sampling.group_size=8", "env.thought_tokens=16", "rl.drop_uniform_groups=false",
         "rl.micro_batch_size=128", "sampling.batch_size=128", "rl.steps=1",
         f"model.max_position_embeddings={rl_step.positions_for(context, args)}",
         "reward=prefix_match", "rl.lm_coef=0", "rl.empty_thought_samples=0"],
    )  # fmt: skip
    seen = []
    real = ba.prefix_branch_attention

    def spy(module, query, key, value, attention_mask, scaling=None, dropout=0.0, layout=None, **kw):
        if layout is not None and not seen:
            seen.append((layout, query.shape, key.shape, scaling))
        return real(module, query, key, value, attention_mask, scaling, dropout, layout, **kw)

    ba.AttentionInterface.register(ba.NAME, spy)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_rl_trainer(cfg, base.model, base.tokenizer, index, Path(tmp), torch.device("cpu"),
                                       autocast_dtype(cfg.model))  # fmt: skip
            trainer.step()
    finally:
        ba.AttentionInterface.register(ba.NAME, real)
    return seen[0]


def plan_blocks(mask: torch.Tensor, rows: int):
    """(lo, hi, key columns, mask restricted to them) per block of `rows` query rows."""
    out = []
    for lo in range(0, mask.shape[2], rows):
        hi = min(lo + rows, mask.shape[2])
        sub = mask[:, :, lo:hi]
        cols = sub.any(dim=2).any(dim=1).any(dim=0).nonzero().squeeze(1)
        first, last = int(cols[0]), int(cols[-1])
        if last - first + 1 == len(cols):
            out.append((lo, hi, slice(first, last + 1), sub[..., first : last + 1]))
        else:
            out.append((lo, hi, cols, sub.index_select(3, cols)))
    return out


def blocked(q, k, v, blocks, scale):
    outs = []
    for lo, hi, keys, m in blocks:  # keys: a slice (a view) or an index (a copy of the block's keys)
        outs.append(F.scaled_dot_product_attention(q[:, :, lo:hi], k[:, :, keys], v[:, :, keys], attn_mask=m,
                                                   scale=scale))  # fmt: skip
    return torch.cat(outs, dim=2)


def candidates(q, k, v, mask, scale, block_sizes, trunk: int = 0):
    """name -> the attention of one layer under `mask`, each a zero-argument call; `trunk`: the leading nodes
    that form a chain in every row (the prompt trie), 0 for none."""
    plain = "sdpa_masked" if trunk else "sdpa_masked (nextrl)"
    out = {plain: lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)}
    if trunk:
        rest = mask[:, :, trunk:].contiguous()
        out[f"trunk_causal (nextrl; trunk {trunk})"] = lambda: trunk_attention(q, k, v, rest, trunk, scale)
    for b in block_sizes:
        plan = plan_blocks(mask, b)
        out[f"key_blocks {b}"] = lambda p=plan: blocked(q, k, v, p, scale)
    out["math"] = lambda: math_attention(q, k, v, mask, scale)
    return out


def math_attention(q, k, v, mask, scale):
    s = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-ups."""
    fn()
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--block", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    layout, qshape, kshape, scale = capture_layout(args.context)
    B, H, _, D = qshape
    Np = layout.prefix_nodes
    regions = {"prompt trie": (layout.prefix_mask, layout.trunk), "branches": (layout.branch_mask, 0)}
    g = torch.Generator().manual_seed(0)
    rows = []
    for region, (mask, trunk) in regions.items():
        nq, nk = mask.shape[2], mask.shape[3]
        q = torch.randn(B, H, nq, D, generator=g).requires_grad_()
        k = torch.randn(B, H, nk, D, generator=g).requires_grad_()
        v = torch.randn(B, H, nk, D, generator=g).requires_grad_()
        dense = mask.float().mean().item()
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        for name, fn in candidates(q, k, v, mask, scale, args.block, trunk).items():
            err = (fn() - ref).abs().max().item()
            fwd = timed(lambda f=fn: f(), args.repeats)
            both = timed(lambda f=fn: f().sum().backward(), args.repeats)
            rows.append((region, f"{nq}×{nk}", f"{dense:.0%}", name, fwd, both, err))
        rows.append(
            (region, f"{nq}×{nk}", f"{dense:.0%}", *flex_row(q, k, v, mask, scale, ref, args.repeats))
        )
        print(rows[-1], flush=True)
    publish(report(rows, args, Np), write=not args.no_write)


def flex_row(q, k, v, mask, scale, ref, repeats):
    """FlexAttention on the same mask: compiled forward timed (compile time apart), backward if supported."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return ("flex", float("nan"), float("nan"), f"unavailable: {e}")
    m = mask[:, 0]

    def mod(b, h, qi, ki):
        return m[b, qi, ki]

    bm = create_block_mask(mod, B=mask.shape[0], H=None, Q_LEN=mask.shape[2], KV_LEN=mask.shape[3],
                           device=str(q.device))  # fmt: skip
    flex = torch.compile(flex_attention, dynamic=False)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    t = time.perf_counter()
    out = flex(qd, kd, vd, block_mask=bm, scale=scale)
    compile_s = time.perf_counter() - t
    err = (out - ref).abs().max().item()
    fwd = timed(lambda: flex(qd, kd, vd, block_mask=bm, scale=scale), repeats)
    try:
        flex(q, k, v, block_mask=bm, scale=scale).sum().backward()
        both = timed(lambda: flex(q, k, v, block_mask=bm, scale=scale).sum().backward(), repeats)
        note = f"{err:.1e}; compile {compile_s:.0f} s"
    except Exception as e:  # torch 2.13 CPU: "FlexAttention does not support backward on CPU"
        both = float("nan")
        note = f"{err:.1e}; compile {compile_s:.0f} s; backward: {str(e).split('.')[0]}"
    return ("flex (compiled)", fwd, both, note)


def report(rows, args, Np) -> list[str]:
    cmd = "python bench/tree_attention.py " + " ".join(sys.argv[1:])
    out = [
        f"### Tree attention kernels on a real step's masks ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, float32",
        f"- the masks of the first loss forward of bench/rl_step.py's workload at context {args.context} "
        f"(prompt trie Np = {Np}); one layer, median of {args.repeats} calls",
        "",
        "| region | queries × keys | mask density | kernel | forward ms | forward + backward ms | max error |",
        "|---|---|---|---|---|---|---|",
    ]
    for region, shape, dense, name, fwd, both, err in rows:
        e = err if isinstance(err, str) else f"{err:.1e}"
        b = "–" if both != both else f"{both * 1e3:.2f}"
        out.append(f"| {region} | {shape} | {dense} | {name} | {fwd * 1e3:.2f} | {b} | {e} |")
    return out


if __name__ == "__main__":
    main()
