"""Data parallelism under torch.distributed (gloo, 2 CPU processes): clipping and noise must be as on one process.

Fails if the clipped sums were not summed across ranks (each rank would hold half the gradient), if each rank
added its own noise before the reduction (the noise std would grow by √2), or if ranks applied different noise
(parameters would drift apart) — the ranks' noise sources are deliberately seeded differently.
Also fails if an interrupted 2-rank run resumed on a rank that did not restore the checkpoint's state.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dpsynth.privacy.engine import ClippingEngine
from dpsynth.privacy.loss import per_example_lm_loss
from dpsynth.runtime.ranks import DistContext
from tests.conftest import dpsgd_steps_in_ledger, free_port, make_batch, tiny_llama

CLIP = 0.05
SIGMA = 0.7
EXPECTED_B = 4.0


class SeededNoise:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def add_normal_(self, t: torch.Tensor, std: float) -> torch.Tensor:
        return t.add_(torch.randn(t.shape, generator=self.gen, dtype=t.dtype) * std)


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
                         all_reduce=ctx.all_reduce_sum if ctx.enabled else None,
                         broadcast=ctx.broadcast_from_main if ctx.enabled else None, adds_noise=ctx.is_main)
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
    noise_only = _clipped_step(tiny_llama(), [], ctx, SeededNoise(seed=1234 + rank))  # ranks' sources differ
    torch.save({"grads": grads, "noise": noise_only}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_ranks_match_one_and_add_noise_once() -> None:
    torch.set_num_threads(1)
    reference = _clipped_step(tiny_llama(), list(range(5)), DistContext(), None)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, free_port(), tmp), nprocs=2, join=True)
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


def _as_torchrun_rank(rank: int, world: int, port: int) -> None:
    """Set the environment torchrun gives each process (the pipeline joins the group from it), one thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)


def _pipeline_worker(rank: int, world: int, port: int, data: str, model: str, out: str) -> None:
    _as_torchrun_rank(rank, world, port)
    from dpsynth.commands.run import run
    from dpsynth.config import RunConfig

    run(RunConfig(**_pipeline_config(data, model, out)))
    dist.destroy_process_group()


def _pipeline_config(data: str, model: str, out: str) -> dict:
    # Seeded, so that the 2-rank run can be compared with a 1-process run draw for draw.
    return dict(data=data, text_column="text", label_columns=["sentiment"], model=model, out=out, epochs=1.0,
                batch_size=16, physical_batch_size=4, max_tokens=32, num_samples=300, max_new_tokens=4,
                finetune="full", learning_rate=1e-3, secure_rng=False)


