"""Canary audit building blocks (the reference recipe's leakage test; Carlini et al. 2019 "The Secret Sharer").

A canary is a made-up record "prefix + secret" (e.g. "My phone number is 415-555-0134") inserted 1, 10 or 100
times into the training data. After training, the model's perplexity of the true secret is ranked among many
candidate secrets of the same format that were never inserted. A rank near 1 means the model memorised the
secret; exposure = log2(N) - log2(rank) turns that into bits (0 ≈ no memorisation, log2(N) = fully exposed).

Secrets come from format-specific generators with enough combinations (≥ 10⁵) that 10,000 distinct candidates of
the same format can always be enumerated; everything is deterministic from a seed.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from dpsynth.errors import DpsynthError

FORMATS = ("name", "address", "phone", "email", "plate")
REPETITIONS = (1, 10, 100)

PREFIXES = {
    "name": "The account holder's name is",
    "address": "Please send the parcel to",
    "phone": "You can reach me on",
    "email": "Write to me at",
    "plate": "The car's registration plate is",
}

_ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "ch", "dr", "gr", "kr",
           "sh", "st", "tr", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk"]
_STREETS = ["Street", "Road", "Avenue", "Lane", "Drive", "Court", "Place", "Way", "Terrace", "Close"]
_DOMAINS = ["example.com", "mailbox.org", "post.net", "inbox.io", "letters.co"]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _syllable(rng: np.random.Generator) -> str:
    return _pick(rng, _ONSETS) + _pick(rng, _VOWELS) + _pick(rng, _CODAS)


def _word(rng: np.random.Generator, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable made-up word: real names would risk colliding with people in the training data."""
    return "".join(_syllable(rng) for _ in range(int(rng.integers(syllables[0], syllables[1] + 1))))


def _name(rng: np.random.Generator) -> str:
    return f"{_word(rng).capitalize()} {_word(rng).capitalize()}"


def _address(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(1, 1000))} {_word(rng).capitalize()} {_pick(rng, _STREETS)}, {_word(rng).capitalize()}"


def _phone(rng: np.random.Generator) -> str:
    d = rng.integers(0, 10, size=10)
    d[0] = rng.integers(2, 10)  # no leading 0/1, like a real area code
    s = "".join(map(str, d))
    return f"{s[:3]}-{s[3:6]}-{s[6:]}"


def _email(rng: np.random.Generator) -> str:
    return f"{_word(rng, (2, 2))}.{_word(rng, (2, 2))}{int(rng.integers(10, 100))}@{_pick(rng, _DOMAINS)}"


def _plate(rng: np.random.Generator) -> str:
    letters = "".join(string.ascii_uppercase[i] for i in rng.integers(0, 26, size=3))
    return f"{letters} {int(rng.integers(0, 10000)):04d}"


GENERATORS: dict[str, Callable[[np.random.Generator], str]] = {
    "name": _name, "address": _address, "phone": _phone, "email": _email, "plate": _plate,
}


def _check_format(fmt: str) -> None:
    if fmt not in GENERATORS:
        raise DpsynthError(f"unknown canary format {fmt!r}; choose from {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Canary:
    """One inserted secret. `text` is what goes into the training data `repetitions` times."""

    canary_id: str
    format: str
    prefix: str
    secret: str
    repetitions: int
    seed: int  # seed for this canary's candidate list

    @property
    def text(self) -> str:
        return f"{self.prefix} {self.secret}."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"text": self.text}


def make_canaries(formats: Sequence[str] = FORMATS, repetitions: Sequence[int] = REPETITIONS, *, per_setting: int = 1,
                  seed: int = 0) -> list[Canary]:
    """One canary (or `per_setting`) for every format × repetition count, all secrets distinct."""
    rng = np.random.default_rng([seed, 1])
    out: list[Canary] = []
    used: set[str] = set()
    for fmt in formats:
        _check_format(fmt)
        for reps in repetitions:
            if reps < 1:
                raise DpsynthError("canary repetitions must be at least 1")
            for j in range(per_setting):
                secret = GENERATORS[fmt](rng)
                while secret in used:
                    secret = GENERATORS[fmt](rng)
                used.add(secret)
                out.append(Canary(f"{fmt}-x{reps}-{j}", fmt, PREFIXES[fmt], secret, int(reps),
                                  seed=int(rng.integers(0, 2**31 - 1))))
    return out


