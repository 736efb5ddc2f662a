"""The DP-SGD training loop: Poisson-sampled logical steps, micro-batches inside a step, noise once per step.

Privacy-relevant order of a logical step t:
1. the sampler draws the step's units (each independently with probability q — the accountant's assumption);
2. the units are sorted by length and split into micro-batches that fit in memory (gradient accumulation happens
   *inside* the step, never across steps); each micro-batch adds its clipped per-example gradients;
3. `before_update(t)` is called — the caller records the step as spent *before* the noisy update exists, so a
   crash can never leave an applied update uncounted;
4. Gaussian noise N(0, σ²C²) is added once, the sum divided by the expected batch size q·N, and AdamW steps.
An empty Poisson batch is a valid step: the update is noise only, and it is counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dpsynth.privacy.engine import ClippingEngine, NoiseSource
from dpsynth.privacy.loss import per_example_lm_loss, training_forward_kwargs
from dpsynth.runtime.device import autocast
from dpsynth.runtime.ranks import SINGLE_PROCESS, DistContext


@dataclass(frozen=True)
class DPTrainingPlan:
    """The public schedule of a DP run: fixed before looking at the data (N is treated as public)."""

    steps: int
    sample_rate: float
    expected_batch_size: float
    noise_multiplier: float
    clip_norm: float
    learning_rate: float
    weight_decay: float
    physical_batch_size: int
    lr_schedule: str = "constant"

    def learning_rate_at(self, step: int) -> float:
        return scheduled_learning_rate(self.learning_rate, step, self.steps, self.lr_schedule)


def scheduled_learning_rate(peak: float, step: int, steps: int, schedule: str) -> float:
    """The LR of step `step` (1-based) of `steps`, a function of the step alone so that a resumed run continues
    the same schedule. Linear: from the peak down to peak/steps at the last step. Why decay under DP: with Adam,
    a step dominated by noise still moves each weight by about the LR, so late steps at the peak LR random-walk
    away from what the early ones learnt; a shrinking LR averages that noise out."""
    if schedule == "constant":
        return peak
    if schedule == "linear":
        return peak * (steps - min(max(step, 1), steps) + 1) / steps
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


@dataclass
class StepReport:
    step: int
    steps_total: int
    examples: int
    mean_loss: float | None  # private: shown to the data owner, never written to shareable outputs
    seconds: float


@dataclass
class TrainResult:
    steps_done: int
    seconds: float
    examples_seen: int
    layer_methods: dict[str, str] = field(default_factory=dict)


Collate = Callable[[list[int]], dict[str, torch.Tensor]]


def make_optimizer(model: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (DP-Adam in the reference recipe: constant LR, weight decay 0.01; the
    DP trainer sets each step's LR from its plan's schedule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)


class DPTrainer:
    """Runs `plan.steps` DP-SGD steps over `num_units` privacy units."""

    def __init__(
        self,
        model: nn.Module,
        plan: DPTrainingPlan,
        *,
        sampler: object,
        collate: Collate,
        lengths: Sequence[int],
        noise: NoiseSource,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        precision: str = "fp32",
        dist_ctx: DistContext | None = None,
        units: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """`units[u]` lists the example indices of privacy unit u (user-level DP); None: one example per unit."""
        self.model = model
        self.plan = plan
        self.sampler = sampler
        self.collate = collate
        self.lengths = lengths
        self.noise = noise
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.dist = dist_ctx or SINGLE_PROCESS
        self.units = None if units is None else [list(u) for u in units]
        if self.units is not None and max(map(len, self.units)) > plan.physical_batch_size:
            raise ValueError("physical_batch_size must hold a whole unit (the records-per-user cap)")
        self.engine = ClippingEngine(model, plan.clip_norm)

    def _micro_batches(self, unit_ids: Sequence[int]) -> list[tuple[list[int], torch.Tensor | None]]:
        """This rank's share of the step's units packed into micro-batches of examples, longest first.

        Record-level: a unit is one example. User-level (`units` given): a unit's examples always share one
        micro-batch, with a `groups` tensor telling the engine which rows form one unit to clip together.
        """
        size = self.plan.physical_batch_size
        if self.units is None:
            examples = self.dist.shard(sorted((int(i) for i in unit_ids), key=lambda i: -self.lengths[i]))
            return [(examples[i : i + size], None) for i in range(0, len(examples), size)]
        users = self.dist.shard(sorted((int(u) for u in unit_ids),
                                       key=lambda u: -max(self.lengths[i] for i in self.units[u])))
        batches: list[tuple[list[int], torch.Tensor | None]] = []
        rows: list[int] = []
        groups: list[int] = []
        for u in users:
            members = self.units[u]
            if rows and len(rows) + len(members) > size:
                batches.append((rows, torch.tensor(groups)))
                rows, groups = [], []
            unit_index = groups[-1] + 1 if groups else 0
            rows += members
            groups += [unit_index] * len(members)
        if rows:
            batches.append((rows, torch.tensor(groups)))
        return batches

    def run_step(self, step: int) -> StepReport:
        t0 = time.perf_counter()
        unit_ids = self.sampler.sample_step()
        loss_sum, n = 0.0, 0
        self.model.train()
        for chunk, groups in self._micro_batches(unit_ids):
            batch = {k: v.to(self.device) for k, v in self.collate(chunk).items()}
            b, t = batch["input_ids"].shape
            with self.engine.microbatch(b, t), autocast(self.device, self.precision):
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    **training_forward_kwargs(self.model)).logits
                losses = per_example_lm_loss(logits, batch["labels"])
            del logits
            self.engine.backward(losses, groups=groups)
            loss_sum += float(losses.detach().sum())
            n += b
        return StepReport(step, self.plan.steps, n, loss_sum / n if n else None, time.perf_counter() - t0)

    def apply_update(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.plan.learning_rate_at(step)
        self.engine.noisy_average(self.noise, self.plan.noise_multiplier, self.plan.expected_batch_size,
                                  all_reduce=self.dist.all_reduce_sum if self.dist.enabled else None,
                                  broadcast=self.dist.broadcast_from_main if self.dist.enabled else None,
                                  adds_noise=self.dist.is_main)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(
        self,
        start_step: int = 0,
        num_steps: int | None = None,
        *,
        before_update: Callable[[int], None] | None = None,
        after_step: Callable[[StepReport], None] | None = None,
    ) -> TrainResult:
        """Take `num_steps` noisy updates (default: up to plan.steps) numbered from start_step+1.

        `before_update(t)` must durably count step t as spent; it runs before the update is applied.
        """
        todo = self.plan.steps - start_step if num_steps is None else num_steps
        self.engine.attach()
        t0 = time.perf_counter()
        seen = 0
        try:
            for step in range(start_step + 1, start_step + todo + 1):
                report = self.run_step(step)
                if before_update is not None:
                    before_update(step)
                self.apply_update(step)
                seen += report.examples
                if after_step is not None:
                    after_step(report)
        finally:
            self.engine.detach()
        return TrainResult(todo, time.perf_counter() - t0, seen, self.engine.describe())


def nonprivate_steps(num_examples: int, epochs: float, batch_size: int) -> int:
    """Steps of `train_nonprivate` (the progress bar's total must be this very number)."""
    return max(1, round(epochs * max(1, math.ceil(num_examples / batch_size))))


def train_nonprivate(
    model: nn.Module,
    *,
    num_examples: int,
    collate: Collate,
    epochs: float,
    batch_size: int,
    physical_batch_size: int,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str = "fp32",
    seed: int = 0,
    lr_schedule: str = "constant",
    after_step: Callable[[StepReport], None] | None = None,
) -> TrainResult:
    """Ordinary fine-tuning (ε = ∞), for comparison: shuffled fixed-size batches, mean loss, no clipping/noise;
    the optimizer's LR is the peak of `lr_schedule`."""
    gen = torch.Generator().manual_seed(seed)
    total = nonprivate_steps(num_examples, epochs, batch_size)
    peaks = [group["lr"] for group in optimizer.param_groups]
    order: list[int] = []
    t0 = time.perf_counter()
    seen = 0
    model.train()
    for step in range(1, total + 1):
        ts = time.perf_counter()
        if len(order) < batch_size:
            order += torch.randperm(num_examples, generator=gen).tolist()
        ids, order = order[:batch_size], order[batch_size:]
        loss_sum = 0.0
        for lo in range(0, len(ids), physical_batch_size):
            chunk = ids[lo : lo + physical_batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            with autocast(device, precision):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                losses = per_example_lm_loss(logits, batch["labels"])
            (losses.sum() / len(ids)).backward()
            loss_sum += float(losses.detach().sum())
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = scheduled_learning_rate(peak, step, total, lr_schedule)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(ids)
        if after_step is not None:
            after_step(StepReport(step, total, len(ids), loss_sum / len(ids), time.perf_counter() - ts))
    return TrainResult(total, time.perf_counter() - t0, seen)
