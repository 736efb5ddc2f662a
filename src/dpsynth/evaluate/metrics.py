"""Every metric of `dpsynth evaluate` on loaded tables: utility (train on synthetic, test on real), text
statistics, fidelity (embeddings), leakage (copying, nearest neighbours, membership inference), and the warnings
the numbers call for. Each metric lives in its own module; this one orders the work and times it.

Privacy of the report itself: it contains aggregates of the real data (proportions, top n-grams, scores) and
synthetic examples, never a real training record. Synthetic records that copy a long passage of a training
record are listed by row number only and never shown as examples, since their text is partly training text.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.errors import DpsynthError
from dpsynth.evaluate import fidelity as fid
from dpsynth.evaluate import leakage, textstats, utility
from dpsynth.evaluate.config import EvaluateConfig
from dpsynth.evaluate.embeddings import encode_texts, load_embedder
from dpsynth.evaluate.leakage import loss_mia_auc, per_example_losses
from dpsynth.evaluate.tables import TextTable
from dpsynth.models.loading import load_model
from dpsynth.runtime.device import resolve_device


class Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - start, 3)


def compute_metrics(cfg: EvaluateConfig, real: TextTable, syn: TextTable, train: TextTable | None,
                    privacy: dict[str, Any], warnings: list[str],
                    timer: Timer) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(metrics as in metrics.json, the 2-D projection of the embeddings for the report's scatter plot).
    `privacy` is the run's guarantee as metrics.json records it; `warnings` are extended in place."""
    warnings += _input_warnings(real, syn, train)
    metrics: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"real": _input_info(cfg.real, real), "synthetic": _input_info(cfg.synthetic, syn),
                   "train": _input_info(cfg.train, train), "run": str(cfg.run) if cfg.run else None,
                   "text_column": cfg.text_column, "label_columns": list(cfg.label_columns)},
        "settings": {"classifier": cfg.classifier, "embedding_model": cfg.embedding_model or "all-MiniLM-L6-v2 "
                     "(bundled)", "k": cfg.k, "max_fidelity_records": cfg.max_fidelity_records,
                     "copy_ngram": cfg.copy_ngram, "seed": cfg.seed},
        "privacy": privacy,
    }
    with timer("utility"):
        metrics["utility"] = _utility(cfg, real, syn, train)
    with timer("text_statistics"):
        metrics |= _text_statistics(cfg, real, syn, warnings)
    copy = None
    if train is not None:
        with timer("copying"):
            copy = _copying(cfg, syn, train, warnings)
    fidelity = nearest = pca = None
    if cfg.embeddings:
        fidelity, nearest, pca = _embedding_metrics(cfg, real, syn, train, timer)
        if nearest and nearest["closer_to_train"] > 0.6:
            warnings.append(
                f"{nearest['closer_to_train']:.0%} of synthetic records are closer to a training record than to "
                "any held-out real record (≈ 50% expected): the generator may have memorised training data.")
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
    flagged = set(copy.synthetic_indices) if copy else set()
    metrics["examples"] = _examples(syn, flagged, cfg.num_examples, cfg.seed)
    return metrics, pca


def _input_info(path: Path | None, table: TextTable | None) -> dict[str, Any] | None:
    if path is None or table is None:
        return None
    return {"path": str(path), "records": len(table), "dropped_empty": table.dropped_empty}


def _input_warnings(real: TextTable, syn: TextTable, train: TextTable | None) -> list[str]:
    warnings = []
    if train is not None:
        overlap = len(set(real.texts) & set(train.texts))
        if overlap:
            warnings.append(f"{overlap} record(s) of the real test set also appear in the training set; a test set "
                            "must be held out, otherwise utility and leakage numbers are biased.")
    if min(len(real), len(syn)) < 50:
        warnings.append(f"Small sets (real {len(real)}, synthetic {len(syn)} records): the metrics below are noisy.")
    return warnings


def _utility(cfg: EvaluateConfig, real: TextTable, syn: TextTable, train: TextTable | None) -> list[dict[str, Any]]:
    settings = utility.TransformerSettings(
        model=cfg.classifier_model, epochs=cfg.classifier_epochs, batch_size=cfg.classifier_batch_size,
        learning_rate=cfg.classifier_learning_rate, max_length=cfg.classifier_max_length, device=cfg.device,
        seed=cfg.seed, show_progress=cfg.show_progress)
    return [utility.utility_for_column(
        col, (syn.texts, syn.labels[col]), (real.texts, real.labels[col]),
        (train.texts, train.labels[col]) if train is not None else None,
        classifier=cfg.classifier, transformer=settings, seed=cfg.seed).to_dict() for col in cfg.label_columns]


def _text_statistics(cfg: EvaluateConfig, real: TextTable, syn: TextTable, warnings: list[str]) -> dict[str, Any]:
    out = {"lengths": textstats.length_comparison(real.texts, syn.texts),
           "labels": {c: textstats.label_comparison(real.labels[c], syn.labels[c]) for c in cfg.label_columns},
           "ngrams": textstats.ngram_comparison(real.texts, syn.texts),
           "topics": textstats.topic_comparison(real.texts, syn.texts, seed=cfg.seed)}
    for col, comp in out["labels"].items():
        if comp["missing_in_synthetic"]:
            warnings.append(f"Label column {col!r}: {len(comp['missing_in_synthetic'])} value(s) of the real data "
                            "never occur in the synthetic data.")
    return out


def _copying(cfg: EvaluateConfig, syn: TextTable, train: TextTable, warnings: list[str]) -> Any:
    copy = leakage.copied_ngrams(syn.texts, train.texts, n=cfg.copy_ngram, seed=cfg.seed)
    if copy.num_with_copy:
        warnings.append(
            f"{copy.num_with_copy} of {copy.num_synthetic} synthetic records ({copy.fraction:.1%}) contain a run of "
            f"≥ {cfg.copy_ngram} consecutive words that also occurs in a training record (possible verbatim "
            "copying). They are listed by row number in metrics.json and not shown in this report.")
    return copy


def _embedding_metrics(cfg: EvaluateConfig, real: TextTable, syn: TextTable, train: TextTable | None,
                       timer: Timer) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
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
    loaded = load_model(cfg.mia_model, device=str(resolve_device(cfg.device)))
    model, tokenizer = loaded.model, loaded.tokenizer
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


def json_safe(value: Any) -> Any:
    """NaN/inf become null or strings, so metrics.json is strict JSON any tool can read."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else ("inf" if f == math.inf else "-inf" if f == -math.inf else None)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value
