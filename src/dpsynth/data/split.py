"""A deterministic train/test split, optionally stratified, for benchmarks and the demo's evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpsynth.errors import DpsynthError


def split_train_test(df: pd.DataFrame, test_fraction: float, seed: int = 0,
                     stratify: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (train, test), the same for the same inputs and seed; both keep a fresh index.

    The test part has round(N · test_fraction) rows, at least one and at most N − 1. With `stratify` set to a
    column, each of its values is split in the same proportion (largest remainder), so rare labels appear in both.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DpsynthError(f"the test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    n = len(df)
    if n < 2:
        raise DpsynthError("a train/test split needs at least 2 rows")
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    rng = np.random.default_rng(seed)
    if stratify is None:
        test_pos = rng.permutation(n)[:n_test]
    else:
        groups = [np.flatnonzero(mask) for mask in _group_masks(df[stratify])]
        quotas = largest_remainder([len(g) for g in groups], n_test)
        test_pos = np.concatenate([rng.permutation(g)[:q] for g, q in zip(groups, quotas)])
    is_test = np.zeros(n, dtype=bool)
    is_test[test_pos] = True
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def _group_masks(column: pd.Series) -> list[np.ndarray]:
    values = column.astype(str).to_numpy()
    return [values == v for v in sorted(set(values))]


def largest_remainder(sizes: list[int], total: int) -> list[int]:
    """Integer quotas proportional to `sizes` that add up to `total` (ties go to the earlier group)."""
    n = sum(sizes)
    if n == 0 or total <= 0:
        return [0] * len(sizes)
    exact = [s * total / n for s in sizes]
    quotas = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[: total - sum(quotas)]:
        quotas[i] += 1
    return [min(q, s) for q, s in zip(quotas, sizes)]
