"""The one typed configuration of a run, validated once at the edge (CLI flags, a TOML file, or Python).

Defaults are chosen for small private datasets (1K–100K records) on the bundled SmolLM2-135M; every default that
depends on the data uses only N, the number of privacy units, which dpsynth treats as public (as DP-SGD
accountants do) and says so in the privacy report.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DecodingConfig:
    """How synthetic records are sampled: the one place the decoding defaults live (the reference recipe's top-k 50
    and top-p 0.9). `min_new_tokens=1` bars end-of-sequence as the first token: barring EOS there and renormalising
    is exactly re-drawing that token until it is not EOS, i.e. the model's distribution given a non-empty record —
    what dropping empty records keeps — at no extra generation. 0 restores plain sampling. `top_k=0` disables
    top-k, `top_p=1` nucleus filtering; `top_k=1` or `temperature=0` is greedy."""

    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    min_new_tokens: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise DpsynthError(f"--min-new-tokens ({self.min_new_tokens}) must be between 0 and --max-new-tokens "
                               f"({self.max_new_tokens}), and --max-new-tokens at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise DpsynthError("decoding needs --temperature ≥ 0, 0 < --top-p ≤ 1, --top-k ≥ 0 and "
                               "--repetition-penalty > 0")

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature == 0


DECODING = DecodingConfig()
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
    epochs: float | None = Field(None, gt=0, description="Passes over the data; default 4.")
    batch_size: int | None = Field(None, ge=1, description="Expected logical batch size q·N; default N/8, at most "
                                                          "1,000, with DP; 32 without.")
    physical_batch_size: int = Field(8, ge=1, description="Examples per forward pass (memory, not privacy).")
    learning_rate: float | None = Field(None, gt=0, description="AdamW learning rate; default by --finetune (LoRA "
                                                               "with DP: 2e-3 up to batch 100, rising linearly "
                                                               "to 1e-2 at batch 250 and above; full with DP "
                                                               "1e-4; without DP 2e-3 LoRA, 5e-5 full).")
    lr_schedule: Literal["constant", "linear"] | None = Field(
        None, description="Learning rate over the run: constant, or linear decay from --learning-rate down to "
                          "1/steps of it at the last step; default constant.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    checkpoint_every: int = Field(20, ge=1, description="Checkpoint every this many logical steps (what --resume "
                                                        "continues from).")

    # --- sampling
    num_samples: int | None = Field(None, ge=1, description="Synthetic records to write; default one per training "
                                                            "record (one per user with --user-column).")
    top_k: int = Field(DECODING.top_k, ge=0, description="Top-k sampling (0 disables).")
    top_p: float = Field(DECODING.top_p, gt=0, le=1, description="Nucleus sampling mass.")
    temperature: float = Field(DECODING.temperature, gt=0, description="Sampling temperature.")
    repetition_penalty: float = Field(DECODING.repetition_penalty, gt=0, description="Repetition penalty (1 "
                                                                                        "disables).")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens per synthetic record; default --max-tokens.")
    min_new_tokens: int = Field(
        DECODING.min_new_tokens, ge=0, description="Tokens before a record may end (1: never before its first token, "
                                                   "so empty records become rare; 0: plain sampling). Empty records "
                                                   "are dropped (and redrawn) either way.")
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
        return self.epochs if self.epochs is not None else 4.0  # with and without DP: docs/training.md

    def resolved_batch_size(self, num_units: int) -> int:
        """Default expected batch size: large batches help DP-SGD's signal-to-noise, but a small dataset needs
        enough steps; 1/8 of the data (32 steps in 4 epochs) is the measured middle ground (N is treated as public),
        capped at 1,000 so that a large dataset still takes many steps (docs/training.md)."""
        if self.batch_size is not None:
            return min(self.batch_size, num_units)
        if not self.private:
            return min(32, num_units)
        return max(1, min(MAX_DEFAULT_BATCH, num_units // 8))

    def resolved_learning_rate(self, expected_batch_size: float) -> float:
        """The given LR, else the default for --finetune. LoRA under DP grows it with the expected batch, because a
        larger batch carries less noise per step and can take larger steps: linear between the measured optima,
        2e-3 up to batch 100 and 1e-2 from batch 250, nothing larger (docs/training.md)."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.finetune == "lora":
            if not self.private:  # 5e-4 × 2 epochs left ε = ∞ undertrained on longer texts (docs/training.md)
                return 2e-3
            position = min(1.0, max(0.0, (expected_batch_size - 100) / 150))
            return 2e-3 + position * 8e-3
        return 1e-4 if self.private else 5e-5

    def resolved_max_new_tokens(self) -> int:
        return self.max_new_tokens or self.max_tokens

    def decoding(self) -> DecodingConfig:
        return DecodingConfig(top_k=self.top_k, top_p=self.top_p, temperature=self.temperature,
                              repetition_penalty=self.repetition_penalty,
                              max_new_tokens=self.resolved_max_new_tokens(), min_new_tokens=self.min_new_tokens)

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


def read_config_file(toml_path: Path) -> dict[str, Any]:
    """The settings of a TOML config file (names as `dpsynth run --help` has them, without the dashes)."""
    try:
        with open(toml_path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise DpsynthError(f"config file {toml_path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise DpsynthError(f"config file {toml_path} is not valid TOML ({exc})") from None
    unknown = [k for k in raw if k.replace("-", "_") not in RunConfig.model_fields]
    if unknown:
        raise DpsynthError(f"config file {toml_path} has an unknown setting '{unknown[0]}'; the names are those "
                           "of `dpsynth run --help` without the dashes in front (e.g. learning-rate = 1e-3)")
    return {k.replace("-", "_"): v for k, v in raw.items()}


def config_from_sources(toml_path: Path | None, overrides: dict[str, Any], *,
                        stored: dict[str, Any] | None = None) -> RunConfig:
    """A TOML config file, settings stored by an interrupted run (for --resume) and command-line flags, in that
    order of precedence (flags win), as one validated RunConfig; a bad value is one DpsynthError sentence."""
    from_file = read_config_file(toml_path) if toml_path is not None else {}
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        return RunConfig(**{**from_file, **(stored or {}), **flags})
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc)) from None


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
