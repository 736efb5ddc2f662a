"""The stages of `dpsynth run`, each a small function the pipeline calls in order.

Kept apart from `pipeline.py` so that each stage can be tested and reused (e.g. `dpsynth sample` reuses the
sampling stage on a finished run).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpsynth import outputs
from dpsynth.config import RunConfig
from dpsynth.errors import DpsynthError, first_line
from dpsynth.train.checkpoint import load_checkpoint, restore_checkpoint


@dataclass
class PreparedData:
    """Everything derived from the private table and the model before training."""

    table: Any  # pandas.DataFrame of validated rows
    records: Any  # dpsynth.data.encode.EncodedRecords
    loaded: Any  # dpsynth.models.loading.LoadedModel
    data_report: dict[str, Any]
    units: list[list[int]] | None = None  # user-level DP: the record indices of each user (≤ the cap)
    data_sha256: str | None = None  # stored with checkpoints: a resume must read the same records

    def resume_settings(self, config: RunConfig) -> dict[str, Any]:
        """What `--resume` continues with (checkpoint/settings.json): the options and the data file's digest."""
        return {**config.resume_settings(), "data_sha256": self.data_sha256}

    @property
    def num_units(self) -> int:
        return len(self.units) if self.units is not None else len(self.records)

    @property
    def unit_name(self) -> str:
        return "user" if self.units is not None else "record"


@dataclass
class BudgetPlanOut:
    """The privacy plan of the run and its ledger (None mechanisms for a non-private run)."""

    plan: Any  # dpsynth.privacy.accounting.BudgetPlan | None
    ledger: Any  # dpsynth.privacy.ledger.PrivacyLedger
    steps: int
    sample_rate: float
    expected_batch_size: float
    delta: float | None
    notes: list[str] = field(default_factory=list)

    def weak_signal_warning(self) -> str | None:
        """A warning when the noise will drown what training could learn (None if not).

        Why: a tiny ε (or few records) is reachable, so it is not refused, but it buys hours of training that
        learn close to nothing. The measure is the noise std of the averaged update in clip norms, σ / (q·N): the
        smallest-data benchmark that still learnt the labels (N = 800, ε = 4, docs/training.md) had 0.01; above
        10× that the run is flagged.
        """
        if self.plan is None:
            return None
        sigma = self.plan.dpsgd.noise_multiplier
        per_update = sigma / max(self.expected_batch_size, 1e-12)
        if per_update <= 0.1:
            return None
        return (f"the noise multiplier is σ = {sigma:.3g} at an expected batch of {self.expected_batch_size:.0f}, so "
                f"each update's noise is {per_update:.2g} clip norms — over 10× the 0.01 of the smallest setting "
                "dpsynth's benchmarks learnt from (N = 800, ε = 4): expect the synthetic text to carry little of "
                "the data. More records, a larger --batch-size or a larger --epsilon lower it.")

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"steps": self.steps, "sample_rate": self.sample_rate,
                             "expected_batch_size": self.expected_batch_size, "notes": self.notes}
        if self.plan is not None:
            d["noise_multiplier"] = self.plan.dpsgd.noise_multiplier
            if self.plan.label_histogram is not None:
                d["label_histogram_noise_multiplier"] = self.plan.label_histogram.noise_multiplier
        return d


