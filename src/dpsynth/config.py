"""The one typed configuration of a run, validated once at the edge (CLI flags, a TOML file, or Python).

Defaults are chosen for small private datasets (1K–100K records) on the bundled SmolLM2-135M; every default that
depends on the data uses only N, the number of privacy units, which dpsynth treats as public (as DP-SGD
accountants do) and says so in the privacy report.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from dpsynth.errors import DpsynthError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def split_comma_list(value: Any) -> Any:
    """`"a, b"` → `["a", "b"]`: list options are comma-separated on the command line."""
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return value


MAX_EPSILON = 100.0  # beyond this DP-SGD's noise is negligible; the accountant's search would also blow up
MAX_DEFAULT_BATCH = 1000  # the default expected batch is N/8 up to this (see RunConfig.resolved_batch_size)


def check_text_and_labels(text_column: str, label_columns: list[str], user_column: str | None = None) -> None:
    """The text, label and user columns must be distinct: one column cannot play two roles."""
    if text_column in label_columns:
        raise ValueError(f"the text column '{text_column}' cannot also be a label column")
    if len(set(label_columns)) != len(label_columns):
        raise ValueError("a label column is listed twice")
    if user_column and (user_column == text_column or user_column in label_columns):
        raise ValueError("the user column must differ from the text and label columns")


class RunConfig(BaseModel):
    """Everything `dpsynth run` needs. Field docs double as `--help` texts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data
    data: Path = Field(description="Private dataset: CSV, TSV, JSONL or Parquet (optionally compressed).")
    text_column: str = Field("text", description="Column holding the text to synthesise.")
    label_columns: list[str] = Field(default_factory=list, description="Label columns written as control codes.")
    user_column: str | None = Field(None, description="Column identifying users: makes the user the privacy unit.")
    max_records_per_user: int = Field(8, ge=1, description="With --user-column: keep at most this many per user.")
    drop_empty: bool = Field(False, description="Drop records whose text is empty instead of refusing the file.")
    max_label_values: int = Field(100, ge=2, description="Refuse label columns with more distinct values.")
    max_tokens: int = Field(128, ge=8, le=4096, description="Fixed (public) training length in tokens.")
    loss_on_prefix: bool = Field(
        False, description="Also train on the control-code tokens (the reference recipe does; sampling is given the "
                           "codes, so by default the clipped gradient is spent on the text alone).")

    # --- output
    out: Path = Field(description="Output folder for synthetic data, model, privacy.json and run.json.")
    overwrite: bool = Field(False, description="Replace an existing run in --out.")
    resume: bool = Field(False, description="Continue an interrupted run in --out from its last checkpoint; its "
                                            "options are stored there, so `--resume --out DIR` is enough (from "
                                            "Python: dpsynth.resume(DIR)).")

    # --- model
    model: str | None = Field(None, description="Local Hugging Face folder or hub name; default: bundled SmolLM2.")
    finetune: Literal["lora", "full"] = Field("lora", description="Train LoRA adapters or all weights.")
    lora_rank: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator.")
    lora_targets: list[str] = Field(
        default_factory=list,
        description="Projection names to adapt (e.g. q_proj,v_proj); default every projection in the blocks.")

    # --- privacy
    epsilon: float = Field(4.0, gt=0, description="Target ε for the whole run; 'inf' trains without DP.")
    delta: float | None = Field(None, gt=0, lt=1, description="Target δ; default 1/(N·ln N).")
    clip_norm: float = Field(1.0, gt=0, description="Per-example gradient clipping bound C.")
    label_budget_fraction: float = Field(
        0.05, gt=0, lt=1, description="Share of ε spent on the DP label histogram used for sampling.")
    label_distribution: str = Field(
        "dp", description="'dp' (noisy histogram, paid from ε), 'uniform' (needs --label-values), or a "
                           "public CSV/JSON of label weights.")
    label_values: Path | None = Field(
        None, description="Public JSON file declaring every label column's values, e.g. {\"sentiment\": "
                          "[\"negative\", \"positive\"]}. Without it the values are read from the data and the DP "
                          "histogram publishes only combinations frequent enough to clear a noise threshold.")
    secure_rng: bool = Field(True, description="Draw the DP noise, the Poisson batches and the label histogram's "
                                               "noise from OS randomness (default). --no-secure-rng seeds them from "
                                               "--seed so a run can be repeated exactly; then anyone who knows the "
                                               "seed can undo the noise, so the seed must stay secret.")

    # --- training
    epochs: float | None = Field(None, gt=0, description="Passes over the data; default 4 with DP, 2 without.")
    batch_size: int | None = Field(None, ge=1, description="Expected logical batch size q·N; default N/8, at most "
                                                          "1,000, with DP; 32 without.")
    physical_batch_size: int = Field(8, ge=1, description="Examples per forward pass (memory, not privacy).")
    learning_rate: float | None = Field(None, gt=0, description="AdamW learning rate; default by --finetune (LoRA "
                                                               "with DP: 2e-3 up to batch 100, rising linearly "
                                                               "to 1e-2 at batch 250 and above; full with DP "
                                                               "1e-4; without DP 5e-4 LoRA, 5e-5 full).")
    lr_schedule: Literal["constant", "linear"] | None = Field(
        None, description="Learning rate over the run: constant, or linear decay from --learning-rate down to "
                          "1/steps of it at the last step; default constant.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    checkpoint_every: int = Field(20, ge=1, description="Checkpoint every this many logical steps (what --resume "
                                                        "continues from).")

    # --- sampling
    num_samples: int | None = Field(None, ge=1, description="Synthetic records to write; default one per training "
                                                            "record (one per user with --user-column).")
    top_k: int = Field(50, ge=0, description="Top-k sampling (0 disables).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    repetition_penalty: float = Field(1.0, gt=0, description="Repetition penalty (1 disables).")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens per synthetic record; default --max-tokens.")
    min_new_tokens: int = Field(1, ge=0, description="Tokens before a record may end (1: never before its first "
                                                     "token, so empty records become rare; 0: plain sampling). "
                                                     "Empty records are dropped (and redrawn) either way.")
    sample_batch_size: int = Field(64, ge=1, description="Prompts per generation batch.")
    drop_duplicates: bool = Field(False, description="Remove exact duplicate synthetic records (same text and labels) "
                                                     "and redraw them with the same labels, up to 5 extra rounds "
                                                     "(free post-processing).")

    # --- execution
    seed: int = Field(0, description="Seed for initialisation and text sampling (and, with --no-secure-rng only, "
                                     "the DP noise and batches).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train and sample.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast on GPU by default.")

    _split_labels = field_validator("label_columns", mode="before")(lambda v: split_comma_list(v))
    _split_targets = field_validator("lora_targets", mode="before")(lambda v: split_comma_list(v))

    @field_validator("epsilon", mode="before")
    @classmethod
    def _parse_inf(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in {"inf", "infinity", "none"}:
            return math.inf
        return v

    @field_validator("epsilon")
    @classmethod
    def _meaningful_epsilon(cls, v: float) -> float:
        if math.isfinite(v) and v > MAX_EPSILON:
            raise ValueError(f"ε = {v:g} protects nothing (a factor e^{v:g} between neighbouring datasets) and "
                             f"cannot be planned; use at most {MAX_EPSILON:g}, or --epsilon inf to train without DP")
        return v

    @field_validator("model")
    @classmethod
    def _absolute_model_path(cls, v: str | None) -> str | None:
        """A local folder is stored absolute: the run's adapter names its base model, and `dpsynth sample` may run
        from another directory."""
        if v is not None and Path(v).expanduser().exists():
            return str(Path(v).expanduser().resolve())
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        check_text_and_labels(self.text_column, self.label_columns, self.user_column)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; pick one")
        if self.min_new_tokens > self.resolved_max_new_tokens():
            raise ValueError(f"--min-new-tokens ({self.min_new_tokens}) cannot exceed --max-new-tokens "
                             f"({self.resolved_max_new_tokens()})")
        return self

    # ------------------------------------------------------------------ derived defaults
    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def resolved_epochs(self) -> float:
        return self.epochs if self.epochs is not None else (4.0 if self.private else 2.0)

    def resolved_batch_size(self, num_units: int) -> int:
        """Default expected batch size: large batches help DP-SGD's signal-to-noise, but a small dataset needs
        enough steps; 1/8 of the data (32 steps in 4 epochs) is the measured middle ground (N is treated as public).
        Capped at 1,000 so that a large dataset still takes many steps: at N = 5,000, batch 625 (q = 1/8) and 1,250
        (q = 1/4) both beat the former cap of 256 (docs/training.md); above N = 8,000 the rate falls below 1/8."""
        if self.batch_size is not None:
            return min(self.batch_size, num_units)
        if not self.private:
            return min(32, num_units)
        return max(1, min(MAX_DEFAULT_BATCH, num_units // 8))

    def resolved_learning_rate(self, expected_batch_size: float) -> float:
        """The given LR, else the default for --finetune. LoRA under DP grows it with the expected batch, because a
        larger batch carries less noise per step and can take larger steps. Between the measured optima it is
        linear: 2e-3 up to batch 100 (N = 800: 4e-3 and 5e-3 were no better), 1e-2 from batch 250 (N = 2,000:
        better than 5e-3 on two seeds and than 2e-3 on one); nothing larger was measured, so nothing larger is used
        (docs/training.md)."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.finetune == "lora":
            if not self.private:
                return 5e-4
            position = min(1.0, max(0.0, (expected_batch_size - 100) / 150))
            return 2e-3 + position * 8e-3
        return 1e-4 if self.private else 5e-5

    def resolved_max_new_tokens(self) -> int:
        return self.max_new_tokens or self.max_tokens

    def resolved_lr_schedule(self) -> str:
        return self.lr_schedule or "constant"

    def resume_settings(self) -> dict[str, Any]:
        """The settings stored with a checkpoint for `--resume`: everything but where and how to write, with files
        made absolute so that the run can be continued from another directory."""
        settings = self.model_dump(mode="json", exclude={"out", "resume", "overwrite"})
        for key in ("data", "label_values", "label_distribution"):
            value = settings.get(key)
            if value is None or value in ("dp", "uniform"):  # not files
                continue
            path = Path(value).expanduser()
            if path.exists():  # absolute, not resolved: other nodes may reach the same file by another link
                settings[key] = str(path.absolute())
        return settings


# The run settings `dpsynth audit` takes from its user and passes unchanged to every `dpsynth run` it starts.
# RunConfig holds their one definition; a config that passes them on declares each with `run_setting`, so defaults,
# bounds and help texts cannot drift apart (tests/test_config.py checks AuditConfig declares all of them).
RUN_SETTINGS: tuple[str, ...] = (
    "text_column", "label_columns", "user_column", "max_records_per_user", "drop_empty", "max_tokens", "loss_on_prefix",
    "model", "finetune", "lora_rank", "lora_targets", "delta", "clip_norm", "label_distribution", "label_values",
    "epochs",
    "batch_size", "physical_batch_size", "learning_rate", "lr_schedule", "checkpoint_every", "num_samples",
    "max_new_tokens",
    "sample_batch_size", "seed", "device", "precision",
)


def run_setting(name: str, note: str = "") -> Any:
    """RunConfig's field `name` (default, bounds, help text) for another config's field of the same name and type.

    Why: a setting passed on to `dpsynth run` must accept and default exactly as `dpsynth run` does. `note` appends
    a sentence to the help text for what the setting also does in the other command.
    """
    fld = RunConfig.model_fields[name]
    return FieldInfo.merge_field_infos(fld, description=f"{fld.description} {note}" if note else fld.description)


def config_from_sources(toml_path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Merge a TOML config file with command-line flags (flags win) into one validated RunConfig."""
    from_file: dict[str, Any] = {}
    if toml_path is not None:
        try:
            with open(toml_path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise DpsynthError(f"config file {toml_path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise DpsynthError(f"config file {toml_path} is not valid TOML ({exc})") from None
        from_file = {k.replace("-", "_"): v for k, v in raw.items()}
        unknown = [k for k, v in raw.items() if k.replace("-", "_") not in RunConfig.model_fields]
        if unknown:
            raise DpsynthError(f"config file {toml_path} has an unknown setting '{unknown[0]}'; the names are those "
                               "of `dpsynth run --help` without the dashes in front (e.g. learning-rate = 1e-3)")
    flags = {k: v for k, v in overrides.items() if v is not None}
    values = {**from_file, **flags}
    if values.get("resume") and not values.get("overwrite") and values.get("out") is not None:
        # `dpsynth run --resume --out DIR` is enough: the interrupted run stored the settings it ran with (its
        # TOML file's included) with its checkpoint. They win over the TOML file; flags given now win over them
        # where they may change (RESUME_MAY_CHANGE); any other change is refused when the run starts
        # (refuse_changed_resume_settings, which also sees a RunConfig built in Python).
        values = {**from_file, **_stored_settings(Path(values["out"]), given=values), **flags}
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc)) from None


# What a resumed run may do differently: where it runs, how it checkpoints, and the sampling still to come (the
# seed: the weights, batches and noise state come from the checkpoint). The data file may move (its contents are
# checked against the digest stored with the checkpoint). Everything else defines what was trained so far and what
# the ledger counts.
RESUME_MAY_CHANGE = frozenset({
    "data", "out", "resume", "overwrite", "device", "precision", "physical_batch_size", "checkpoint_every",
    "num_samples", "top_k", "top_p", "temperature", "repetition_penalty", "max_new_tokens", "min_new_tokens",
    "sample_batch_size", "drop_duplicates", "seed",
})


def refuse_changed_resume_settings(config: RunConfig) -> None:
    """Refuse, by name, a setting outside RESUME_MAY_CHANGE that differs from the one stored with the checkpoint
    (none stored, or stored by an older version: the ledger's and the checkpoint's own checks still apply).

    Why: half the steps at one setting and half at another is neither run; the records (run.json, the ledger's
    clip norm) would describe only the new value, and some changes (another LoRA rank, model) cannot load the
    checkpoint at all.
    """
    from dpsynth import outputs

    before = normalised_run_settings({**(outputs.read_resume_settings(Path(config.out)) or {}),
                                      "out": config.out, "resume": True})
    if before is None:
        return
    now = config.model_dump(mode="json")
    then = RunConfig(**before)
    for key, value in before.items():
        if key in RESUME_MAY_CHANGE or _same_setting(value, now[key]):
            continue
        resolve = _DEFAULT_RESOLVERS.get(key)
        if resolve is not None and resolve(then) == resolve(config):  # the default, left out once and given once
            continue
        flag = "--" + key.replace("_", "-")
        raise DpsynthError(f"--resume continues the run as it started, so {flag} cannot change (it was "
                           f"{value!r}, now {now[key]!r}); drop {flag}, or start a new run with --overwrite")


# Settings whose default follows from other settings alone: giving that default explicitly on --resume is no change.
_DEFAULT_RESOLVERS: dict[str, Any] = {"epochs": RunConfig.resolved_epochs,
                                      "lr_schedule": RunConfig.resolved_lr_schedule}


def normalised_run_settings(settings: dict[str, Any]) -> dict[str, Any] | None:
    """Stored run settings as today's RunConfig dumps them — defaults filled in for settings added since, keys it
    no longer has left out — so old and new records compare; None if they no longer validate."""
    try:
        return RunConfig(**{k: v for k, v in settings.items() if k in RunConfig.model_fields}).model_dump(mode="json")
    except ValidationError:
        return None


def _same_setting(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):  # the same file, named relatively now and absolutely then
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return False


def _stored_settings(out: Path, *, given: dict[str, Any]) -> dict[str, Any]:
    """The settings an interrupted run stored with its checkpoint (settings this version no longer has are left
    out). Without any, the folder's own state explains why: finished, never checkpointed, or an older run."""
    from dpsynth import outputs

    stored = outputs.read_resume_settings(out)
    if stored is None:
        outputs.check_output_folder(out, overwrite=False, resume=True)  # a finished or unstarted run: its message
        if "data" not in given:
            raise DpsynthError(f"{out / outputs.CHECKPOINT} holds no stored settings (an older dpsynth wrote it, or "
                               "it is unreadable): resume with the interrupted run's options given again")
        return {}
    return {k: v for k, v in stored.items() if k in RunConfig.model_fields}


def describe_validation_error(exc: ValidationError) -> str:
    """One sentence from pydantic's first error, naming the option as the user typed it."""
    err = exc.errors()[0]
    loc = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else "the configuration"
    msg = err.get("msg", "is invalid")
    if err.get("type") == "missing":
        return f"{loc} is required"
    if err.get("type") == "extra_forbidden":
        return f"unknown option {loc}; see `dpsynth run --help`"
    if msg.startswith("Value error, "):
        return msg.removeprefix("Value error, ")
    return f"{loc}: {msg}"
