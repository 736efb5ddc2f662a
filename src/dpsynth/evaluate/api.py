"""`evaluate_synthetic`: the one entry point behind `dpsynth evaluate`.

It reads the real held-out set, the synthetic set and (optionally) the real training set, computes utility,
fidelity and leakage metrics, states the privacy guarantee from the run's ledger, and writes
`OUT/metrics.json` and a self-contained `OUT/report.html`. Each metric lives in its own module; this file only
orders the work, times it, and turns the numbers into warnings.

Privacy of the report itself: it contains aggregates of the real data (proportions, top n-grams, scores) and
synthetic examples, never a real training record. Synthetic records that copy a long passage of a training
record are listed by row number only and never shown as examples, since their text is partly training text.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpsynth.config import check_text_and_labels, describe_validation_error, split_comma_list
from dpsynth.errors import DpsynthError
from dpsynth.evaluate.tables import TextTable, load_text_table

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


class EvaluateConfig(BaseModel):
    """Everything `dpsynth evaluate` needs. Field docs double as `--help` texts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    real: Path = Field(description="Real held-out records (never trained on): the test set and the fidelity reference.")
    synthetic: Path | None = Field(None, description="Synthetic records; default: RUN_DIR/synthetic.csv from --run.")
    out: Path = Field(description="Folder for metrics.json and report.html.")
    overwrite: bool = Field(False, description="Replace an earlier evaluation (metrics.json, report.html) in --out.")
    train: Path | None = Field(None, description="Real training records: train-on-real baseline and copying checks.")
    run: Path | None = Field(None, description="Run folder whose privacy.json states the privacy guarantee (its "
                                               "text and label columns are the defaults here).")
    text_column: str = Field("text", description="Column holding the text.")
    label_columns: list[str] = Field(default_factory=list, description="Label columns to train classifiers on.")

    classifier: Literal["tfidf", "transformer"] = Field(
        "tfidf", description="Downstream classifier: fast TF-IDF + logistic regression, or a fine-tuned encoder.")
    classifier_model: str | None = Field(None, description="Encoder folder for --classifier transformer; default "
                                                           "the bundled MiniLM.")
    classifier_epochs: int = Field(3, ge=1, description="Fine-tuning epochs of the transformer classifier.")
    classifier_batch_size: int = Field(32, ge=1, description="Batch size of the transformer classifier.")
    classifier_learning_rate: float = Field(5e-5, gt=0, description="Learning rate of the transformer classifier.")
    classifier_max_length: int = Field(128, ge=8, description="Tokens per record for the transformer classifier.")

    embeddings: bool = Field(True, description="Compute embedding metrics (precision/recall, FID, MAUVE, "
                                               "nearest-neighbour distances).")
    embedding_model: str | None = Field(None, description="Local sentence-transformers folder; default the bundled "
                                                          "all-MiniLM-L6-v2.")
    k: int = Field(3, ge=1, description="Neighbours for the precision/recall support estimate.")
    max_fidelity_records: int | None = Field(
        5000, ge=10, description="Embed at most this many records per set (seeded subsample).")
    copy_ngram: int = Field(8, ge=2, description="Flag synthetic records sharing this many consecutive words with a "
                                                 "training record.")
    mia_model: str | None = Field(None, description="Causal LM folder (e.g. RUN_DIR/model) for a loss-based "
                                                    "membership-inference test of --train vs --real.")
    mia_max_records: int = Field(1000, ge=2, description="Records per side for membership inference.")
    num_examples: int = Field(8, ge=0, description="Synthetic examples shown in the report.")
    record_noun: str = Field("record", description="What one record is, for the privacy statement (e.g. review).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to embed and fine-tune.")
    seed: int = Field(0, description="Seed for subsampling, classifiers, k-means (MAUVE) and examples.")
    show_progress: bool = Field(True, description="Show progress bars.")

    _split_labels = field_validator("label_columns", mode="before")(lambda v: split_comma_list(v))

    @model_validator(mode="after")
    def _consistent(self) -> EvaluateConfig:
        check_text_and_labels(self.text_column, self.label_columns)
        if self.synthetic is None and self.run is None:
            raise ValueError("pass --synthetic, or --run RUN_DIR holding synthetic.csv")
        return self

    def synthetic_path(self) -> Path:
        return self.synthetic if self.synthetic is not None else Path(self.run or ".") / "synthetic.csv"