def load_and_encode(config: RunConfig, *, device: torch.device, console: Any) -> PreparedData:
    """Read and check the table, load the model, build control codes + text and tokenise to --max-tokens."""
    from dpsynth.data.control_codes import ControlCodes
    from dpsynth.data.encode import encode_records
    from dpsynth.data.reader import read_table_with_sha256
    from dpsynth.data.schema import DatasetSpec, validate_table
    from dpsynth.models.loading import context_length, load_model

    df, data_sha256 = read_table_with_sha256(config.data)
    if config.resume:
        stored = (outputs.read_resume_settings(config.out) or {}).get("data_sha256")
        if stored and data_sha256 and stored != data_sha256:
            raise DpsynthError(f"--resume: {config.data} is not the file the interrupted run trained on (its bytes "
                               "differ); resume with that file, or start a new run with --overwrite")
    spec = DatasetSpec(text_column=config.text_column, label_columns=list(config.label_columns),
                       user_column=config.user_column)
    validated = validate_table(df, spec, max_label_values=config.max_label_values, drop_empty=config.drop_empty)
    table = validated.df
    units = None
    if config.user_column:
        table, units, capped = cap_records_per_user(table, config.user_column, config.max_records_per_user)
    with console.status("loading the model"):
        loaded = load_model(config.model, device=str(device))
    if hasattr(loaded.model, "peft_config"):  # a LoRA adapter folder, e.g. an earlier run's model/
        raise DpsynthError(f"--model {config.model} is a LoRA adapter (an earlier run's model/?), not a base model; "
                           "train from the base model it names, or use `dpsynth sample --run` to sample from that "
                           "run (training it again on the same data would spend privacy this run's ledger does not "
                           "count)")
    context = context_length(loaded.model)
    if context is not None and config.max_tokens > context:
        raise DpsynthError(f"--max-tokens {config.max_tokens} is longer than the {context} positions "
                           f"{loaded.name} was built for; use --max-tokens {context} or less")
    if config.finetune == "lora" and config.lora_targets:
        from dpsynth.models.lora import check_target_modules

        check_target_modules(loaded.model, list(config.lora_targets))  # before anything is written
    codes = ControlCodes(list(config.label_columns))
    prefixes = [codes.prefix({c: row[c] for c in config.label_columns})
                for row in table[list(config.label_columns)].to_dict("records")] if config.label_columns \
        else [""] * len(table)
    records = encode_records(loaded.tokenizer, prefixes, table[config.text_column].tolist(),
                             max_tokens=config.max_tokens, loss_on_prefix=config.loss_on_prefix)
    data_report = validated.report.to_dict() | records.summary()
    if units is not None:
        data_report |= {"num_users": len(units), "records_per_user_cap": config.max_records_per_user,
                        "records_dropped_by_cap": capped}
    return PreparedData(table=table, records=records, loaded=loaded, data_report=data_report, units=units,
                        data_sha256=data_sha256)


def cap_records_per_user(table: Any, user_column: str, cap: int) -> tuple[Any, list[list[int]], int]:
    """Keep each user's first `cap` records (a choice made within each user's own data, so it is a per-unit
    transformation DP allows) and list every user's row indices; returns (table, units, rows dropped)."""
    keep = table.groupby(user_column, sort=False).cumcount() < cap
    kept = table[keep].reset_index(drop=True)
    units = [list(idx) for idx in kept.groupby(user_column, sort=False).indices.values()]
    return kept, units, int((~keep).sum())


