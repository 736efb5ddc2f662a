"""Data parallelism under torch.distributed (gloo, 2 CPU processes): clipping and noise must be as on one process.

Fails if the clipped sums were not summed across ranks (each rank would hold half the gradient), if each rank
added its own noise before the reduction (the noise std would grow by √2), or if ranks drew different noise
(parameters would drift apart).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dpsynth.privacy.engine import ClippingEngine
from dpsynth.train.distributed import DistContext
from dpsynth.train.loss import per_example_lm_loss
from tests.privacy.test_engine import make_batch, tiny_llama

CLIP = 0.05
SIGMA = 0.7
EXPECTED_B = 4.0


class SeededNoise:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def normal_like(self, t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=self.gen, dtype=t.dtype) * std


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clipped_step(model: torch.nn.Module, rows: list[int], ctx: DistContext, noise: SeededNoise | None) -> dict:
    batch = make_batch()
    engine = ClippingEngine(model, CLIP).attach()
    if rows:
        part = {k: v[rows] for k, v in batch.items()}
        with engine.microbatch(len(rows), part["input_ids"].shape[1]):
            logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            losses = per_example_lm_loss(logits, part["labels"])
        engine.backward(losses)
    engine.noisy_average(noise, SIGMA if noise else 0.0, EXPECTED_B,
                         all_reduce=ctx.all_reduce_sum if ctx.enabled else None)
    engine.detach()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world)
    torch.set_num_threads(1)
    # 1) the step's five examples, sharded over ranks, without noise: must equal the single-process sum
    grads = _clipped_step(tiny_llama(), ctx.shard(list(range(5))), ctx, None)
    # 2) an empty step with noise: the update is noise only; its std must be σC/(qN), once
    noise_only = _clipped_step(tiny_llama(), [], ctx, SeededNoise(seed=1234))
    torch.save({"grads": grads, "noise": noise_only}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_ranks_match_one_and_add_noise_once() -> None:
    torch.set_num_threads(1)
    reference = _clipped_step(tiny_llama(), list(range(5)), DistContext(), None)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, _free_port(), tmp), nprocs=2, join=True)
        r0 = torch.load(Path(tmp) / "rank0.pt")
        r1 = torch.load(Path(tmp) / "rank1.pt")
    for name, ref in reference.items():
        torch.testing.assert_close(r0["grads"][name], ref, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(r1["grads"][name], ref, rtol=1e-4, atol=1e-7)
    noise = torch.cat([g.reshape(-1) for g in r0["noise"].values()])
    for name in r0["noise"]:
        assert torch.equal(r0["noise"][name], r1["noise"][name]), "ranks must apply the same noisy update"
    expected_std = SIGMA * CLIP / EXPECTED_B
    # ~20k coordinates: the sample std's relative standard error is ≈ 1/√(2n) < 0.5%; 3% is > 6 standard errors,
    # while noise added per rank before the reduction would be off by √2 (41%).
    assert noise.numel() > 10_000
    assert abs(float(noise.std()) / expected_std - 1) < 0.03
    assert abs(float(noise.mean())) < 5 * expected_std / noise.numel() ** 0.5
