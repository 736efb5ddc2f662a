"""Stage 5: fine-tuning — DP-SGD with the run's plan (checkpointed, resumable, every step counted in the ledger
before its update exists), or ordinary training for ε = ∞."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from rich.console import Console

from dpsynth.config import RunConfig
from dpsynth.data.encode import EncodedRecords, collate
from dpsynth.models.loading import LoadedModel
from dpsynth.privacy.ledger import PrivacyLedger
from dpsynth.privacy.plan import PrivacyPlan, batch_sampler, noise_source
from dpsynth.runtime.progress import TrainingProgress
from dpsynth.runtime.ranks import DistContext
from dpsynth.stages.data import PrivateData
from dpsynth.stages.folder import RunFolder
from dpsynth.stages.resume import restore_training, store_settings
from dpsynth.train.checkpoint import resume_plan, save_checkpoint, trainable_names
from dpsynth.train.loop import (
    DPTrainer,
    DPTrainingPlan,
    StepReport,
    make_optimizer,
    nonprivate_steps,
    train_nonprivate,
)


def train(config: RunConfig, data: PrivateData, records: EncodedRecords, loaded: LoadedModel, plan: PrivacyPlan,
          ledger: PrivacyLedger, folder: RunFolder, *, device: torch.device, precision: str, console: Console,
          ranks: DistContext) -> dict[str, Any]:
    """Train the model in place; returns the training summary for run.json (`examples_seen` and `layer_methods`
    are private: the caller moves them to data_report.json)."""
    model = loaded.model
    lr = config.resolved_learning_rate(plan.expected_batch_size)
    optimizer = make_optimizer(model, lr, config.weight_decay)

    def collate_ids(ids: list[int]) -> dict[str, torch.Tensor]:
        return collate([records[i] for i in ids], pad_id=loaded.pad_id)

    # d, the number of trained weights: the DP noise's norm grows with √d, so it is worth showing with the run.
    summary: dict[str, Any] = {
        "trainable_weights": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lora_targets": (sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters()
                                 if p.requires_grad and ".lora_" in n}) if config.finetune == "lora" else None),
        "learning_rate": lr, "lr_schedule": config.resolved_lr_schedule(), "private": plan.private}
    if not plan.private:
        batch = int(plan.expected_batch_size)
        total = nonprivate_steps(len(records), config.resolved_epochs(), batch)
        with TrainingProgress(total, None, console=console, label="training (no DP)") as bar:
            result = train_nonprivate(model, num_examples=len(records), collate=collate_ids,
                                      epochs=config.resolved_epochs(), batch_size=batch,
                                      physical_batch_size=config.physical_batch_size, optimizer=optimizer,
                                      device=device, precision=precision, seed=config.seed,
                                      lr_schedule=config.resolved_lr_schedule(),
                                      after_step=lambda r: bar.update(r.step, r.mean_loss))
        return summary | {"steps": result.steps_done, "seconds": result.seconds}
    trainer = DPTrainer(
        model, DPTrainingPlan(steps=plan.steps, sample_rate=plan.sample_rate,
                              expected_batch_size=plan.expected_batch_size, noise_multiplier=plan.noise_multiplier,
                              clip_norm=config.clip_norm, learning_rate=lr, weight_decay=config.weight_decay,
                              lr_schedule=config.resolved_lr_schedule(),
                              physical_batch_size=max(config.physical_batch_size,
                                                      config.max_records_per_user if data.units else 1)),
        sampler=batch_sampler(plan, secure=config.secure_rng, seed=config.seed, shared_secret=ranks.shared_secret),
        collate=collate_ids, lengths=records.lengths.tolist(),
        noise=noise_source(secure=config.secure_rng, seed=config.seed), optimizer=optimizer, device=device,
        precision=precision, units=data.units, dist_ctx=ranks)
    return summary | _train_dp(config, data, trainer, plan, ledger, folder, console=console, ranks=ranks)


def _train_dp(config: RunConfig, data: PrivateData, trainer: DPTrainer, plan: PrivacyPlan, ledger: PrivacyLedger,
              folder: RunFolder, *, console: Console, ranks: DistContext) -> dict[str, Any]:
    """The DP-SGD steps still in the budget: restored from the last checkpoint on --resume, each counted in the
    ledger (written) before its update is applied, checkpointed every --checkpoint-every steps."""
    names = trainable_names(trainer.model)  # before the engine attaches (it switches requires_grad off)
    start_step, spent = 0, 0
    if config.resume:
        start_step, spent = restore_training(folder, ledger.dpsgd_steps, model=trainer.model,
                                             optimizer=trainer.optimizer, sampler=trainer.sampler,
                                             noise=trainer.noise)
        ledger.set_dpsgd_steps(spent)
        if ranks.is_main:
            ledger.write(folder.privacy)
            store_settings(folder, config, data.sha256)  # what this session continues with
    counted = [spent]

    def spend(step: int) -> None:
        counted[0] += 1
        ledger.set_dpsgd_steps(counted[0])
        if ranks.is_main:  # interim: a 10× coarser (still upper-bounding) PLD grid, fast enough for every step
            ledger.write(folder.privacy, interim=True)

    with TrainingProgress(plan.steps, plan.tracker().epsilon, start_step=spent, console=console) as bar:

        def after(report: StepReport) -> None:
            bar.update(counted[0], report.mean_loss)
            if ranks.is_main and (report.step % config.checkpoint_every == 0 or counted[0] == plan.steps):
                store_settings(folder, config, data.sha256)  # before state.pt
                save_checkpoint(folder.checkpoint, step=report.step, model=trainer.model, names=names,
                                optimizer=trainer.optimizer, sampler=trainer.sampler, noise=trainer.noise)

        result = trainer.train(start_step=start_step, num_steps=resume_plan(plan.steps, start_step, spent)
                               .remaining_steps, before_update=spend, after_step=after)
    return {"steps": counted[0], "steps_this_session": result.steps_done, "resumed_from_step": start_step,
            "seconds": result.seconds, "examples_seen": result.examples_seen,
            "noise_multiplier": plan.noise_multiplier, "noise": trainer.noise.describe(),
            # Private, like examples_seen: each layer's method is re-chosen per micro-batch from its padded length,
            # so the last choice depends on which records the last batch drew.
            "layer_methods": dict(Counter(result.layer_methods.values()))}