def plan_privacy(config: RunConfig, prepared: PreparedData) -> BudgetPlanOut:
    """Fix the public schedule (q, T) from N and the config, then calibrate σ for the target (ε, δ)."""
    from dpsynth.privacy.accounting import DpSgdMechanism, default_delta, plan_budget
    from dpsynth.privacy.ledger import PrivacyLedger

    n = prepared.num_units
    if n < 2:
        raise DpsynthError("the dataset needs at least 2 records to train on")
    batch = config.resolved_batch_size(n)
    q = batch / n
    steps = max(1, math.ceil(config.resolved_epochs() / q))
    notes = [
        f"The number of {prepared.unit_name}s N is treated as public (it sets the sampling rate and δ).",
        f"The training length ({config.max_tokens} tokens) is a fixed public setting, not chosen from the data.",
        *_label_notes(config),
        "No checkpoint or hyper-parameter is selected using the private data.",
    ]
    if prepared.units is not None:
        notes.append(f"Privacy unit: the user ('{config.user_column}'); each user's first "
                     f"{config.max_records_per_user} records are kept and clipped together.")
    if not config.private:
        ledger = PrivacyLedger(delta=None, unit=prepared.unit_name, num_units=n, non_private=True)
        return BudgetPlanOut(None, ledger, steps, q, batch, None, notes)
    delta = config.delta if config.delta is not None else default_delta(n)
    wants_dp_labels = bool(config.label_columns) and config.label_distribution == "dp"
    plan = plan_budget(config.epsilon, delta, num_units=n, sample_rate=q, steps=steps,
                       label_fraction=config.label_budget_fraction if wants_dp_labels else None,
                       label_threshold=wants_dp_labels and config.label_values is None)
    if not config.secure_rng:
        notes.append("Noise and batches come from a PRNG seeded with --seed (recorded in run.json) so the run is "
                     "reproducible; whoever knows the seed can regenerate the noise, so keep run.json private or "
                     "train with --secure-rng before publishing the model.")
    ledger = PrivacyLedger(delta=delta, unit=prepared.unit_name, num_units=n, clip_norm=config.clip_norm,
                           epsilon_target=config.epsilon,
                           records_per_user_cap=config.max_records_per_user if prepared.units else None,
                           noise_rng="secure" if config.secure_rng else "seeded", notes=notes)
    ledger.add(DpSgdMechanism(plan.dpsgd.noise_multiplier, q, 0))  # steps are counted as they are taken
    if config.resume:
        _carry_over_spending(config.out / outputs.PRIVACY, ledger)
    return BudgetPlanOut(plan, ledger, steps, q, batch, delta, notes)


def _label_notes(config: RunConfig) -> list[str]:
    """What the ledger says about the label values and proportions, for the label setting actually used."""
    dp = config.label_distribution == "dp"
    if not config.label_columns or not config.private or (config.label_values is None and not dp):
        return []  # no labels; no DP (the exact mix is used); or a declared file, which build_label_distribution notes
    if config.label_values is not None:
        return ["Each label column's values are declared public (--label-values)"
                + ("; the label proportions are protected by the DP histogram." if dp else ".")]
    return ["Label values are not treated as public: they are read from the data and only combinations whose noisy "
            "count clears the DP threshold are published (the threshold's δ is in the ledger)."]


def _carry_over_spending(path: Path, ledger: Any) -> None:
    """On --resume, start from what the interrupted run already spent (read before anything rewrites the file).

    The interrupted run's steps include those taken after its last checkpoint: they stay counted. A resume whose
    settings would change the mechanisms (another ε, batch size, N…) is refused: two plans cannot share a ledger.
    """
    from dpsynth.privacy.accounting import DpSgdMechanism, GaussianMechanism
    from dpsynth.privacy.ledger import PrivacyLedger

    if not path.is_file():
        return
    prior = PrivacyLedger.read(path)
    new = next(m for m in ledger.mechanisms if isinstance(m, DpSgdMechanism))
    old = next((m for m in prior.mechanisms if isinstance(m, DpSgdMechanism)), None)
    if old is None or not math.isclose(old.noise_multiplier, new.noise_multiplier, rel_tol=1e-9) \
            or not math.isclose(old.sample_rate, new.sample_rate, rel_tol=1e-12) or prior.delta != ledger.delta:
        raise DpsynthError(f"--resume: the settings differ from the interrupted run in {path.parent} (its noise, "
                           "sampling rate or δ would change); resume without the options that change them "
                           "(`dpsynth run --resume --out DIR` alone uses the stored settings), or start a new run")
    ledger.set_dpsgd_steps(old.steps)
    for m in prior.mechanisms:
        if isinstance(m, GaussianMechanism):
            ledger.add(m)


