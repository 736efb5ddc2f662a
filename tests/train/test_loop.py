"""The trainer's step: micro-batches inside one logical step, whole users per micro-batch, noise once."""

from __future__ import annotations

import pytest
import torch

from dpsynth.data.encode import collate
from dpsynth.privacy.noise import NoiseSource
from dpsynth.train.loop import (
    DPTrainer,
    DPTrainingPlan,
    make_optimizer,
    train_nonprivate,
)
from tests.conftest import make_batch, tiny_llama


class FixedSampler:
    """Returns the same units every step (the Poisson sampler has its own tests)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def sample_step(self) -> list[int]:
        return list(self.ids)


def _trainer(units=None, ids=(0, 1, 2, 3, 4), physical=2, sigma=0.0, expected=5.0, seed=0) -> DPTrainer:
    model = tiny_llama()
    batch = make_batch()
    rows = [batch["input_ids"][i, : int(batch["attention_mask"][i].sum())] for i in range(5)]
    plan = DPTrainingPlan(steps=1, sample_rate=1.0, expected_batch_size=expected, noise_multiplier=sigma,
                          clip_norm=0.05, learning_rate=0.0, weight_decay=0.0, physical_batch_size=physical)
    return DPTrainer(model, plan, sampler=FixedSampler(list(ids)), collate=lambda c: collate([rows[i] for i in c], 0),
                     lengths=[len(r) for r in rows], noise=NoiseSource(seed=seed),
                     optimizer=make_optimizer(model, 0.0, 0.0), device=torch.device("cpu"), units=units)


def _grads(trainer: DPTrainer) -> dict[str, torch.Tensor]:
    trainer.engine.attach()
    trainer.run_step(1)
    trainer.engine.noisy_average(trainer.noise, trainer.plan.noise_multiplier, trainer.plan.expected_batch_size)
    trainer.engine.detach()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_micro_batch_size_does_not_change_the_step() -> None:
    one = _grads(_trainer(physical=5))
    many = _grads(_trainer(physical=2))
    for n in one:
        torch.testing.assert_close(many[n], one[n], rtol=1e-4, atol=1e-7)


def test_users_stay_whole_and_are_clipped_together() -> None:
    units = [[0, 3], [1], [2, 4]]
    trainer = _trainer(units=units, ids=(0, 1, 2), physical=3)
    batches = trainer._micro_batches([0, 1, 2])
    for rows, groups in batches:
        for u in units:
            assert all(r in rows for r in u) or not any(r in rows for r in u), "a user was split"
        assert groups is not None and len(groups) == len(rows)
    # Same sum as clipping each user once in a single micro-batch.
    whole = _grads(_trainer(units=units, ids=(0, 1, 2), physical=5))
    split = _grads(trainer)
    for n in whole:
        torch.testing.assert_close(split[n], whole[n], rtol=1e-4, atol=1e-7)


def test_noise_is_added_once_per_step_with_std_sigma_c_over_expected_batch() -> None:
    """An empty Poisson batch: the update is noise only. 4 micro-batches or 1, its std must be σC/(qN)."""
    trainer = _trainer(ids=(), sigma=0.8, expected=4.0, physical=1)
    noise = torch.cat([g.reshape(-1) for g in _grads(trainer).values()])
    expected = 0.8 * 0.05 / 4.0
    # ~15k coordinates: relative standard error of the std ≈ 0.6%; 3% is 5 standard errors.
    assert noise.numel() > 10_000 and abs(float(noise.std()) / expected - 1) < 0.03


def test_linear_schedule_falls_from_the_peak_to_one_step_of_it() -> None:
    plan = DPTrainingPlan(steps=4, sample_rate=1.0, expected_batch_size=5.0, noise_multiplier=0.0, clip_norm=1.0,
                          learning_rate=0.8, weight_decay=0.0, physical_batch_size=2, lr_schedule="linear")
    assert [plan.learning_rate_at(t) for t in range(1, 5)] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    constant = DPTrainingPlan(**{**plan.__dict__, "lr_schedule": "constant"})
    assert {constant.learning_rate_at(t) for t in range(1, 5)} == {0.8}


def test_each_update_uses_its_steps_learning_rate_also_after_a_resume() -> None:
    """The LR is set from the step number before every update, so a run resumed at step 1 continues the schedule
    (the optimizer's saved LR from the checkpoint does not win)."""
    trainer = _trainer()
    trainer.plan = DPTrainingPlan(**{**trainer.plan.__dict__, "steps": 3, "learning_rate": 0.3,
                                     "lr_schedule": "linear"})
    seen: list[float] = []
    trainer.train(after_step=lambda _: seen.append(trainer.optimizer.param_groups[0]["lr"]))
    assert seen == pytest.approx([0.3, 0.2, 0.1])
    seen.clear()
    trainer.optimizer.param_groups[0]["lr"] = 0.3  # as a checkpoint saved at the first step would restore it
    trainer.train(start_step=1, after_step=lambda _: seen.append(trainer.optimizer.param_groups[0]["lr"]))
    assert seen == pytest.approx([0.2, 0.1])


def test_training_without_dp_follows_the_schedule_too() -> None:
    """--lr-schedule must not be silently ignored at ε = ∞ (the comparison run)."""
    model = tiny_llama()
    batch = make_batch()
    rows = [batch["input_ids"][i, : int(batch["attention_mask"][i].sum())] for i in range(5)]
    optimizer = make_optimizer(model, 0.4, 0.0)
    seen: list[float] = []
    train_nonprivate(model, num_examples=5, collate=lambda c: collate([rows[i] for i in c], 0), epochs=4.0,
                     batch_size=5, physical_batch_size=5, optimizer=optimizer, device=torch.device("cpu"),
                     lr_schedule="linear", after_step=lambda _: seen.append(optimizer.param_groups[0]["lr"]))
    assert seen == pytest.approx([0.4, 0.3, 0.2, 0.1])
