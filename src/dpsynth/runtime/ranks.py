"""Ranks: one process, or several launched by `torchrun`, seen through one small object.

A single process is world size 1, so every caller (training, sampling, the run command) writes one code path.
What data parallelism must keep for DP-SGD, and who relies on which method:
- every rank draws the *same* Poisson batch (one sample per step, as the accountant assumes): the sampler's secret
  comes from rank 0 (`shared_secret`) and each rank takes a disjoint `shard` of the batch;
- the clipped sums are summed across ranks before the noise (`all_reduce_sum`); rank 0 alone adds the noise and
  `broadcast_from_main` copies the noisy update, so the noise enters exactly once;
- only rank 0 writes files; the others learn its outcome through `share_from_main`, and a failure on any rank is
  made known to all (`check_same`), so that no rank waits forever for one that gave up.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dpsynth.errors import DpsynthError


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

    # ------------------------------------------------------------------ tensors
    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum in place across ranks, flattened into one buffer (one collective instead of hundreds)."""
        self._flat_collective(tensors, lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))

    def broadcast_from_main(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's tensors on every rank (the noisy update: drawn once, on rank 0)."""
        self._flat_collective(tensors, lambda flat: dist.broadcast(flat, src=0))

    def _flat_collective(self, tensors: list[torch.Tensor], op: Any) -> None:
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        op(flat)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def shared_secret(self) -> int:
        """126 bits of OS randomness drawn on rank 0 and sent to every rank.

        Why: ranks that seed "secure" generators independently draw *different* Poisson batches, so a record can
        be trained on two ranks in one step (sensitivity 2C) while the ledger assumes one sample per step. One
        secret, shared in memory only, keeps every rank on the same stream without making it replayable.
        """
        words = [secrets.randbits(63), secrets.randbits(63)]
        words = self.share_from_main(words)
        return (words[0] << 63) | words[1]

    # ------------------------------------------------------------------ Python objects
    def share_from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (each rank passes its own; only rank 0's is used)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def check_same(self, value: Any, what: str) -> None:
        """Raise on every rank (not just one, which would leave the others waiting) if ranks disagree on `value`."""
        values = self.all_gather(value)
        differing = [r for r, v in enumerate(values) if v != values[0]]
        if differing:
            raise DpsynthError(f"The ranks disagree on the {what} (ranks {differing} differ from rank 0); every "
                               "rank must run the same command on the same inputs.")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE_PROCESS = DistContext()


def init_distributed() -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE_PROCESS
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def weights_digest(model: Any) -> str:
    """A hash of the trainable weights' exact bytes (all weights if none is trainable).

    Sharded sampling equals one process's only if every rank holds bit-identical weights; DP training keeps them
    so (one broadcast noisy update per step), and this is the cheap check that it did.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] or list(model.named_parameters())
    h = hashlib.sha256()
    for name, p in params:
        h.update(name.encode())
        h.update(p.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()