def prepare_model(config: RunConfig, prepared: PreparedData, *, device: torch.device) -> None:
    """Put the LoRA adapters on (seeded) and the model on the device; with DP, check that the engine can clip every
    trained layer (one pass on dummy tokens) — before the run writes anything or pays for its label histogram."""
    from dpsynth.models.lora import apply_lora
    from dpsynth.train.dp_trainer import check_clippable

    loaded = prepared.loaded
    torch.manual_seed(config.seed)
    if config.finetune == "lora":
        try:
            loaded.model = apply_lora(loaded.model, r=config.lora_rank, alpha=config.lora_alpha,
                                      target_modules=config.lora_targets or None)
        except (ValueError, TypeError, RuntimeError) as exc:  # peft refusing a module (e.g. a norm, a router)
            raise DpsynthError(f"peft could not put LoRA adapters on {type(loaded.model).__name__} "
                               f"({first_line(exc)}); name the "
                               "projections to adapt with --lora-targets, or use --finetune full") from exc
    loaded.model = loaded.model.to(device)
    if config.private:
        check_clippable(loaded.model, device)
        if device.type == "cpu":
            from dpsynth.privacy.noise import check_cpu_generator

            try:
                check_cpu_generator()
            except RuntimeError as exc:
                raise DpsynthError(str(exc)) from None


