"""Distributional fidelity of synthetic text, measured on sentence embeddings (as in the reference recipe).

* precision / recall / F1 (Kynkäänniemi et al. 2019, k = 3): each set's support is estimated as the union of
  balls around its points, each ball reaching to that point's k-th nearest neighbour. Precision = share of
  synthetic points inside the real support (are the samples realistic?); recall = share of real points inside the
  synthetic support (is the real variety covered?).
* FID: Fréchet distance between Gaussians fitted to the two embedding sets (0 = same mean and covariance).
* MAUVE (Pillutla et al. 2021) via `mauve-text`: quantise both sets jointly with k-means and compare the two
  histograms along a divergence frontier (1 = indistinguishable, → 0 = disjoint).

The text statistics (lengths, labels, n-grams, topics) live in `dpsynth.evaluate.textstats`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import mauve
import numpy as np
from scipy import linalg
from sklearn.decomposition import PCA

from dpsynth.errors import DpsynthError

_CHUNK_ELEMENTS = 1 << 22  # distance-matrix block (32 MiB of float64): bounded memory for large sets


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    f1: float
    k: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    a_sq = np.einsum("ij,ij->i", a, a)[:, None]
    return np.maximum(a_sq + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_cols))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point in the same set."""
    n = len(x)
    if n <= k:
        raise DpsynthError(f"precision/recall with k = {k} needs more than {k} records in each set (got {n})")
    x = np.asarray(x, dtype=np.float64)
    x_sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(n)
    step = _rows_per_chunk(n)
    for start in range(0, n, step):
        d = _sq_dists(x[start:start + step], x, x_sq)
        # index 0 after partition is the point itself (distance 0); the k-th other neighbour sits at index k
        out[start:start + step] = np.partition(d, k, axis=1)[:, k]
    return out


def coverage_fraction(points: np.ndarray, support: np.ndarray, radii: np.ndarray) -> float:
    """Share of `points` lying inside at least one ball (centre in `support`, squared radius in `radii`)."""
    points = np.asarray(points, dtype=np.float64)
    support = np.asarray(support, dtype=np.float64)
    s_sq = np.einsum("ij,ij->i", support, support)
    inside = np.zeros(len(points), dtype=bool)
    step = _rows_per_chunk(len(support))
    # a tiny tolerance so a point identical to a support point counts as inside despite rounding in the expansion
    tol = 1e-9 * max(1.0, float(s_sq.max(initial=0.0)))
    for start in range(0, len(points), step):
        d = _sq_dists(points[start:start + step], support, s_sq)
        inside[start:start + step] = (d <= radii[None, :] + tol).any(axis=1)
    return float(inside.mean()) if len(points) else 0.0


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls, and their harmonic mean."""
    precision = coverage_fraction(synthetic, real, knn_radii(real, k))
    recall = coverage_fraction(real, synthetic, knn_radii(synthetic, k))
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return PrecisionRecall(precision, recall, f1, k)


def frechet_distance(real: np.ndarray, synthetic: np.ndarray) -> float:
    """FID between Gaussian fits: |μ₁-μ₂|² + Tr(Σ₁ + Σ₂ - 2(Σ₁Σ₂)^½); 0 for identical sets."""
    real = np.asarray(real, dtype=np.float64)
    synthetic = np.asarray(synthetic, dtype=np.float64)
    if len(real) < 2 or len(synthetic) < 2:
        raise DpsynthError("FID needs at least 2 records in each set")
    mu1, mu2 = real.mean(0), synthetic.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(synthetic, rowvar=False)
    with warnings.catch_warnings():  # a singular product (fewer records than dimensions) is expected and handled
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # nudge both covariances, as the FID reference code does
            offset = np.eye(len(s1)) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    # sqrtm of a product of PSD matrices has real eigenvalues; rounding leaves tiny imaginary parts — drop them
    covmean = np.real(covmean)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def mauve_buckets(n_real: int, n_synthetic: int) -> int:
    """k-means buckets for MAUVE: the package's n/10 rule, at least 2, and no more than the smaller set allows."""
    n = min(n_real, n_synthetic)
    return int(max(2, min(n // 10 if n >= 20 else 2, n)))


def mauve_score(real: np.ndarray, synthetic: np.ndarray, *, seed: int = 25, num_buckets: int | str = "auto",
                kmeans_num_redo: int = 5, kmeans_max_iter: int = 500) -> float:
    """MAUVE on precomputed embeddings (p = real, q = synthetic); deterministic for a fixed seed."""
    if len(real) < 2 or len(synthetic) < 2:
        raise DpsynthError("MAUVE needs at least 2 records in each set")
    buckets = mauve_buckets(len(real), len(synthetic)) if num_buckets == "auto" else int(num_buckets)
    with _quiet_native_stderr():  # faiss prints "please provide at least 39×k points" for small sets
        out = mauve.compute_mauve(p_features=np.asarray(real, dtype=np.float32),
                                  q_features=np.asarray(synthetic, dtype=np.float32), num_buckets=buckets,
                                  seed=seed, kmeans_num_redo=kmeans_num_redo, kmeans_max_iter=kmeans_max_iter,
                                  verbose=False)
    return float(out.mauve)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence C/C++ writes to file descriptor 2 for a block (Python-level errors still propagate normally)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def pca_2d(real: np.ndarray, synthetic: np.ndarray, max_points: int = 2000, seed: int = 0
           ) -> dict[str, list[list[float]]]:
    """2-D PCA of both sets fitted on the real embeddings, for a scatter plot (subsampled to keep reports small)."""
    rng = np.random.default_rng(seed)

    def pick(x: np.ndarray) -> np.ndarray:
        return x if len(x) <= max_points else x[np.sort(rng.choice(len(x), size=max_points, replace=False))]

    if len(real) < 2:
        return {"real": [], "synthetic": []}
    pca = PCA(n_components=2, random_state=seed).fit(real)
    return {"real": np.round(pca.transform(pick(real)), 4).tolist(),
            "synthetic": np.round(pca.transform(pick(synthetic)), 4).tolist()}
