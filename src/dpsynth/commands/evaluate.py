"""`dpsynth evaluate`: how useful and how leaky is a synthetic dataset? Reads the real held-out set, the synthetic
set and (optionally) the real training set, computes every metric, states the privacy guarantee from the run's
ledger, and writes `OUT/metrics.json` and a self-contained `OUT/report.html`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dpsynth.config import describe_validation_error
from dpsynth.errors import DpsynthError
from dpsynth.evaluate.config import METRICS_FILE, REPORT_FILE, EvaluateConfig
from dpsynth.evaluate.metrics import Timer, compute_metrics, json_safe
from dpsynth.evaluate.tables import TextTable, load_text_table
from dpsynth.report.html import write_report
from dpsynth.report.privacy_text import describe_privacy, load_ledger
from dpsynth.report.summary import summary_rows
from dpsynth.runtime.files import check_output_folder, write_json_atomic
from dpsynth.stages.folder import RunFolder


@dataclass
class EvaluationResult:
    """What an evaluation produced: the metrics (as written to metrics.json) and where the files are."""

    metrics: dict[str, Any]
    metrics_path: Path
    report_path: Path
    warnings: list[str] = field(default_factory=list)

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(metric, value, what good looks like) rows for a rich table in the CLI."""
        return summary_rows(self.metrics)


def make_config(**values: Any) -> EvaluateConfig:
    """An EvaluateConfig from CLI-style values (None = not given), as one-sentence DpsynthErrors on failure. With
    --run, the synthetic file and the text and label columns default to the run's."""
    if values.get("run") is not None:
        folder = RunFolder(Path(values["run"]))
        if values.get("synthetic") is None:
            values["synthetic"] = folder.synthetic
        for key, value in _run_columns(folder).items():
            if values.get(key) is None:
                values[key] = value
    try:
        return EvaluateConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc)) from None


def _run_columns(folder: RunFolder) -> dict[str, Any]:
    """The text and label columns a finished run was made with ({} if its run.json cannot be read)."""
    try:
        config = json.loads(folder.record.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k: config[k] for k in ("text_column", "label_columns") if k in config}


def evaluate_synthetic(cfg: EvaluateConfig) -> EvaluationResult:
    """Every metric, written to OUT/metrics.json and OUT/report.html."""
    if cfg.synthetic is None:  # a config built in Python with --run only
        cfg = make_config(**cfg.model_dump())
    # before minutes of work: an earlier evaluation is not replaced unasked
    check_output_folder(cfg.out, overwrite=cfg.overwrite, conflicts=[METRICS_FILE, REPORT_FILE],
                        what="an evaluation", hint="pass --overwrite to replace it or choose another folder")
    timer = Timer()
    with timer("read"):
        real, syn, train = _load_inputs(cfg)
        ledger = load_ledger(RunFolder(cfg.run).privacy) if cfg.run is not None else None
    statement = describe_privacy(ledger, noun=cfg.record_noun)
    metrics, pca = compute_metrics(cfg, real, syn, train, statement.to_dict() | {"ledger": ledger},
                                   list(statement.warnings), timer)
    cfg.out.mkdir(parents=True, exist_ok=True)
    metrics_path, report_path = cfg.out / METRICS_FILE, cfg.out / REPORT_FILE
    with timer("report"):
        write_report(report_path, metrics, statement, pca=pca)
    metrics["timings_s"] = timer.times
    write_json_atomic(metrics_path, json_safe(metrics))
    return EvaluationResult(metrics, metrics_path, report_path, list(metrics["warnings"]))


def _load_inputs(cfg: EvaluateConfig) -> tuple[TextTable, TextTable, TextTable | None]:
    assert cfg.synthetic is not None
    if cfg.run is not None and not cfg.synthetic.is_file() and cfg.synthetic == RunFolder(cfg.run).synthetic:
        raise DpsynthError(f"--run {cfg.run} holds no {cfg.synthetic.name}; pass --synthetic explicitly")
    real = load_text_table(cfg.real, "real", cfg.text_column, cfg.label_columns)
    syn = load_text_table(cfg.synthetic, "synthetic", cfg.text_column, cfg.label_columns)
    train = load_text_table(cfg.train, "train", cfg.text_column, cfg.label_columns) if cfg.train else None
    return real, syn, train