def train_stage(config: RunConfig, prepared: PreparedData, budget: BudgetPlanOut, *, device: torch.device,
                precision: str, console: Any, dist_ctx: Any = None) -> dict[str, Any]:
    """Fine-tune (LoRA or full) with DP-SGD, or without DP for ε = ∞. Under torchrun only rank 0 writes."""
    from dpsynth.data.encode import collate
    from dpsynth.privacy.accounting import EpsilonTracker
    from dpsynth.privacy.noise import NoiseSource
    from dpsynth.privacy.sampling import PoissonSampler
    from dpsynth.train.checkpoint import resume_plan, save_checkpoint, trainable_names
    from dpsynth.train.distributed import DistContext
    from dpsynth.train.dp_trainer import (
        DPTrainer,
        DPTrainingPlan,
        StepReport,
        make_optimizer,
        nonprivate_steps,
        train_nonprivate,
    )
    from dpsynth.train.progress import TrainingProgress

    loaded = prepared.loaded
    model = loaded.model  # adapters on and on the device: prepare_model
    # d, the number of trained weights: the DP noise's norm grows with √d, so it is worth showing with the run.
    trained = {"trainable_weights": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "lora_targets": (sorted({n.split(".lora_")[0].rsplit(".", 1)[-1]
                                        for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n})
                                if config.finetune == "lora" else None)}
    records = prepared.records
    pad_id = loaded.pad_id

    def collate_ids(ids: list[int]) -> dict[str, torch.Tensor]:
        return collate([records[i] for i in ids], pad_id=pad_id)

    lengths = records.lengths.tolist()
    lr = config.resolved_learning_rate(budget.expected_batch_size)
    optimizer = make_optimizer(model, lr, config.weight_decay)
    out_dir = config.out

    if not config.private:
        total = nonprivate_steps(len(records), config.resolved_epochs(), int(budget.expected_batch_size))
        with TrainingProgress(total, None, console=console, label="training (no DP)") as bar:
            result = train_nonprivate(model, num_examples=len(records), collate=collate_ids,
                                      epochs=config.resolved_epochs(), batch_size=int(budget.expected_batch_size),
                                      physical_batch_size=config.physical_batch_size, optimizer=optimizer,
                                      device=device, precision=precision, seed=config.seed,
                                      lr_schedule=config.resolved_lr_schedule(), after_step=bar.update)
        return {"steps": result.steps_done, "seconds": result.seconds, "learning_rate": lr,
                "lr_schedule": config.resolved_lr_schedule(), "private": False,
                **trained}

    plan = budget.plan
    ctx = dist_ctx or DistContext()
    # The batches must stay secret: the subsampling amplification assumes nobody can replay them. Secure (default):
    # one secret from rank 0's OS randomness, the same on every rank so they all draw the same global batch.
    if config.secure_rng:
        sampler = PoissonSampler(prepared.num_units, budget.sample_rate,
                                 generator=np.random.default_rng(ctx.shared_secret()), secure=True)
    else:
        sampler = PoissonSampler(prepared.num_units, budget.sample_rate,
                                 generator=np.random.default_rng(seeded_stream(config.seed, "batches")))
    noise = NoiseSource(seed=config.seed + 1, secure=config.secure_rng)
    dp_plan = DPTrainingPlan(steps=budget.steps, sample_rate=budget.sample_rate,
                             expected_batch_size=budget.expected_batch_size,
                             noise_multiplier=plan.dpsgd.noise_multiplier, clip_norm=config.clip_norm,
                             learning_rate=lr, weight_decay=config.weight_decay,
                             lr_schedule=config.resolved_lr_schedule(),
                             physical_batch_size=max(config.physical_batch_size,
                                                     config.max_records_per_user if prepared.units else 1))
    trainer = DPTrainer(model, dp_plan, sampler=sampler, collate=collate_ids, lengths=lengths, noise=noise,
                        optimizer=optimizer, device=device, precision=precision, units=prepared.units,
                        dist_ctx=ctx)
    others = [plan.label_histogram] if plan.label_histogram is not None else []
    tracker = EpsilonTracker(others, plan.dpsgd.noise_multiplier, budget.sample_rate, budget.delta)
    ledger = budget.ledger
    names = trainable_names(model)
    ckpt_dir = out_dir / outputs.CHECKPOINT

    start_step, spent = 0, 0
    if config.resume:
        start_step, spent = _restore_for_resume(ckpt_dir, ledger.dpsgd_steps, model, optimizer, sampler, noise)
        ledger.set_dpsgd_steps(spent)
        if ctx.is_main:
            ledger.write(out_dir / outputs.PRIVACY)
            # what this session continues with
            outputs.write_resume_settings(out_dir, prepared.resume_settings(config))
    remaining = resume_plan(budget.steps, start_step, spent).remaining_steps
    counted = [spent]

    def spend(step: int) -> None:
        counted[0] += 1
        ledger.set_dpsgd_steps(counted[0])
        # interim: a 10× coarser (still upper-bounding) PLD grid, fast enough for every step; the final write is exact
        if ctx.is_main:
            ledger.write(out_dir / outputs.PRIVACY, interim=True)

    with TrainingProgress(budget.steps, tracker.epsilon, start_step=spent, console=console) as bar:

        def after(report: StepReport) -> None:
            bar.update(dataclasses.replace(report, step=counted[0]))
            if ctx.is_main and (report.step % config.checkpoint_every == 0 or counted[0] == budget.steps):
                outputs.write_resume_settings(out_dir, prepared.resume_settings(config))  # before state.pt
                save_checkpoint(ckpt_dir, step=report.step, model=model, names=names, optimizer=optimizer,
                                sampler=sampler, noise=noise)

        result = trainer.train(start_step=start_step, num_steps=remaining, before_update=spend, after_step=after)
    return {"steps": counted[0], "steps_this_session": result.steps_done, "resumed_from_step": start_step,
            "seconds": result.seconds, "examples_seen": result.examples_seen, "learning_rate": lr,
            "lr_schedule": dp_plan.lr_schedule,
            "private": True, "noise_multiplier": plan.dpsgd.noise_multiplier, "noise": noise.describe(), **trained,
            # Private, like examples_seen: each layer's method is re-chosen per micro-batch from its padded length,
            # so the last choice depends on which records the last batch drew (pipeline moves both to data_report).
            "layer_methods": dict(Counter(result.layer_methods.values()))}


