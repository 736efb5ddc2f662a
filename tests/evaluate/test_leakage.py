"""Copy detection, nearest-neighbour memorisation signal and loss-based membership inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpsynth.errors import DpsynthError
from dpsynth.evaluate import leakage
from tests.conftest import tiny_causal_lm

TRAIN = [
    "Our waiter Bob brought cold soup, warm beer and a bill twice as long as expected.",
    "Lovely staff and quick service near the station.",
]


def test_planted_8gram_is_found_and_7gram_is_not() -> None:
    eight = "brought cold soup warm beer and a bill"  # 8 consecutive words of TRAIN[0]
    seven = "brought cold soup warm beer and a"
    synthetic = [
        f"Honestly, the chef {eight.upper()}!!",  # case and punctuation differ: still a copy
        f"Yesterday someone {seven} dog.",  # 7 shared words, then a different word
        "Nothing in common with anything at all here today.",
    ]
    out = leakage.copied_ngrams(synthetic, TRAIN, n=8)
    assert out.synthetic_indices == [0]
    assert out.num_with_copy == 1 and out.fraction == pytest.approx(1 / 3)
    # the same check with n = 7 must now also flag the second record: the test can fail
    assert leakage.copied_ngrams(synthetic, TRAIN, n=7).synthetic_indices == [0, 1]


def test_ngrams_do_not_span_record_boundaries() -> None:
    # last 4 words of TRAIN[0] + first 4 words of TRAIN[1]: adjacent in the concatenated array, not in any record
    spanning = "twice as long as expected lovely staff and quick"
    assert leakage.copied_ngrams([spanning], TRAIN, n=8).num_with_copy == 0
    assert leakage.copied_ngrams(["short text"], TRAIN, n=8).num_with_copy == 0
    assert leakage.copied_ngrams([], TRAIN).fraction == 0.0


def test_copy_detection_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(6)]  # tiny vocabulary: many partial matches
    train = [" ".join(rng.choice(vocab, size=rng.integers(3, 30))) for _ in range(40)]
    syn = [" ".join(rng.choice(vocab, size=rng.integers(3, 30))) for _ in range(60)]
    n = 5

    def grams(t: str) -> set[tuple[str, ...]]:
        w = t.split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    train_grams = set().union(*map(grams, train))
    expected = [i for i, t in enumerate(syn) if grams(t) & train_grams]
    assert 0 < len(expected) < len(syn)
    assert leakage.copied_ngrams(syn, train, n=n).synthetic_indices == expected


def test_nearest_neighbour_detects_memorised_records() -> None:
    rng = np.random.default_rng(1)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train = unit(rng.normal(size=(300, 16)))
    heldout = unit(rng.normal(size=(300, 16)))
    memorised = unit(train[:200] + 0.02 * rng.normal(size=(200, 16)))
    fresh = unit(rng.normal(size=(200, 16)))
    mem = leakage.memorisation_distances(memorised, train, heldout)
    ok = leakage.memorisation_distances(fresh, train, heldout)
    assert mem["closer_to_train"] > 0.95 and mem["near_duplicates_train"] == 200
    assert abs(ok["closer_to_train"] - 0.5) < 0.1
    assert mem["median_to_train"] < mem["median_to_heldout"]
    # a bigger training set is subsampled to the held-out size, so size alone creates no signal
    big = leakage.memorisation_distances(fresh, unit(rng.normal(size=(3000, 16))), heldout)
    assert big["reference_size"] == 300 and abs(big["closer_to_train"] - 0.5) < 0.1


def test_nearest_cosine_distance_exact() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    r = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(leakage.nearest_cosine_distance(q, r), [0.0, 1.0], atol=1e-6)


def test_loss_mia_auc_known_cases() -> None:
    rng = np.random.default_rng(2)
    assert leakage.loss_mia_auc([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]) == 1.0  # members have lower loss
    assert leakage.loss_mia_auc([1.0, 2.0], [0.1, 0.2]) == 0.0
    same = leakage.loss_mia_auc(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(same - 0.5) < 0.03
    with pytest.raises(DpsynthError):
        leakage.loss_mia_auc([], [1.0])


def test_per_example_losses_match_unbatched_model_loss(tok) -> None:
    model = tiny_causal_lm(tok)
    texts = ["a b c", "hello there, general", "x", "The quick brown fox jumps."]
    batched = leakage.per_example_losses(model, tok, texts, batch_size=3)
    for text, value in zip(texts, batched):
        ids = torch.tensor([[*tok(text)["input_ids"], tok.eos_token_id]])
        with torch.no_grad():
            ref = model(input_ids=ids, labels=ids).loss.item()
        assert value == pytest.approx(ref, rel=1e-4)


def test_per_example_losses_separate_trained_texts(tok) -> None:
    model = tiny_causal_lm(tok, seed=1)
    members = ["cats sleep all day long.", "rain falls on red roofs."]
    nonmembers = ["dogs bark at the moon.", "snow hides the blue car."]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = tok([t for t in members], return_tensors="pt", padding=True)
    model.train()
    for _ in range(60):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    m = leakage.per_example_losses(model, tok, members, add_eos=False)
    nm = leakage.per_example_losses(model, tok, nonmembers, add_eos=False)
    assert m.max() < nm.min()
    assert leakage.loss_mia_auc(m, nm) == 1.0
