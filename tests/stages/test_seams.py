"""The seams between the stages, checked through the real code paths against brute force or the ledger itself.

A DP bug at a seam is silent: each check here has bounds that a plausible bug cannot pass — noise drawn per
micro-batch, σ off by √2, the sum divided by the realised instead of the expected batch, q off by 2, a layer left
unclipped, the ledger written after the update, records handed to the trainer where users are the unit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpsynth.commands.run import run
from dpsynth.config import RunConfig
from dpsynth.data.encode import collate
from dpsynth.privacy.engine import ClippingEngine
from dpsynth.privacy.noise import NoiseSource
from dpsynth.privacy.sampling import PoissonSampler
from dpsynth.train.loop import DPTrainer, DPTrainingPlan, make_optimizer
from tests.conftest import brute_force, dpsgd_steps_in_ledger, make_batch, sentiment_values, tiny_llama


class _AllUnits:
    """Every unit in the one step (the Poisson sampler is checked through the pipeline below)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def sample_step(self) -> list[int]:
        return list(range(self.n))


def test_a_logical_step_is_the_clipped_sum_plus_one_noise_draw_over_the_expected_batch() -> None:
    """Through DPTrainer.train → apply_update, 3 micro-batches, σ > 0: the update the optimizer sees equals
    (brute-force clipped sum + one draw of the seeded noise source) / (q·N), element by element."""
    sigma, clip, expected = 0.8, 0.05, 4.0  # expected q·N = 4 while the step holds 5 records
    batch = make_batch()
    rows = [batch["input_ids"][i, : int(batch["attention_mask"][i].sum())] for i in range(5)]
    model = tiny_llama()
    names = {id(p): n for n, p in model.named_parameters()}
    plan = DPTrainingPlan(steps=1, sample_rate=1.0, expected_batch_size=expected, noise_multiplier=sigma,
                          clip_norm=clip, learning_rate=0.0, weight_decay=0.0, physical_batch_size=2)
    optimizer = make_optimizer(model, 0.0, 0.0)
    seen: dict[str, torch.Tensor] = {}
    step = optimizer.step

    def spy_step(*args, **kwargs):
        seen.update({names[id(p)]: p.grad.detach().double().clone() for p in model.parameters()
                     if p.grad is not None})
        return step(*args, **kwargs)

    optimizer.step = spy_step  # type: ignore[method-assign]
    trainer = DPTrainer(model, plan, sampler=_AllUnits(5), collate=lambda ids: collate([rows[i] for i in ids], 0),
                        lengths=[len(r) for r in rows], noise=NoiseSource(seed=11), optimizer=optimizer,
                        device=torch.device("cpu"))
    trainer.train()

    _, clipped = brute_force(tiny_llama(), batch, clip)
    reference = NoiseSource(seed=11)
    assert set(seen) == set(clipped)
    for p in trainer.engine.params:  # the engine's parameter order is the order of the noise draws
        name = names[id(p)]
        noise = reference.add_normal_(torch.zeros(p.shape, dtype=torch.float32), sigma * clip).double()
        torch.testing.assert_close(seen[name], (clipped[name] + noise) / expected, rtol=1e-4, atol=1e-6)