def _secure_worker(rank: int, world: int, port: int, data: str, model: str, out: str, log_dir: str) -> None:
    _as_torchrun_rank(rank, world, port)
    from dpsynth.commands.run import run
    from dpsynth.config import RunConfig
    from dpsynth.privacy.sampling import PoissonSampler

    draws: list[list[int]] = []
    original = PoissonSampler.sample_step

    def recording(self: PoissonSampler):  # noqa: ANN202 - returns what sample_step returns
        idx = original(self)
        draws.append(idx.tolist())
        return idx

    PoissonSampler.sample_step = recording  # type: ignore[method-assign]
    run(RunConfig(data=data, text_column="text", label_columns=["sentiment"], model=model, out=out, epochs=2.0,
                  batch_size=10, physical_batch_size=16, max_tokens=24, num_samples=40, max_new_tokens=2,
                  finetune="lora", label_budget_fraction=0.5))  # secure_rng by default
    Path(log_dir, f"rank{rank}.json").write_text(json.dumps(draws))
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_secure_batches_are_one_global_sample_under_two_ranks(tmp_path: Path) -> None:
    """With OS-seeded (secure) sampling every rank must still draw the *same* global batch: independently seeded
    ranks would each train their own batch, so a record could be clipped and summed on both (sensitivity 2C) while
    the ledger assumes one Poisson sample per step. The DP label histogram must agree across ranks too (the run
    stops if the ranks' label mixes differ)."""
    from dpsynth.data.demo import load_demo_dataset
    from dpsynth.models.tiny import save_tiny_model_folder

    model = str(save_tiny_model_folder(tmp_path / "tiny", kind="llama"))
    data = str(tmp_path / "reviews.csv")
    load_demo_dataset(max_records=40, seed=0).to_csv(data, index=False)
    mp.spawn(_secure_worker, args=(2, free_port(), data, model, str(tmp_path / "out"), str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0) == len(r1) == 8 and sum(map(len, r0)) > 20
    assert r0 == r1, "the ranks drew different batches"
    ledger = json.loads((tmp_path / "out" / "privacy.json").read_text())
    assert ledger["noise_rng"] == "secure" and ledger["mechanisms"][0]["steps"] == 8
    assert (tmp_path / "out" / "synthetic.csv").is_file()


@pytest.mark.timeout(300)
def test_dpsynth_run_under_two_ranks_trains_the_same_model_as_one(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m dpsynth run` equivalent: one global Poisson sample per step, sharded,
    clipped sums reduced, noise once on rank 0 — so the trained weights match a single-process run's."""
    from safetensors.torch import load_file

    from dpsynth.commands.run import run
    from dpsynth.config import RunConfig
    from dpsynth.data.demo import load_demo_dataset
    from dpsynth.models.tiny import save_tiny_model_folder

    torch.set_num_threads(1)
    model = str(save_tiny_model_folder(tmp_path / "tiny", kind="llama"))
    data = str(tmp_path / "reviews.csv")
    load_demo_dataset(max_records=80, seed=0).to_csv(data, index=False)
    run(RunConfig(**_pipeline_config(data, model, str(tmp_path / "one"))))
    mp.spawn(_pipeline_worker, args=(2, free_port(), data, model, str(tmp_path / "two")), nprocs=2, join=True)

    one, two = tmp_path / "one", tmp_path / "two"
    ledger_one = json.loads((one / "privacy.json").read_text())
    ledger_two = json.loads((two / "privacy.json").read_text())
    assert ledger_two["mechanisms"] == ledger_one["mechanisms"] and ledger_two["epsilon"] == ledger_one["epsilon"]
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    assert (two / "synthetic.csv").is_file() and not (two / "checkpoint").exists()
    w_one, w_two = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    base = load_file(Path(model) / "model.safetensors")
    moved = max(float((w_one[k] - base[k]).abs().max()) for k in base if k in w_one)
    assert moved > 1e-3, "training must have changed the weights for this comparison to mean anything"
    for k in w_one:
        torch.testing.assert_close(w_two[k], w_one[k], rtol=1e-3, atol=1e-5, msg=f"{k} differs across world sizes")

    # Sampling: 300 records are two chunks (256 + 44), one per rank; rank 0 merges them into the file one process
    # writes from the same weights and seed. (The weights above agree only to float rounding, so the bytes are
    # compared with one process sampling from the 2-rank run's own saved model.)
    import pandas as pd

    from dpsynth.commands.sample import sample_from_run

    sample_from_run(two, 300, tmp_path / "one_process.csv", seed=0)
    assert (two / "synthetic.csv").read_bytes() == (tmp_path / "one_process.csv").read_bytes()
    synth_one, synth_two = (pd.read_csv(d / "synthetic.csv", dtype=str) for d in (one, two))
    assert len(synth_two) == len(synth_one) > 250 and synth_two["sentiment"].equals(synth_one["sentiment"])
    notes = json.loads((two / "run.json").read_text())["sampling"]["notes"]
    assert any("across 2 process" in n for n in notes)
    assert not list(two.glob(".*.parts"))


def _interrupted_worker(rank: int, world: int, port: int, data: str, model: str, out: str) -> None:
    """Both ranks stopped as step 4 begins (as Ctrl-C or a scheduler's SIGTERM stops a torchrun job): the last
    checkpoint is step 2's, and steps 1–3 are in the ledger."""
    _as_torchrun_rank(rank, world, port)
    from dpsynth.commands.run import run
    from dpsynth.config import RunConfig
    from dpsynth.train.loop import DPTrainer

    original = DPTrainer.run_step

    def stopping(self: DPTrainer, step: int):  # noqa: ANN202 - returns what run_step returns
        if step == 4:
            raise KeyboardInterrupt
        return original(self, step)

    DPTrainer.run_step = stopping  # type: ignore[method-assign]
    try:
        run(RunConfig(**{**_pipeline_config(data, model, out), "checkpoint_every": 2, "num_samples": 20}))
    except KeyboardInterrupt:
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _resume_worker(rank: int, world: int, port: int, out: str) -> None:
    _as_torchrun_rank(rank, world, port)
    from dpsynth.commands.resume import resume

    resume(out)
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_an_interrupted_two_rank_run_resumes_under_two_ranks_or_one(tmp_path: Path) -> None:
    """`torchrun ... dpsynth run --resume`: every rank must restore the checkpoint's weights, optimizer, sampler and
    noise state. Fails if a rank other than 0 started from the base weights or a fresh sampler (its shard of the
    gradient would differ), or if the resumed run paid for the lost steps twice or skipped them — the weights of a
    2-rank resume are compared with a 1-process resume of the same interrupted run."""
    import shutil

    from safetensors.torch import load_file

    from dpsynth.commands.resume import resume
    from dpsynth.data.demo import load_demo_dataset
    from dpsynth.models.tiny import save_tiny_model_folder

    torch.set_num_threads(1)
    model = str(save_tiny_model_folder(tmp_path / "tiny", kind="llama"))
    data = str(tmp_path / "reviews.csv")
    load_demo_dataset(max_records=80, seed=0).to_csv(data, index=False)
    stopped = tmp_path / "stopped"
    mp.spawn(_interrupted_worker, args=(2, free_port(), data, model, str(stopped)), nprocs=2, join=True)
    assert dpsgd_steps_in_ledger(stopped) == 3 and (stopped / "checkpoint" / "state.pt").is_file()
    assert not (stopped / "synthetic.csv").exists()

    two, one = tmp_path / "two", tmp_path / "one"
    shutil.copytree(stopped, two)
    shutil.copytree(stopped, one)
    mp.spawn(_resume_worker, args=(2, free_port(), str(two)), nprocs=2, join=True)
    resume(one)

    planned = 5  # 1 epoch at q = 16 / 80
    for out, world in ((two, 2), (one, 1)):
        record = json.loads((out / "run.json").read_text())
        assert record["world_size"] == world and record["training"]["resumed_from_step"] == 2
        assert record["training"]["steps_this_session"] == planned - 3  # the lost step 3 was paid for, not redone
        assert dpsgd_steps_in_ledger(out) == planned
        assert (out / "synthetic.csv").is_file() and not (out / "checkpoint").exists()
    w_two, w_one = (load_file(d / "model" / "model.safetensors") for d in (two, one))
    base = load_file(Path(model) / "model.safetensors")
    assert max(float((w_two[k] - base[k]).abs().max()) for k in base if k in w_two) > 1e-3
    for k in w_one:
        torch.testing.assert_close(w_two[k], w_one[k], rtol=1e-3, atol=1e-5, msg=f"{k} differs after the resumes")
