"""Canary generation, insertion, and secret ranking / exposure on tiny models with known outcomes."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from dpsynth.errors import DpsynthError
from dpsynth.evaluate import canaries
from tests.conftest import tiny_causal_lm

PATTERNS = {
    "name": r"[A-Z][a-z]+ [A-Z][a-z]+",
    "address": r"\d{1,3} [A-Z][a-z]+ [A-Z][a-z]+, [A-Z][a-z]+",
    "phone": r"[2-9]\d{2}-\d{3}-\d{4}",
    "email": r"[a-z]+\.[a-z]+\d{2}@[a-z]+\.[a-z]+",
    "plate": r"[A-Z]{3} \d{4}",
}


def test_canaries_cover_formats_and_repetitions_deterministically() -> None:
    a = canaries.make_canaries(seed=3)
    assert a == canaries.make_canaries(seed=3)
    assert a != canaries.make_canaries(seed=4)
    assert {(c.format, c.repetitions) for c in a} == {(f, r) for f in canaries.FORMATS for r in (1, 10, 100)}
    assert len({c.secret for c in a}) == len(a)
    for c in a:
        assert re.fullmatch(PATTERNS[c.format], c.secret), c.secret
        assert c.text == f"{c.prefix} {c.secret}."
    with pytest.raises(DpsynthError, match="unknown canary format"):
        canaries.make_canaries(formats=["ssn"])


@pytest.mark.parametrize("fmt", canaries.FORMATS)
def test_ten_thousand_distinct_candidates_per_format(fmt: str) -> None:
    secret = canaries.make_canaries(formats=[fmt], repetitions=[1])[0].secret
    cands = canaries.candidate_secrets(fmt, secret, 10_000, seed=1)
    assert len(cands) == 10_000 and len(set(cands)) == 10_000 and secret not in cands
    assert all(re.fullmatch(PATTERNS[fmt], c) for c in cands[:500])
    assert cands == canaries.candidate_secrets(fmt, secret, 10_000, seed=1)


def test_insert_canaries_repeats_and_keeps_rows() -> None:
    frame = pd.DataFrame({"text": [f"review {i}" for i in range(20)], "stars": [str(i % 5) for i in range(20)],
                          "other": range(20)})
    cans = canaries.make_canaries(formats=["phone", "email"], repetitions=[1, 10])
    out = canaries.insert_canaries(frame, cans, "text", label_columns=["stars"], seed=0)
    assert len(out) == 20 + 2 * (1 + 10)
    for c in cans:
        rows = out[out["text"] == c.text]
        assert len(rows) == c.repetitions
        assert set(rows["stars"]) <= set(frame["stars"])  # labels copied from real rows
    assert sorted(out["text"][out["text"].str.startswith("review")]) == sorted(frame["text"])
    assert not out["text"].iloc[:20].equals(frame["text"])  # shuffled
    with pytest.raises(DpsynthError):
        canaries.insert_canaries(frame, cans, "body")


def test_exposure_formula() -> None:
    assert canaries.exposure(1, 1024) == 10.0
    assert canaries.exposure(1024, 1024) == 0.0
    assert canaries.exposure(32, 1024) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        canaries.exposure(0, 10)


def test_secret_nll_matches_manual_computation(tok) -> None:
    model = tiny_causal_lm(tok)
    prefix, secret = "Call me on", "555-123-4567"
    got = canaries.secret_nll(model, tok, prefix, [secret, "555-000-0000"], batch_size=1)
    ids = tok(f"{prefix} {secret}.")["input_ids"]
    start = len(tok(prefix)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    manual = -sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))
    assert got[0] == pytest.approx(manual, rel=1e-5)
    batched = canaries.secret_nll(model, tok, prefix, [secret, "555-000-0000"], batch_size=2)
    np.testing.assert_allclose(batched, got, rtol=1e-5)


class _Uniform(torch.nn.Module):
    """Gives every token the same probability: every same-length secret is equally likely."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> object:
        logits = torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy
        return type("Out", (), {"logits": logits})()


def test_uninformative_model_ranks_secret_in_the_middle(tok) -> None:
    cands = canaries.candidate_secrets("phone", "415-555-0134", 99)
    rank = canaries.rank_of_secret(_Uniform(len(tok)), tok, "My number is", "415-555-0134", cands)
    assert rank == pytest.approx(50.5)  # all 100 tied: expected rank (N + 1) / 2, not a falsely alarming 1
    assert canaries.exposure(rank, 100) == pytest.approx(math.log2(100 / 50.5))


def test_memorised_canary_ranks_first(tok) -> None:
    canary = canaries.make_canaries(formats=["phone"], repetitions=[100], seed=7)[0]
    cands = canaries.candidate_secrets("phone", canary.secret, 200, seed=canary.seed)
    model = tiny_causal_lm(tok, seed=0)
    untrained = canaries.rank_of_secret(model, tok, canary.prefix, canary.secret, cands)
    ids = torch.tensor([tok(canary.text)["input_ids"]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):  # the canary's 100 repetitions, and some: memorise it
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    rank = canaries.rank_of_secret(model, tok, canary.prefix, canary.secret, cands, batch_size=50)
    assert rank == 1.0 and untrained > 1.0
    assert canaries.exposure(rank, len(cands) + 1) == pytest.approx(math.log2(201))
    assert canaries.verbatim_count(canary, ["x", f"call {canary.secret} now", canary.text]) == 2
