"""Fidelity metrics against cases with known answers (synthetic embeddings), plus one real-text check with MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from dpsynth.errors import DpsynthError
from dpsynth.evaluate import fidelity


def _cloud(n: int, dim: int = 16, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    x[:, 0] += shift
    return x


def test_identical_sets_are_perfect() -> None:
    x = _cloud(200)
    pr = fidelity.precision_recall(x, x.copy(), k=3)
    assert pr.precision == 1.0 and pr.recall == 1.0 and pr.f1 == 1.0
    assert fidelity.frechet_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-6)
    assert fidelity.mauve_score(x, x.copy()) == pytest.approx(1.0, abs=1e-6)


def test_disjoint_sets_score_badly() -> None:
    real, syn = _cloud(200, seed=0), _cloud(200, seed=1, shift=50.0)
    pr = fidelity.precision_recall(real, syn)
    assert pr.precision == 0.0 and pr.recall == 0.0 and pr.f1 == 0.0
    assert fidelity.frechet_distance(real, syn) > 2000  # |shift|² = 2500 dominates
    assert fidelity.mauve_score(real, syn) < 0.05


def test_precision_recall_hand_computed() -> None:
    # real points 0, 1, 2, 3 on a line; with k = 1 every ball has radius 1
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    syn = np.array([[0.5], [3.9], [10.0], [11.0], [12.0]])  # 0.5 and 3.9 are inside, 10-12 are not
    pr = fidelity.precision_recall(real, syn, k=1)
    assert pr.precision == pytest.approx(2 / 5)
    # synthetic balls (k=1): 0.5→r=3.4, 3.9→r=3.4, 10→1, 11→1, 12→1 ; real 0,1,2,3 all within 3.4 of 0.5
    assert pr.recall == 1.0
    assert pr.f1 == pytest.approx(2 * 0.4 / 1.4)


def test_knn_radii_match_brute_force_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _cloud(97, dim=5, seed=3)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    expected = np.sort(d, axis=1)[:, 3]
    np.testing.assert_allclose(fidelity.knn_radii(x, 3), expected, rtol=1e-9, atol=1e-9)
    full = fidelity.precision_recall(x, _cloud(50, dim=5, seed=4, shift=1.0))
    monkeypatch.setattr(fidelity, "_CHUNK_ELEMENTS", 64)  # force many small blocks
    np.testing.assert_allclose(fidelity.knn_radii(x, 3), expected, rtol=1e-9, atol=1e-9)
    assert fidelity.precision_recall(x, _cloud(50, dim=5, seed=4, shift=1.0)) == full


def test_fid_closed_forms() -> None:
    x = _cloud(500, dim=4, seed=5)
    shift = np.array([3.0, 0.0, -4.0, 0.0])
    # same covariance, mean moved by v: FID = |v|² exactly
    assert fidelity.frechet_distance(x, x + shift) == pytest.approx(25.0, rel=1e-6)
    # zero-mean X vs 2X: Tr(S + 4S - 2·2S) = Tr(S)
    xc = x - x.mean(0)
    assert fidelity.frechet_distance(xc, 2 * xc) == pytest.approx(np.trace(np.cov(xc, rowvar=False)), rel=1e-6)


def test_fid_handles_rank_deficient_covariance() -> None:
    x = np.zeros((30, 8))
    x[:, :2] = _cloud(30, dim=2, seed=6)  # 6 constant dimensions: singular covariance
    value = fidelity.frechet_distance(x, x[::-1].copy())
    assert np.isfinite(value) and value == pytest.approx(0.0, abs=1e-6)


def test_mauve_small_sets_and_buckets() -> None:
    assert fidelity.mauve_buckets(5, 500) == 2
    assert fidelity.mauve_buckets(2000, 2000) == 200
    real, syn = _cloud(8, seed=7), _cloud(8, seed=8)
    assert 0.0 < fidelity.mauve_score(real, syn) <= 1.0
    assert fidelity.mauve_score(real, syn, seed=3) == fidelity.mauve_score(real, syn, seed=3)
    with pytest.raises(DpsynthError):
        fidelity.mauve_score(real[:1], syn)
    with pytest.raises(DpsynthError):
        fidelity.precision_recall(real[:3], syn, k=3)


def test_pca_2d_shapes() -> None:
    pca = fidelity.pca_2d(_cloud(50), _cloud(3000, seed=2), max_points=100)
    assert np.asarray(pca["real"]).shape == (50, 2)
    assert np.asarray(pca["synthetic"]).shape == (100, 2)


@pytest.mark.real_model
def test_minilm_same_domain_beats_other_domain(reviews, headlines) -> None:
    from dpsynth.evaluate.embeddings import encode_texts

    texts = reviews["text"].tolist()
    real = encode_texts(texts[:100], device="cpu")
    same = encode_texts(texts[100:200], device="cpu")
    other = encode_texts(headlines[:100], device="cpu")
    pr_same, pr_other = fidelity.precision_recall(real, same), fidelity.precision_recall(real, other)
    assert pr_same.f1 > 0.6 and pr_other.f1 < 0.2  # measured: 0.79 vs 0.04
    # 100 records in 384 dimensions bias FID upwards for both; measured 0.62 vs 1.18
    assert fidelity.frechet_distance(real, same) < 0.7 * fidelity.frechet_distance(real, other)
    assert fidelity.mauve_score(real, same) > 0.8
    assert fidelity.mauve_score(real, other) < 0.2
