"""Data parallelism over torch.distributed (launched by `torchrun`), with DP-SGD's invariants kept.

- Sampling: every rank runs the *same* Poisson sampler (same seed, same state), so all ranks agree on the step's
  global batch; each rank takes a disjoint shard of it. That is exactly one Poisson sample per step, as the
  accountant assumes — not one per rank. With --secure-rng (the default) the seed is a secret drawn from the OS on
  rank 0 and sent to the others (`shared_secret`), never written anywhere.
- Clipping is per example on the rank that holds the example (clipping is local to an example anyway).
- The clipped sums are all-reduced (SUM) before the noise; rank 0 alone adds the noise draw and broadcasts the
  noisy sum, so the noise enters exactly once (any noise source, --secure-rng included) and parameters stay
  identical on every rank.
- Only rank 0 writes the ledger, checkpoints and outputs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, examples: Sequence[int]) -> list[int]:
        """This rank's share of the step's examples. Round-robin over a length-sorted list balances the work."""
        return list(examples[self.rank :: self.world_size])

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum in place across ranks, flattened into one buffer (one collective instead of hundreds)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def broadcast_from_main(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's tensors on every rank (the noisy update: drawn once, on rank 0)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def broadcast_int(self, value: int) -> int:
        """Rank 0's value on every rank."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.broadcast(t, src=0)
        return int(t.item())

    def shared_secret(self) -> int:
        """126 bits of OS randomness drawn on rank 0 and sent to every rank.

        Why: ranks that seed "secure" generators independently draw *different* Poisson batches, so a record can
        be trained on two ranks in one step (sensitivity 2C) while the ledger assumes one sample per step. One
        secret, shared in memory only, keeps every rank on the same stream without making it replayable.
        """
        words = [secrets.randbits(63), secrets.randbits(63)]
        if self.enabled:
            words = [self.broadcast_int(w) for w in words]
        return (words[0] << 63) | words[1]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)
