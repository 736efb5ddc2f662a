"""`dpsynth sample`: more synthetic records from a finished run — post-processing, so no extra privacy cost.

The labels come from the run's saved `label_distribution.json` (already paid for in its ledger) unless a public
distribution is declared; the model is the run's `model/` folder (a LoRA adapter on its base, or a full model).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from dpsynth.config import RunConfig
from dpsynth.errors import DpsynthError
from dpsynth.models.loading import load_model
from dpsynth.privacy.labels import LabelDistribution, label_distribution_from_dict, public_label_distribution
from dpsynth.runtime.device import resolve_device
from dpsynth.runtime.files import read_json
from dpsynth.runtime.ranks import init_distributed
from dpsynth.sample.sampler import SamplingJob, sample_synthetic
from dpsynth.stages.folder import RunFolder

DECODING_FLAGS = ("top_k", "top_p", "temperature", "repetition_penalty", "max_new_tokens", "min_new_tokens")


def model_digest(folder: Path) -> str:
    """SHA-256 of a saved model's weight files: `run --overwrite` replaces the model, and a sampling output of the
    old one must not be continued as if it came from the new one (≈0.4 s for a full 135M model)."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def finished_run_config(folder: RunFolder) -> RunConfig:
    """The settings of the finished run in `folder` (refusing an interrupted or a foreign folder)."""
    if not folder.path.is_dir() or not folder.record.is_file():
        if folder.checkpoint.is_dir():
            raise DpsynthError(f"{folder.path} is an interrupted dpsynth run, not a finished one; finish it first "
                               f"with `dpsynth run --resume --out {folder.path}`")
        raise DpsynthError(f"{folder.path} is not a finished dpsynth run (no run.json); pass the --out folder of "
                           "`dpsynth run`")
    if not folder.model.is_dir():
        raise DpsynthError(f"{folder.path} has no model/ folder; re-run `dpsynth run` to produce one")
    settings = read_json(folder.record, "the run record")["config"]
    return RunConfig.model_construct(**{k: v for k, v in settings.items() if k in RunConfig.model_fields})


def _labels(folder: RunFolder, config: RunConfig, label_distribution: str | None) -> LabelDistribution | None:
    cols = list(config.label_columns)
    if not cols:
        return None
    saved = read_json(folder.labels, "the label distribution") if folder.labels.is_file() else None
    if label_distribution in (None, "run"):
        if saved is None:
            raise DpsynthError(f"{folder.path} has no {folder.labels.name}; pass --label-distribution uniform or a "
                               "public file of label weights")
        return label_distribution_from_dict(saved)
    # the published label values (declared, or cleared the DP threshold) are the categories of a public mix
    categories = {c: sorted({str(r[c]) for r in saved["combinations"]}) for c in cols} if saved else None
    return public_label_distribution(label_distribution, cols, categories)


def sample_from_run(run_dir: Path, num: int, out: Path, *, seed: int = 0, label_distribution: str | None = None,
                    batch_size: int | None = None, drop_duplicates: bool = False, overwrite: bool = False,
                    device: str = "auto", **decoding: Any) -> dict[str, Any]:
    """Write `num` synthetic records to `out` (.csv/.jsonl/.parquet); resumes an interrupted file of the same
    settings, refuses to touch an unrelated existing file unless `overwrite`. `decoding` overrides the run's
    decoding settings (DECODING_FLAGS; None keeps the run's). Under torchrun the chunks are split across ranks and
    merged by rank 0 into the same file (every rank returns the same report)."""
    folder = RunFolder(Path(run_dir))
    config = finished_run_config(folder)
    unknown = set(decoding) - set(DECODING_FLAGS)
    if unknown:
        raise TypeError(f"unknown decoding settings {sorted(unknown)}")
    config = config.model_copy(update={k: v for k, v in decoding.items() if v is not None})
    labels = _labels(folder, config, label_distribution)
    ranks = init_distributed()  # under torchrun every rank samples a share of the chunks; rank 0 writes `out`
    dev = resolve_device(device, ranks)
    loaded = load_model(folder.model, device=str(dev))
    job = SamplingJob(out_path=Path(out), num_samples=num, label_columns=list(config.label_columns),
                      text_column=config.text_column, labels=labels, decoding=config.decoding(), seed=seed,
                      batch_size=batch_size or "auto", drop_duplicates=drop_duplicates,
                      model_id=model_digest(folder.model))
    with torch.inference_mode():
        report = sample_synthetic(loaded.model.to(dev).eval(), loaded.tokenizer, job, resume=not overwrite,
                                  ranks=ranks)
    return report.to_dict()


