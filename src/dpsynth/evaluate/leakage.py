"""Leakage checks: does the synthetic data copy or sit suspiciously close to the training records?

* Verbatim copying: share of synthetic records sharing a run of ≥ n (default 8) consecutive words with some
  training record. Word n-grams are hashed to 64-bit integers with numpy, so millions of training n-grams fit in a
  sorted array instead of a Python set.
* Nearest-neighbour distances (embedding cosine) from each synthetic record to the training set and to a held-out
  real set of the same size. If synthetic records are systematically closer to training records than to equally
  distributed held-out records, the generator memorised rather than generalised.
* Loss-based membership inference (Yeom et al. 2018): a model's loss on its training records vs unseen records;
  AUC 0.5 = no signal, 1.0 = members perfectly separable.

Only counts, fractions and synthetic-record indices come out of here, never training text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dpsynth.errors import DpsynthError
from dpsynth.runtime.progress import StepProgress

_TOKEN = re.compile(r"\w+", re.UNICODE)
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for the polynomial rolling hash


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and spacing differences do not hide a copied passage."""
    return _TOKEN.findall(text.lower())


class _Vocab:
    """Maps words to random 64-bit codes (seeded), so n-gram hashes of different word sequences rarely collide."""

    def __init__(self, seed: int = 0) -> None:
        self.ids: dict[str, int] = {}
        self.rng = np.random.default_rng(seed)
        self.codes = np.empty(0, dtype=np.uint64)

    def encode(self, words: list[str]) -> np.ndarray:
        ids = [self.ids.setdefault(w, len(self.ids)) for w in words]
        if len(self.ids) > len(self.codes):
            extra = max(len(self.ids) - len(self.codes), len(self.codes))
            new = self.rng.integers(1, np.iinfo(np.uint64).max, size=extra, dtype=np.uint64, endpoint=True)
            self.codes = np.concatenate([self.codes, new])
        return self.codes[np.asarray(ids, dtype=np.int64)] if ids else np.empty(0, dtype=np.uint64)


