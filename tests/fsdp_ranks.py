"""A few AdamW steps of a tiny Llama on nextrl's FSDP2 helpers (`nextrl.model.fsdp`), for tests/test_fsdp.py.

Under `torchrun --nproc_per_node N` every rank trains its share of the micro-batches of a sharded copy (idle
passes where it has fewer), clips and steps; rank 0 then gathers the whole weights and saves them with its
share of the state. Run plainly (no torchrun) it takes the same steps unsharded, as the reference.
`--skip-reduce-scatter` is a mutation for the test only: the last block's gradients are never reduce-scattered.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from nextrl.model.fsdp import (
    base_forward,
    decoder_blocks,
    idle_pass,
    local_state_numel,
    padded_share,
    shard_policy,
    stream_full_weights,
)
from nextrl.model.optim import build_optimizer, clip_grad

VOCAB, STEPS, CHUNKS = 64, 3, 5


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def chunk_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """The next-token loss of a micro-batch, read as the learner reads the policy (base model, then head)."""
    hidden = base_forward(model)(input_ids=ids).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip-reduce-scatter", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sharded = "WORLD_SIZE" in os.environ
    model = tiny_llama()
    whole = model
    rank, world = 0, 1
    if sharded:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        whole = tiny_llama() if rank == 0 else None
        shard_policy(model, None)
        if args.skip_reduce_scatter:
            decoder_blocks(model)[-1].set_requires_gradient_sync(False)
    optimizer = build_optimizer(model, 1e-2, 0.1)
    torch.manual_seed(1)
    chunks = [torch.randint(0, VOCAB, (2, 3 + i)) for i in range(CHUNKS)]  # uneven lengths and counts
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        for ids in padded_share(chunks, rank, world):
            if ids is None:
                idle_pass(model, 0)
            else:
                (chunk_loss(model, ids) / CHUNKS).backward()
        clip_grad(model.parameters(), 0.5)
        optimizer.step()
    if sharded:
        stream_full_weights(model, whole)
    if rank == 0:
        state = {k: v.detach().clone() for k, v in whole.state_dict().items()}
        torch.save({"weights": state, "local_numel": local_state_numel(model)}, args.out)
    if sharded:
        # every rank waits for rank 0's save: a rank that tears gloo down while its peer is still busy can
        # abort the peer ("terminate called without an active exception", seen once in a full suite)
        dist.barrier()
        dist.destroy_process_group()
        # ...and leaves without the interpreter's teardown: it has failed once more under a loaded full suite
        # with the barrier in place (rank 1 aborted, 2026-12-07), i.e. in the C++ destructors that run at exit
        # in no fixed order; everything this script writes is saved by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
