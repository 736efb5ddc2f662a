"""`dpsynth sample`: more synthetic records from a finished run — post-processing, so no extra privacy cost.

The labels come from the run's saved `label_distribution.json` (already paid for in its ledger) unless a public
distribution is declared; the model is the run's `model/` folder (a LoRA adapter on its base, or a full model).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dpsynth import outputs
from dpsynth.errors import DpsynthError


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


def load_run_config(run_dir: Path) -> dict[str, Any]:
    run_json = run_dir / outputs.RUN
    if not run_dir.is_dir() or not run_json.is_file():
        if (run_dir / outputs.CHECKPOINT).is_dir():
            raise DpsynthError(f"{run_dir} is an interrupted dpsynth run, not a finished one; finish it first with "
                               f"`dpsynth run --resume --out {run_dir}`")
        raise DpsynthError(f"{run_dir} is not a finished dpsynth run (no run.json); pass the --out folder of "
                           "`dpsynth run`")
    if not (run_dir / outputs.MODEL).is_dir():
        raise DpsynthError(f"{run_dir} has no model/ folder; re-run `dpsynth run` to produce one")
    return json.loads(run_json.read_text())["config"]


def sample_from_run(run_dir: Path, num: int, out: Path, *, seed: int = 0, label_distribution: str | None = None,
                    top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                    repetition_penalty: float | None = None, max_new_tokens: int | None = None,
                    min_new_tokens: int | None = None,
                    batch_size: int | None = None, drop_duplicates: bool = False, overwrite: bool = False,
                    device: str = "auto") -> dict[str, Any]:
    """Write `num` synthetic records to `out` (.csv/.jsonl/.parquet); resumes an interrupted file of the same
    settings, refuses to touch an unrelated existing file unless `overwrite`. Under torchrun the chunks are split
    across ranks and merged by rank 0 into the same file (every rank returns the same report)."""
    from dpsynth.models.loading import load_model
    from dpsynth.pipeline import resolve_device
    from dpsynth.sample.labels import label_distribution_from_dict, public_label_distribution
    from dpsynth.sample.sampler import DecodingConfig, sample_synthetic
    from dpsynth.train.distributed import init_distributed

    cfg = load_run_config(run_dir)
    label_columns = list(cfg.get("label_columns") or [])
    text_column = cfg.get("text_column", "text")
    labels = None
    if label_columns:
        saved = run_dir / outputs.LABELS
        if label_distribution in (None, "run"):
            if not saved.is_file():
                raise DpsynthError(f"{run_dir} has no {outputs.LABELS}; pass --label-distribution uniform or a "
                                   "public file of label weights")
            labels = label_distribution_from_dict(json.loads(saved.read_text()))
        else:
            categories = None
            if saved.is_file():  # the published label values (declared, or cleared the DP threshold)
                combos = json.loads(saved.read_text())["combinations"]
                categories = {c: sorted({str(r[c]) for r in combos}) for c in label_columns}
            labels = public_label_distribution(label_distribution, label_columns, categories)
    ctx = init_distributed()  # under torchrun every rank samples a share of the chunks; rank 0 writes `out`
    dev = resolve_device(device)
    if ctx.enabled and dev.type == "cuda":
        dev = torch.device("cuda", ctx.local_rank)
    loaded = load_model(run_dir / outputs.MODEL, device=str(dev))
    model = loaded.model.to(dev).eval()
    decoding = DecodingConfig(
        top_k=cfg.get("top_k", 50) if top_k is None else top_k,
        top_p=cfg.get("top_p", 0.9) if top_p is None else top_p,
        temperature=cfg.get("temperature", 1.0) if temperature is None else temperature,
        repetition_penalty=cfg.get("repetition_penalty", 1.0) if repetition_penalty is None else repetition_penalty,
        max_new_tokens=max_new_tokens or cfg.get("max_new_tokens") or cfg.get("max_tokens", 128),
        min_new_tokens=cfg.get("min_new_tokens", 1) if min_new_tokens is None else min_new_tokens,
    )
    with torch.inference_mode():
        report = sample_synthetic(model, loaded.tokenizer, labels, num, out, label_columns=label_columns,
                                  text_column=text_column, decoding=decoding, seed=seed,
                                  batch_size=batch_size or "auto", resume=not overwrite, progress=True,
                                  drop_duplicates=drop_duplicates, dist_ctx=ctx,
                                  model_id=model_digest(run_dir / outputs.MODEL))
    return report.to_dict()