def make_config(**values: Any) -> EvaluateConfig:
    """Build an EvaluateConfig, turning validation errors into one-sentence `DpsynthError`s. With --run, the text
    and label columns default to the run's (the synthetic file has them; the real files should too)."""
    if values.get("run") is not None:
        for key, value in _run_columns(Path(values["run"])).items():
            if values.get(key) is None:
                values[key] = value
    try:
        return EvaluateConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc)) from None


def _run_columns(run_dir: Path) -> dict[str, Any]:
    """The text and label columns a finished run was made with ({} if its run.json cannot be read)."""
    try:
        config = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k: config[k] for k in ("text_column", "label_columns") if k in config}


@dataclass
class EvaluationResult:
    """What an evaluation produced: the metrics (as written to metrics.json) and where the files are."""

    metrics: dict[str, Any]
    metrics_path: Path
    report_path: Path
    warnings: list[str] = field(default_factory=list)

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(metric, value, what good looks like) rows for a rich table in the CLI."""
        from dpsynth.report.summary import summary_rows

        return summary_rows(self.metrics)


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - start, 3)


def _input_info(path: Path | None, table: TextTable | None) -> dict[str, Any] | None:
    if path is None or table is None:
        return None
    return {"path": str(path), "records": len(table), "dropped_empty": table.dropped_empty}


def _load_inputs(cfg: EvaluateConfig) -> tuple[TextTable, TextTable, TextTable | None]:
    syn_path = cfg.synthetic_path()
    if cfg.synthetic is None and not syn_path.is_file():
        raise DpsynthError(f"--run {cfg.run} holds no synthetic.csv; pass --synthetic explicitly")
    real = load_text_table(cfg.real, "real", cfg.text_column, cfg.label_columns)
    syn = load_text_table(syn_path, "synthetic", cfg.text_column, cfg.label_columns)
    train = load_text_table(cfg.train, "train", cfg.text_column, cfg.label_columns) if cfg.train else None
    return real, syn, train


def evaluate_synthetic(cfg: EvaluateConfig) -> EvaluationResult:
    """Run every metric, write OUT/metrics.json and OUT/report.html, and return the metrics."""
    from dpsynth.evaluate import leakage, textstats, utility
    from dpsynth.report.privacy_text import describe_privacy, load_ledger

    _check_output_folder(cfg)  # before minutes of work: an earlier evaluation is not replaced unasked
    timer = _Timer()
    warnings: list[str] = []
    with timer("read"):
        real, syn, train = _load_inputs(cfg)
        ledger = load_ledger(cfg.run) if cfg.run is not None else None
    statement = describe_privacy(ledger, noun=cfg.record_noun)
    warnings.extend(statement.warnings)

    if train is not None:
        overlap = len(set(real.texts) & set(train.texts))
        if overlap:
            warnings.append(f"{overlap} record(s) of the real test set also appear in the training set; a test set "
                            "must be held out, otherwise utility and leakage numbers are biased.")
    if min(len(real), len(syn)) < 50:
        warnings.append(f"Small sets (real {len(real)}, synthetic {len(syn)} records): the metrics below are noisy.")

    metrics: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"real": _input_info(cfg.real, real), "synthetic": _input_info(cfg.synthetic_path(), syn),
                   "train": _input_info(cfg.train, train), "run": str(cfg.run) if cfg.run else None,
                   "text_column": cfg.text_column, "label_columns": list(cfg.label_columns)},
        "settings": {"classifier": cfg.classifier, "embedding_model": cfg.embedding_model or "all-MiniLM-L6-v2 "
                     "(bundled)", "k": cfg.k, "max_fidelity_records": cfg.max_fidelity_records,
                     "copy_ngram": cfg.copy_ngram, "seed": cfg.seed},
        "privacy": statement.to_dict() | {"ledger": ledger},
    }

    # ---- utility
    settings = utility.TransformerSettings(
        model=cfg.classifier_model, epochs=cfg.classifier_epochs, batch_size=cfg.classifier_batch_size,
        learning_rate=cfg.classifier_learning_rate, max_length=cfg.classifier_max_length, device=cfg.device,
        seed=cfg.seed, show_progress=cfg.show_progress)
    results = []
    with timer("utility"):
        for col in cfg.label_columns:
            res = utility.utility_for_column(
                col, (syn.texts, syn.labels[col]), (real.texts, real.labels[col]),
                (train.texts, train.labels[col]) if train is not None else None,
                classifier=cfg.classifier, transformer=settings, seed=cfg.seed)
            results.append(res.to_dict())
    metrics["utility"] = results

    # ---- text statistics
    with timer("text_statistics"):
        metrics["lengths"] = textstats.length_comparison(real.texts, syn.texts)
        metrics["labels"] = {c: textstats.label_comparison(real.labels[c], syn.labels[c]) for c in cfg.label_columns}
        metrics["ngrams"] = textstats.ngram_comparison(real.texts, syn.texts)
        metrics["topics"] = textstats.topic_comparison(real.texts, syn.texts, seed=cfg.seed)
    for col, comp in metrics["labels"].items():
        if comp["missing_in_synthetic"]:
            warnings.append(f"Label column {col!r}: {len(comp['missing_in_synthetic'])} value(s) of the real data "
                            "never occur in the synthetic data.")

    # ---- leakage: verbatim copying (needs the training set)
    copy = None
    if train is not None:
        with timer("copying"):
            copy = leakage.copied_ngrams(syn.texts, train.texts, n=cfg.copy_ngram, seed=cfg.seed)
        if copy.num_with_copy:
            warnings.append(
                f"{copy.num_with_copy} of {copy.num_synthetic} synthetic records ({copy.fraction:.1%}) contain a "
                f"run of ≥ {cfg.copy_ngram} consecutive words that also occurs in a training record (possible "
                "verbatim copying). They are listed by row number in metrics.json and not shown in this report.")
    flagged = set(copy.synthetic_indices) if copy else set()

    # ---- embeddings: fidelity and nearest-neighbour leakage
    fidelity: dict[str, Any] | None = None
    nearest: dict[str, Any] | None = None
    pca: dict[str, Any] | None = None
    if cfg.embeddings:
        fidelity, nearest, pca = _embedding_metrics(cfg, real, syn, train, timer)
        if nearest and nearest["closer_to_train"] > 0.6:
            warnings.append(
                f"{nearest['closer_to_train']:.0%} of synthetic records are closer to a training record than to "
                "any held-out real record (≈ 50% expected): the generator may have memorised training data.")

    # ---- membership inference (optional; needs a model and the training set)
    mia = None
    if cfg.mia_model is not None:
        if train is None:
            raise DpsynthError("--mia-model needs --train (the members) besides --real (the non-members)")
        with timer("membership_inference"):
            mia = _membership_inference(cfg, real, train)
        if mia["auc"] > 0.6:
            warnings.append(f"Loss-based membership inference reaches AUC {mia['auc']:.2f} (0.5 = no signal): the "
                            "model's losses tell training records apart from unseen ones.")

    metrics["fidelity"] = fidelity
    metrics["leakage"] = {"copying": copy.to_dict() if copy else None, "nearest_neighbour": nearest,
                          "membership_inference": mia}
    metrics["warnings"] = warnings
    metrics["examples"] = _examples(syn, flagged, cfg.num_examples, cfg.seed)
    metrics["timings_s"] = timer.times

    from dpsynth.outputs import write_json_atomic
    from dpsynth.report.html import write_report

    cfg.out.mkdir(parents=True, exist_ok=True)
    metrics_path = cfg.out / METRICS_FILE
    report_path = cfg.out / REPORT_FILE
    with timer("report"):
        write_report(report_path, metrics, statement, pca=pca)
    metrics["timings_s"] = timer.times
    write_json_atomic(metrics_path, _json_safe(metrics))
    return EvaluationResult(metrics, metrics_path, report_path, warnings)


def _check_output_folder(cfg: EvaluateConfig) -> None:
    if cfg.out.exists() and not cfg.out.is_dir():
        raise DpsynthError(f"--out {cfg.out} is a file, not a folder; choose a folder path")
    earlier = [name for name in (METRICS_FILE, REPORT_FILE) if (cfg.out / name).exists()]
    if earlier and not cfg.overwrite:
        raise DpsynthError(f"--out {cfg.out} already holds an evaluation ({', '.join(earlier)}); pass --overwrite to "
                           "replace it or choose another folder")


def _embedding_metrics(cfg: EvaluateConfig, real: TextTable, syn: TextTable, train: TextTable | None,
                       timer: _Timer) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    from dpsynth.evaluate import fidelity as fid
    from dpsynth.evaluate import leakage
    from dpsynth.evaluate.embeddings import encode_texts, load_embedder

    real_s = real.subsample(cfg.max_fidelity_records, cfg.seed)
    syn_s = syn.subsample(cfg.max_fidelity_records, cfg.seed + 1)
    kw = {"device": cfg.device, "show_progress": cfg.show_progress}
    with timer("embedding_model_load"):
        load_embedder(cfg.embedding_model, cfg.device)
    with timer("embedding_real"):
        e_real = encode_texts(real_s.texts, cfg.embedding_model, label="embedding real", **kw)
    with timer("embedding_synthetic"):
        e_syn = encode_texts(syn_s.texts, cfg.embedding_model, label="embedding synthetic", **kw)
    e_train = None
    if train is not None:
        with timer("embedding_train"):
            train_s = train.subsample(cfg.max_fidelity_records, cfg.seed + 2)
            e_train = encode_texts(train_s.texts, cfg.embedding_model, label="embedding train", **kw)
    out: dict[str, Any] = {"num_real": len(real_s), "num_synthetic": len(syn_s)}
    with timer("precision_recall"):
        if min(len(real_s), len(syn_s)) > cfg.k:
            out.update(fid.precision_recall(e_real, e_syn, k=cfg.k).to_dict())
        else:
            out.update({"precision": None, "recall": None, "f1": None, "k": cfg.k})
    with timer("fid"):
        out["fid"] = fid.frechet_distance(e_real, e_syn) if min(len(e_real), len(e_syn)) >= 2 else None
    with timer("mauve"):
        out["mauve"] = fid.mauve_score(e_real, e_syn, seed=cfg.seed + 25) if min(len(e_real), len(e_syn)) >= 2 \
            else None
        out["mauve_buckets"] = fid.mauve_buckets(len(e_real), len(e_syn))
    pca = fid.pca_2d(e_real, e_syn, seed=cfg.seed)
    nearest = None
    if e_train is not None:
        with timer("nearest_neighbour"):
            nearest = leakage.memorisation_distances(e_syn, e_train, e_real, seed=cfg.seed)
    return out, nearest, pca


def _membership_inference(cfg: EvaluateConfig, real: TextTable, train: TextTable) -> dict[str, Any]:
    """Loss attack: members = training records, non-members = real held-out records (same distribution)."""
    from dpsynth.evaluate.leakage import loss_mia_auc, per_example_losses
    from dpsynth.evaluate.utility import resolve_device

    device = resolve_device(cfg.device)
    try:
        from dpsynth.models.loading import load_model

        loaded = load_model(cfg.mia_model, device=device)
        model, tokenizer = loaded.model, loaded.tokenizer
    except ImportError:  # pragma: no cover - the project loader is part of dpsynth; plain transformers otherwise
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.mia_model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(cfg.mia_model, local_files_only=True).to(device)
    n = min(cfg.mia_max_records, len(train), len(real))
    members = train.subsample(n, cfg.seed + 3).texts
    nonmembers = real.subsample(n, cfg.seed + 4).texts
    kw = {"max_length": cfg.classifier_max_length, "show_progress": cfg.show_progress}
    m_loss = per_example_losses(model, tokenizer, members, **kw)
    nm_loss = per_example_losses(model, tokenizer, nonmembers, **kw)
    m_loss, nm_loss = m_loss[np.isfinite(m_loss)], nm_loss[np.isfinite(nm_loss)]
    return {"auc": loss_mia_auc(m_loss, nm_loss), "num_members": int(len(m_loss)),
            "num_nonmembers": int(len(nm_loss)), "mean_member_loss": float(m_loss.mean()),
            "mean_nonmember_loss": float(nm_loss.mean()), "model": str(cfg.mia_model)}


def _examples(syn: TextTable, flagged: set[int], num: int, seed: int, max_chars: int = 600) -> list[dict[str, Any]]:
    """A few random synthetic records (never ones flagged for copying), with their labels."""
    allowed = [i for i in range(len(syn)) if i not in flagged]
    if not allowed or num <= 0:
        return []
    rng = np.random.default_rng(seed + 7)
    picks = sorted(rng.choice(len(allowed), size=min(num, len(allowed)), replace=False).tolist())
    out = []
    for j in picks:
        i = allowed[j]
        text = syn.texts[i]
        out.append({"row": i, "text": text if len(text) <= max_chars else text[:max_chars] + "…",
                    "labels": {c: v[i] for c, v in syn.labels.items()}})
    return out


def _json_safe(value: Any) -> Any:
    """NaN/inf become null or strings, so metrics.json is strict JSON any tool can read."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else ("inf" if f == math.inf else "-inf" if f == -math.inf else None)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value