def _restore_for_resume(ckpt_dir: Path, spent: int, model: Any, optimizer: Any, sampler: Any,
                        noise: Any) -> tuple[int, int]:
    """(checkpoint step, steps already spent per the carried-over ledger). Lost steps stay spent."""
    ckpt = load_checkpoint(ckpt_dir)
    step = 0
    if ckpt is not None:
        try:
            restore_checkpoint(ckpt, model=model, optimizer=optimizer, sampler=sampler, noise=noise)
        except (ValueError, RuntimeError) as exc:  # RuntimeError: torch's size mismatch (e.g. another LoRA rank)
            raise DpsynthError(f"--resume: the checkpoint in {ckpt_dir} does not fit this run "
                               f"({first_line(exc)}); resume with the settings stored with it (`dpsynth run "
                               "--resume --out DIR` alone)") from None
        step = ckpt.step
    return step, max(step, spent)


def save_model(config: RunConfig, prepared: PreparedData, target: Path) -> Path:
    """Save the adapter (LoRA) or the full model, with the tokenizer, written to a staging folder first."""
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    from dpsynth.models.loading import quiet_progress_bars

    model = prepared.loaded.model
    with quiet_progress_bars():  # transformers' "Writing model shards" bar would cut through the run's display
        model.save_pretrained(staging)
    prepared.loaded.tokenizer.save_pretrained(staging)
    outputs.write_json_atomic(staging / "dpsynth_model.json",
                              {"base_model": config.model or "default", "finetune": config.finetune})
    outputs.replace_dir_atomic(staging, target)
    return target


def seeded_stream(seed: int, purpose: str) -> np.random.SeedSequence:
    """The seeded (--no-secure-rng) stream of one mechanism. Each purpose gets its own stream from the one --seed:
    mechanisms composed by the accountant must draw independent randomness, and `default_rng(seed)` in two places
    would hand the batch sampler and the label histogram the very same bits."""
    return np.random.SeedSequence([abs(seed), int(seed < 0), *purpose.encode()])


def build_label_distribution(config: RunConfig, prepared: PreparedData, budget: BudgetPlanOut,
                             dist_ctx: Any = None) -> Any:
    """Where the sampled control codes come from: a DP histogram (paid for), uniform, or a declared public file.

    Label values are declared (--label-values) or read from the data; read from the data, the DP histogram
    publishes only combinations whose noisy count clears a threshold (its δ is in the ledger), so a value only one
    record holds is not revealed by the sampled labels. Under torchrun every rank builds it; with --secure-rng the
    histogram's noise comes from rank 0's secret, so every rank draws the same noisy histogram."""
    from dpsynth.privacy.accounting import threshold_failure_probability
    from dpsynth.sample.labels import (
        dp_label_histogram,
        label_distribution_from_dict,
        public_label_distribution,
        read_label_values,
    )
    from dpsynth.train.distributed import DistContext

    if not config.label_columns:
        return None
    cols = list(config.label_columns)
    declared = read_label_values(config.label_values, cols) if config.label_values is not None else None
    if config.label_distribution == "dp":
        if not config.private:
            # ε = ∞: no privacy to protect; the exact distribution is used and the ledger says non-private.
            return dp_label_histogram(prepared.table, cols, noise_multiplier=0.0, categories=declared)
        hist = budget.plan.label_histogram
        saved = config.out / outputs.LABELS
        already_paid = any(m == hist for m in budget.ledger.mechanisms)
        if already_paid and saved.is_file():
            # A resumed run already released (and paid for) its histogram: reuse it, never draw a second one.
            return label_distribution_from_dict(json.loads(saved.read_text()))
        if already_paid:
            # A second draw would be a second release (secure noise, or a seed changed on resume), and the
            # threshold's δ was sized for one.
            raise DpsynthError(f"--resume: {outputs.LABELS} is missing from {config.out}, but the interrupted run "
                               "already paid for its DP label histogram; put the file back, or start again with "
                               "--overwrite")
        budget.ledger.add(hist)
        generator = np.random.default_rng((dist_ctx or DistContext()).shared_secret() if config.secure_rng
                                          else seeded_stream(config.seed, "label histogram"))
        # One user changes up to `cap` counts by 1 each, possibly all in one cell: L2 sensitivity ≤ cap.
        cap = config.max_records_per_user if prepared.units is not None else 1
        failure = (threshold_failure_probability(hist.threshold_delta, config.epsilon)
                   if hist.threshold_delta > 0 else None)
        return dp_label_histogram(prepared.table, cols, noise_multiplier=hist.noise_multiplier,
                                  sensitivity=float(cap), categories=declared, generator=generator,
                                  threshold_failure_probability=failure, cells_per_unit=cap)
    if str(config.label_distribution).strip().lower() == "uniform" and declared is None:
        raise DpsynthError("--label-distribution uniform needs the label values declared: pass --label-values with "
                           'a JSON file such as {"sentiment": ["negative", "positive"]} (reading them from the data '
                           "would publish every value, even one only a single record has)")
    budget.ledger.notes.append(f"Labels for sampling come from a distribution declared public: "
                               f"{config.label_distribution}.")
    return public_label_distribution(config.label_distribution, cols, declared)


