"""FSDP2 learner ranks (`placement.shard=fsdp`): the policy's parameters, gradients and AdamW moments split
across the learner ranks with `torch.distributed.fsdp.fully_shard`, one unit per transformer block and one for
the rest (embeddings, final norm, the tied head) at the root.

Every forward and backward of a sharded module is a collective (all-gather of a unit's parameters before its
forward and backward, reduce-scatter of its gradients after its backward), so every rank must run the same
number of passes in the same order: a rank with fewer micro-batches than another pads with `idle_pass` (a
forward and backward of weight 0). The gradients are summed across ranks, not averaged (the learner's
micro-batch weights already make the sum the whole batch's gradient), with plain SUM collectives (gloo has no
PREMUL_SUM). The learner's code reads the policy as `base_model(...)` then `get_output_embeddings()(hidden)`;
`base_forward` routes the first through the root unit's hooks, and the root keeps its parameters gathered
after its forward (FSDP2 never reshards the root after forward), so the head reads the full tied embedding.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from nextrl.errors import ConfigError

BASE_FORWARD = "nextrl_base_forward"  # the root's registered forward method (`base_forward`)


def decoder_blocks(policy: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face causal LM: the modules of the classes the model itself names
    as not to be split across devices (`_no_split_modules`, e.g. LlamaDecoderLayer, Gemma3DecoderLayer)."""
    names = set(getattr(policy, "_no_split_modules", None) or [])
    # the class or a base of it: a sharded block's class is FSDP's subclass of it
    return [m for m in policy.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def shard_policy(policy: nn.Module, autocast: torch.dtype | None) -> nn.Module:
    """Wrap `policy` in place with FSDP2 (per block, then the root) over the default process group; return
    it. With a bf16 autocast (a device that has bf16) the gathered parameters are bf16 and the gradients are
    reduced in fp32; otherwise everything stays fp32."""
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    blocks = decoder_blocks(policy)
    if not blocks:
        raise ConfigError(
            f"config key 'placement.shard': fsdp shards by transformer block, and {type(policy).__name__} "
            "names none (`_no_split_modules`); use placement.shard=none"
        )
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if autocast == torch.bfloat16
        else MixedPrecisionPolicy()
    )
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    for unit in policy.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)  # a sum: the micro-batch weights already normalise
            unit.set_force_sum_reduction_for_comms(True)  # SUM only: gloo has no PREMUL_SUM
    setattr(policy, BASE_FORWARD, lambda *a, **kw: policy.base_model(*a, **kw))
    register_fsdp_forward_method(policy, BASE_FORWARD)
    return policy


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def base_forward(model: nn.Module) -> Callable:
    """`model.base_model`, called through the FSDP root's hooks when the model is sharded."""
    return getattr(model, BASE_FORWARD, None) or model.base_model


def idle_pass(policy: nn.Module, pad_token_id: int) -> None:
    """A forward and backward of weight 0 through every unit: a rank with fewer micro-batches than the others
    takes part in their all-gathers and reduce-scatters, and adds nothing to any gradient."""
    device = next(policy.parameters()).device
    ids = torch.full((1, 1), pad_token_id, dtype=torch.long, device=device)
    hidden = base_forward(policy)(input_ids=ids).last_hidden_state
    (0.0 * policy.get_output_embeddings()(hidden).float().sum()).backward()


def padded_share(items: list, rank: int, world: int) -> list:
    """Rank `rank`'s share (items rank, rank + world, …), padded with None to the largest rank's length."""
    mine = items[rank::world]
    return mine + [None] * (-(-len(items) // world) - len(mine))


def local_state_numel(module: nn.Module) -> int:
    """Elements of the parameters this rank holds (its shards when sharded)."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in module.parameters())


@torch.no_grad()
def stream_full_weights(sharded: nn.Module, full: nn.Module | None) -> float:
    """Gather the sharded parameters one at a time (`full_tensor`, a collective every rank calls in the same
    order) into `full`'s (rank 0's rollout-side copy; None on the other ranks, which only take part). At most
    one gathered parameter is alive beside the shards, so no rank ever holds two full copies. Returns the
    seconds it took."""
    from torch.distributed.tensor import DTensor

    t = time.time()
    targets = dict(full.named_parameters()) if full is not None else {}
    for name, p in sharded.named_parameters():
        whole = p.full_tensor() if isinstance(p, DTensor) else p.detach()
        if full is not None:
            targets[name].copy_(whole)
        del whole
    return time.time() - t


def init_single_rank(device: torch.device) -> None:
    """A one-rank process group (placement.learners=1 with placement.shard=fsdp): FSDP2 over a world of 1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