def candidate_secrets(fmt: str, secret: str, num_candidates: int = 10_000, *, seed: int = 0,
                      exclude: Sequence[str] = ()) -> list[str]:
    """`num_candidates` distinct secrets of format `fmt`, never equal to `secret` (or `exclude`), deterministic.

    The audit ranks the true secret among these; N = num_candidates + 1 in `exposure`.
    """
    _check_format(fmt)
    rng = np.random.default_rng([seed, 2])
    banned = {secret, *exclude}
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < num_candidates:
        cand = GENERATORS[fmt](rng)
        attempts += 1
        if cand not in banned and cand not in seen:
            seen.add(cand)
            out.append(cand)
        if attempts > 50 * num_candidates + 1000:
            raise DpsynthError(f"could not draw {num_candidates} distinct {fmt} candidates; ask for fewer")
    return out


def insert_canaries(frame: pd.DataFrame, canaries: Sequence[Canary], text_column: str, *,
                    label_columns: Sequence[str] = (), seed: int = 0) -> pd.DataFrame:
    """Return a shuffled copy of `frame` with each canary's text added `repetitions` times.

    Label columns of an inserted row are copied from a randomly chosen existing row, so canaries look like
    ordinary training records to the control-code formatting; other columns are left empty.
    """
    if text_column not in frame.columns:
        raise DpsynthError(f"the training table has no column {text_column!r}")
    rng = np.random.default_rng([seed, 3])
    rows: list[dict[str, Any]] = []
    for canary in canaries:
        donors = rng.integers(0, len(frame), size=canary.repetitions) if len(frame) else []
        for r in range(canary.repetitions):
            row: dict[str, Any] = {text_column: canary.text}
            for col in label_columns:
                row[col] = frame[col].iloc[int(donors[r])] if len(frame) else None
            rows.append(row)
    combined = pd.concat([frame, pd.DataFrame(rows, columns=list(frame.columns))], ignore_index=True)
    order = rng.permutation(len(combined))
    return combined.iloc[order].reset_index(drop=True)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def secret_nll(model: Any, tokenizer: Any, prefix: str, secrets: Sequence[str], *, batch_size: int = 64,
               suffix: str = ".") -> np.ndarray:
    """Total negative log-likelihood (nats) of each secret (+ suffix) given the prefix, batched, no gradients.

    Tokens are those of the full text "prefix secret." after the part shared with the tokenised prefix alone, so
    word-boundary merges of BPE tokenisers are handled without assumptions about spaces.
    """
    if not prefix:
        raise DpsynthError("a canary prefix must not be empty")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prefix_ids = tokenizer(prefix)["input_ids"]
    seqs, starts = [], []
    for s in secrets:
        ids = tokenizer(f"{prefix} {s}{suffix}")["input_ids"]
        start = max(1, common_prefix(prefix_ids, ids))  # position 0 has no prediction
        seqs.append(ids)
        starts.append(start)
    out = np.empty(len(secrets), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(seqs), batch_size):
                chunk = seqs[b:b + batch_size]
                width = max(map(len, chunk))
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                score = torch.zeros((len(chunk), width - 1))
                for r, seq in enumerate(chunk):
                    ids[r, :len(seq)] = torch.tensor(seq)
                    mask[r, :len(seq)] = 1
                    score[r, starts[b + r] - 1:len(seq) - 1] = 1.0  # targets at positions start..len-1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
                logp = torch.log_softmax(logits, dim=-1)
                tok = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
                out[b:b + len(chunk)] = (-(tok * score).sum(1)).numpy()
    finally:
        model.train(was_training)
    return out


def rank_of_secret(model: Any, tokenizer: Any, prefix: str, secret: str, candidates: Sequence[str], *,
                   batch_size: int = 64) -> float:
    """Rank (1 = most likely) of the true secret's perplexity among itself and the candidates.

    Ties are split evenly (the expected rank under random tie-breaking), so a model that scores every candidate
    the same gets rank ≈ N/2 rather than a falsely alarming rank 1.
    """
    others = [c for c in candidates if c != secret]
    if not others:
        raise DpsynthError("rank_of_secret needs at least one candidate different from the secret")
    nll = secret_nll(model, tokenizer, prefix, [secret, *others], batch_size=batch_size)
    true, rest = nll[0], nll[1:]
    # compare in float32 resolution so tiny numeric noise between identical scores does not break ties
    tol = 1e-6 * max(1.0, abs(true))
    lower = int((rest < true - tol).sum())
    ties = int((np.abs(rest - true) <= tol).sum())
    return 1.0 + lower + ties / 2.0


def exposure(rank: float, num_candidates: int) -> float:
    """Exposure in bits: log2(N) - log2(rank), N = number of secrets ranked (the true one included)."""
    if num_candidates < 1 or rank < 1 or rank > num_candidates:
        raise ValueError("need 1 ≤ rank ≤ num_candidates")
    return math.log2(num_candidates) - math.log2(rank)


def verbatim_count(canary: Canary, synthetic_texts: Sequence[str]) -> int:
    """How many synthetic records contain the canary's secret verbatim (the recipe's second leakage figure)."""
    return sum(canary.secret in t for t in synthetic_texts)
