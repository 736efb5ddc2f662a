"""The settings of `dpsynth audit` (field docs double as `--help` texts)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpsynth.config import (
    check_text_and_labels,
    describe_validation_error,
    run_setting,
    split_comma_list,
)
from dpsynth.errors import DpsynthError
from dpsynth.evaluate.canaries import FORMATS


class AuditConfig(BaseModel):
    """Everything `dpsynth audit` needs. Field docs double as `--help` texts.

    The settings it passes on to `dpsynth run` (`config.RUN_SETTINGS`) take RunConfig's definitions through
    `run_setting`: same defaults, bounds and help texts, only their types are written again here.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data and output
    data: Path = run_setting("data")
    text_column: str = run_setting("text_column")
    label_columns: list[str] = run_setting("label_columns")
    user_column: str | None = run_setting("user_column", "Each canary is then one new user, and membership "
                                                          "inference holds out users.")
    max_records_per_user: int = run_setting("max_records_per_user", "This caps the trained copies of a canary too.")
    drop_empty: bool = run_setting("drop_empty")
    out: Path = Field(description="Audit folder: data/ (PRIVATE: your records plus canaries), eps-<ε>/ runs, "
                                  "audit.json.")
    overwrite: bool = Field(False, description="Replace an earlier audit in --out.")
    resume: bool = Field(False, description="Continue an interrupted audit in --out: finished ε runs are reused, an "
                                            "interrupted one continues from its checkpoint (same settings needed).")

    # --- the audit
    epsilons: list[float] = Field(default_factory=lambda: [4.0, math.inf],
                                  description="ε values to train at; 'inf' trains without DP for comparison. "
                                              "Default: 4,inf.")
    formats: list[str] = Field(default_factory=lambda: list(FORMATS),
                               description="Canary formats: name, address, phone, email, plate. Default: all.")
    repetitions: list[int] | None = Field(
        None, description="How often each canary is inserted, comma-separated (e.g. 1,10,100). Default: 1,10,100, "
                          "dropping the largest counts until canaries are at most --max-canary-share of the data.")
    canaries_per_setting: int = Field(1, ge=1, description="Canaries per format and repetition count.")
    max_canary_share: float = Field(0.05, gt=0, lt=1, description="With automatic --repetitions: largest share of "
                                                                  "the training records that canaries may take.")
    num_candidates: int | None = Field(None, ge=1, description="Same-format candidate secrets each true secret is "
                                                               "ranked against. Default: 10,000 on a GPU, 1,000 "
                                                               "on CPU.")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of records held out of training as "
                                                                 "membership-inference non-members.")
    mia_max_records: int = Field(1000, ge=1, description="At most this many held-out records (and as many "
                                                         "training records) for membership inference; users "
                                                         "with --user-column.")
    show_progress: bool = Field(True, description="Show progress bars while ranking canaries.")
    score_batch_size: int | None = Field(None, ge=1, description="Sequences per forward pass when scoring. "
                                                                 "Default: 512 on a GPU, 64 on CPU.")

    # --- passed to every `dpsynth run`
    model: str | None = run_setting("model")
    finetune: Literal["lora", "full"] = run_setting("finetune")
    lora_rank: int = run_setting("lora_rank")
    lora_targets: list[str] = run_setting("lora_targets")
    loss_on_prefix: bool = run_setting("loss_on_prefix")
    delta: float | None = run_setting("delta")
    clip_norm: float = run_setting("clip_norm")
    epochs: float | None = run_setting("epochs")
    batch_size: int | None = run_setting("batch_size")
    physical_batch_size: int = run_setting("physical_batch_size")
    checkpoint_every: int = run_setting("checkpoint_every")
    learning_rate: float | None = run_setting("learning_rate")
    lr_schedule: Literal["constant", "linear"] | None = run_setting("lr_schedule")
    max_tokens: int = run_setting("max_tokens")
    num_samples: int | None = run_setting("num_samples", "The audit writes this many per ε run.")
    max_new_tokens: int | None = run_setting("max_new_tokens")
    sample_batch_size: int = run_setting("sample_batch_size")
    label_distribution: str = run_setting("label_distribution")
    label_values: Path | None = run_setting("label_values")
    seed: int = run_setting("seed", "The audit also draws its held-out split and its canaries from it.")
    device: Literal["auto", "cpu", "cuda"] = run_setting("device", "The audit scores the canaries there too.")
    precision: Literal["auto", "fp32", "bf16"] = run_setting("precision")

    @field_validator("label_columns", "formats", "lora_targets", mode="before")
    @classmethod
    def _split_words(cls, v: Any) -> Any:
        return split_comma_list(v)

    @field_validator("epsilons", "repetitions", mode="before")
    @classmethod
    def _split_numbers(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [c.strip() for c in v.split(",") if c.strip()]
        if isinstance(v, (list, tuple)):
            return [math.inf if isinstance(x, str) and x.lower() in {"inf", "infinity"} else x for x in v]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AuditConfig:
        check_text_and_labels(self.text_column, self.label_columns, self.user_column)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; pick one")
        if not self.epsilons:
            raise ValueError("--epsilons needs at least one value, e.g. 4,inf")
        if any(not e > 0 for e in self.epsilons):
            raise ValueError("every value of --epsilons must be positive (or inf)")
        if len({eps_tag(e) for e in self.epsilons}) != len(self.epsilons):
            raise ValueError("a value of --epsilons is listed twice")
        if not self.formats:
            raise ValueError("--formats needs at least one canary format")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown canary format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError("a canary format is listed twice in --formats")
        if self.repetitions is not None:
            if not self.repetitions or any(r < 1 for r in self.repetitions):
                raise ValueError("every value of --repetitions must be at least 1")
            if len(set(self.repetitions)) != len(self.repetitions):
                raise ValueError("a value of --repetitions is listed twice")
        return self


def make_audit_config(**values: Any) -> AuditConfig:
    """Build an AuditConfig from CLI-style values (None = not given), as one-sentence `DpsynthError`s on failure."""
    try:
        return AuditConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc).replace("dpsynth run --help", "dpsynth audit --help")) \
            from None


def eps_tag(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"