def _ngram_hashes(texts: Sequence[str], n: int, vocab: _Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram of every text, and the index of the text each came from."""
    codes, owners = [], []
    for i, text in enumerate(texts):
        c = vocab.encode(tokens(text))
        if len(c) >= n:
            codes.append(c)
            owners.append(np.full(len(c), i, dtype=np.int64))
    if not codes:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    flat = np.concatenate(codes)
    owner = np.concatenate(owners)
    m = len(flat) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around modulo 2^64 is the point of the hash
        for j in range(n):
            h = h * _MULT + flat[j:j + m]
    # keep only windows that start and end inside the same text
    same = owner[:m] == owner[n - 1:]
    return h[same], owner[:m][same]


@dataclass(frozen=True)
class CopyResult:
    """How many synthetic records contain a word n-gram (n ≥ `n`) that also occurs in a training record."""

    n: int
    num_synthetic: int
    num_with_copy: int
    fraction: float
    copied_ngram_share: float  # share of all synthetic n-grams that occur in training records
    synthetic_indices: list[int] = field(default_factory=list)  # which synthetic records (never the train text)

    def to_dict(self, max_indices: int = 100) -> dict[str, Any]:
        d = asdict(self)
        d["synthetic_indices"] = self.synthetic_indices[:max_indices]
        return d


def copied_ngrams(synthetic_texts: Sequence[str], train_texts: Sequence[str], n: int = 8, seed: int = 0
                  ) -> CopyResult:
    """Find synthetic records sharing ≥ n consecutive words with any training record (exact, up to 64-bit hashes).

    Sharing an n-gram of length ≥ n implies sharing one of length exactly n, so one pass with n suffices.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    vocab = _Vocab(seed)
    train_h, _ = _ngram_hashes(train_texts, n, vocab)
    train_h = np.unique(train_h)
    syn_h, syn_owner = _ngram_hashes(synthetic_texts, n, vocab)
    if len(train_h) and len(syn_h):
        pos = np.searchsorted(train_h, syn_h)
        hit = train_h[np.minimum(pos, len(train_h) - 1)] == syn_h
    else:
        hit = np.zeros(len(syn_h), dtype=bool)
    flagged = np.unique(syn_owner[hit]).tolist()
    num = len(synthetic_texts)
    return CopyResult(n=n, num_synthetic=num, num_with_copy=len(flagged), fraction=len(flagged) / num if num else 0.0,
                      copied_ngram_share=float(hit.mean()) if len(hit) else 0.0, synthetic_indices=flagged)


# ---------------------------------------------------------------- nearest-neighbour distances
def nearest_cosine_distance(queries: np.ndarray, reference: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """1 - max cosine similarity from each query to the reference rows (both already L2-normalised)."""
    q = np.asarray(queries, dtype=np.float32)
    r = np.asarray(reference, dtype=np.float32)
    out = np.empty(len(q), dtype=np.float64)
    for start in range(0, len(q), chunk):
        out[start:start + chunk] = 1.0 - (q[start:start + chunk] @ r.T).max(axis=1)
    return np.maximum(out, 0.0)


def memorisation_distances(synthetic: np.ndarray, train: np.ndarray, heldout: np.ndarray, *, seed: int = 0,
                           near_duplicate: float = 0.02) -> dict[str, Any]:
    """Compare each synthetic record's nearest training neighbour with its nearest held-out neighbour.

    Train and held-out are subsampled to the same size first: a bigger reference set is closer by chance alone.
    `closer_to_train` ≈ 0.5 is what a generator that learned the distribution (not the records) gives.
    """
    if len(train) == 0 or len(heldout) == 0 or len(synthetic) == 0:
        raise DpsynthError("the nearest-neighbour check needs non-empty synthetic, training and held-out sets")
    rng = np.random.default_rng(seed)
    m = min(len(train), len(heldout))
    tr = train if len(train) == m else train[rng.choice(len(train), size=m, replace=False)]
    ho = heldout if len(heldout) == m else heldout[rng.choice(len(heldout), size=m, replace=False)]
    d_train = nearest_cosine_distance(synthetic, tr)
    d_held = nearest_cosine_distance(synthetic, ho)
    closer = float(np.mean(d_train < d_held) + 0.5 * np.mean(d_train == d_held))
    return {
        "reference_size": int(m),
        "median_to_train": float(np.median(d_train)), "median_to_heldout": float(np.median(d_held)),
        "mean_to_train": float(d_train.mean()), "mean_to_heldout": float(d_held.mean()),
        "closer_to_train": closer,
        "near_duplicate_threshold": near_duplicate,
        "near_duplicates_train": int((d_train <= near_duplicate).sum()),
        "near_duplicates_heldout": int((d_held <= near_duplicate).sum()),
    }


# ---------------------------------------------------------------- membership inference
def loss_mia_auc(member_losses: Sequence[float], nonmember_losses: Sequence[float]) -> float:
    """AUC of the loss-threshold attack: lower loss ⇒ 'member'. 0.5 = no better than guessing."""
    m = np.asarray(member_losses, dtype=np.float64)
    nm = np.asarray(nonmember_losses, dtype=np.float64)
    if m.size == 0 or nm.size == 0:
        raise DpsynthError("membership inference needs at least one member and one non-member loss")
    y = np.concatenate([np.ones(m.size), np.zeros(nm.size)])
    return float(roc_auc_score(y, -np.concatenate([m, nm])))


def per_example_losses(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16,
                       max_length: int = 128, device: Any = None, add_eos: bool = True,
                       show_progress: bool = False) -> np.ndarray:
    """Mean next-token cross-entropy of a causal LM on each text (batched, right-padded, no gradients)."""
    device = device if device is not None else next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0
    eos = tokenizer.eos_token_id if add_eos else None
    encoded = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        encoded.append(ids[:max_length])
    out = np.full(len(texts), np.nan)
    order = np.argsort([len(e) for e in encoded], kind="stable")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), StepProgress(show_progress, len(texts), "LM losses") as advance:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, :len(encoded[i])] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = ids[:, 1:]
                tmask = mask[:, 1:].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
                count = tmask.sum(1)
                loss = (nll * tmask).sum(1) / count.clamp(min=1)
                loss = torch.where(count > 0, loss, torch.full_like(loss, float("nan")))
                out[idx] = loss.cpu().numpy()
                advance(len(idx))
    finally:
        model.train(was_training)
    return out