def check_sampling_fits(config: RunConfig, prepared: PreparedData, labels: Any) -> None:
    """Refuse, before training, a --max-new-tokens that would run past the model's positions after the longest
    prompt sampling will use (the check generation itself makes). The prompts are those of the label
    distribution — published or declared, so the advised number reveals nothing private."""
    from dpsynth.sample.generate import check_fits_context, encode_prompts
    from dpsynth.sample.sampler import build_prompt

    cols = list(config.label_columns)
    prompts = [build_prompt(c, cols) for c in labels.combos] if labels is not None and cols else [""]
    longest = max(len(ids) for ids in encode_prompts(prepared.loaded.tokenizer, prompts))
    check_fits_context(prepared.loaded.model, longest, config.resolved_max_new_tokens())


def sample_stage(config: RunConfig, prepared: PreparedData, labels: Any, *, device: torch.device,
                 console: Any, dist_ctx: Any = None) -> dict[str, Any]:
    """Generate --num-samples records into synthetic.csv (resumable).

    Under torchrun every rank calls this with its `dist_ctx`: the chunks are split across ranks and rank 0 merges
    them into the file one process would write (`dpsynth.sample.sampler._sample_sharded`).
    """
    from dpsynth.sample.sampler import DecodingConfig, SamplingSettingsChanged, sample_synthetic

    loaded = prepared.loaded
    model = loaded.model.to(device).eval()
    n = config.num_samples or prepared.num_units
    decoding = DecodingConfig(top_k=config.top_k, top_p=config.top_p, temperature=config.temperature,
                              repetition_penalty=config.repetition_penalty,
                              max_new_tokens=config.resolved_max_new_tokens(),
                              min_new_tokens=config.min_new_tokens)

    def sample(resume: bool) -> Any:
        return sample_synthetic(model, loaded.tokenizer, labels, n, config.out / outputs.SYNTHETIC,
                                label_columns=list(config.label_columns), text_column=config.text_column,
                                decoding=decoding, seed=config.seed, batch_size=config.sample_batch_size,
                                resume=resume, progress=True, drop_duplicates=config.drop_duplicates,
                                add_bos=False, dist_ctx=dist_ctx)

    try:
        report = sample(config.resume)
    except SamplingSettingsChanged:
        if dist_ctx is not None and dist_ctx.enabled:
            raise  # every rank would have to agree to start over; one process can
        # A resumed run whose sampling settings changed (or were sampled by an older dpsynth): sampling is free
        # post-processing of the trained model, so start the file over rather than send the user to --overwrite,
        # which would retrain (a second release).
        console.print(f"{outputs.SYNTHETIC} was being sampled with other settings: sampling it again")
        report = sample(False)
    return report.to_dict()