class _Spies:
    """Wraps (never replaces) the real sampler, noise source, engine and trainer to record what a run did."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
        self.draws: list[tuple[int, float, int]] = []
        self.noise: list[tuple[int, float]] = []
        self.averages: list[tuple[float, float, float]] = []
        self.ledger_at_update: list[tuple[int, int]] = []
        self.micro_batches: list[list[list[int]]] = []
        self.trainable: int = 0
        sample_step, add_normal, noisy_average = (PoissonSampler.sample_step, NoiseSource.add_normal_,
                                                  ClippingEngine.noisy_average)
        apply_update, micro_batches = DPTrainer.apply_update, DPTrainer._micro_batches

        def spy_sample(sampler: PoissonSampler):
            idx = sample_step(sampler)
            self.draws.append((sampler.num_units, sampler.sample_rate, len(idx)))
            return idx

        def spy_noise(source: NoiseSource, tensor: torch.Tensor, std: float):
            self.noise.append((tensor.numel(), std))
            return add_normal(source, tensor, std)

        def spy_average(engine: ClippingEngine, noise, noise_multiplier, expected_batch_size, **kw):
            self.averages.append((noise_multiplier, expected_batch_size, engine.clip_norm))
            self.trainable = len(engine.params)
            return noisy_average(engine, noise, noise_multiplier, expected_batch_size, **kw)

        def spy_update(trainer: DPTrainer, step: int):
            self.ledger_at_update.append((step, dpsgd_steps_in_ledger(out)))
            return apply_update(trainer, step)

        def spy_micro_batches(trainer: DPTrainer, unit_ids):
            batches = micro_batches(trainer, unit_ids)
            self.micro_batches.append([list(rows) for rows, _ in batches])
            return batches

        monkeypatch.setattr(PoissonSampler, "sample_step", spy_sample)
        monkeypatch.setattr(NoiseSource, "add_normal_", spy_noise)
        monkeypatch.setattr(ClippingEngine, "noisy_average", spy_average)
        monkeypatch.setattr(DPTrainer, "apply_update", spy_update)
        monkeypatch.setattr(DPTrainer, "_micro_batches", spy_micro_batches)


def test_the_plan_reaches_the_sampler_the_engine_and_the_noise(monkeypatch: pytest.MonkeyPatch,
                                                               reviews_csv: Path, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    """The real pipeline: every step's noise std is the ledger's σ × C, drawn once per trained tensor (not per
    micro-batch), the sum divided by the ledger's q·N; the sampler draws at the ledger's q from N units; and the
    ledger on disk counts each step before its update is applied."""
    out = tmp_path / "run"
    spies = _Spies(monkeypatch, out)
    run(RunConfig(data=reviews_csv, label_columns=["sentiment"], model=str(tiny_model_dir), out=out, epsilon=4.0,
                  epochs=4.0, batch_size=16, physical_batch_size=4, max_tokens=32, num_samples=4, max_new_tokens=4,
                  label_values=sentiment_values(tmp_path), clip_norm=0.7))
    ledger = json.loads((out / "privacy.json").read_text())
    dpsgd = ledger["mechanisms"][0]
    sigma, q, steps = dpsgd["noise_multiplier"], dpsgd["sample_rate"], dpsgd["steps"]
    assert q == pytest.approx(16 / 80) and steps == 20
    assert spies.averages == [(pytest.approx(sigma), pytest.approx(q * 80), 0.7)] * steps
    assert len(spies.noise) == steps * spies.trainable  # one draw per tensor per step, whatever the micro-batches
    assert all(std == pytest.approx(sigma * 0.7, rel=1e-9) for _, std in spies.noise)
    assert max(len(b) for b in spies.micro_batches) > 1, "the steps must span several micro-batches"
    assert [(n, r) for n, r, _ in spies.draws] == [(80, pytest.approx(q))] * steps
    # 20 steps of Binomial(80, 0.2): the mean batch is 16 ± 0.8 (one sd); q off by 2 gives 8 or 32.
    mean_batch = sum(k for _, _, k in spies.draws) / steps
    assert abs(mean_batch - 16) < 4, mean_batch
    assert spies.ledger_at_update == [(t, t) for t in range(1, steps + 1)], "the ledger must count a step first"


def test_users_not_records_are_the_units_handed_to_the_trainer(monkeypatch: pytest.MonkeyPatch,
                                                               tiny_model_dir: Path, tmp_path: Path) -> None:
    """--user-column: the sampler draws from N = users at q = batch / users, every micro-batch holds whole users
    (at most the cap of each), and the examples trained are exactly the drawn users' kept records."""
    rows = [{"text": f"review {u} number {i}", "sentiment": "fresh" if (u + i) % 2 else "rotten", "user": f"u{u}"}
            for u in range(20) for i in range(4)]
    data = tmp_path / "users.csv"
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_csv(data, index=False)
    out = tmp_path / "run"
    spies = _Spies(monkeypatch, out)
    run(RunConfig(data=data, label_columns=["sentiment"], user_column="user", max_records_per_user=3,
                  model=str(tiny_model_dir), out=out, epsilon=4.0, epochs=2.0, batch_size=5, physical_batch_size=6,
                  max_tokens=32, num_samples=4, max_new_tokens=4, label_values=sentiment_values(tmp_path)))
    assert [(n, r) for n, r, _ in spies.draws] == [(20, pytest.approx(5 / 20))] * 8
    table = pd.read_csv(data).groupby("user", sort=False).head(3).reset_index(drop=True)
    users = table["user"].tolist()  # the kept rows in the order training indexes them
    for step, batches in zip(spies.draws, spies.micro_batches):
        drawn = [users[i] for rows_ in batches for i in rows_]
        assert len(set(drawn)) == step[2], "one unit per drawn user"
        for rows_ in batches:
            for user in {users[i] for i in rows_}:
                assert sum(users[i] == user for i in rows_) == 3, "a user's kept records stay together"
    report = json.loads((out / "data_report.json").read_text())
    assert report["examples_trained"] == 3 * sum(k for _, _, k in spies.draws)
    assert math.isclose(json.loads((out / "privacy.json").read_text())["mechanisms"][0]["sample_rate"], 0.25)
