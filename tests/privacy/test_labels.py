from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dpsynth.errors import DpsynthError
from dpsynth.privacy.labels import (
    LabelDistribution,
    dp_label_histogram,
    public_label_distribution,
    read_label_values,
)


def _frame(counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [{"a": a, "b": b} for (a, b), n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows)


def test_exact_histogram_is_joint_and_normalised():
    df = _frame({("x", "1"): 6, ("x", "2"): 0, ("y", "1"): 1, ("y", "2"): 3})
    dist = dp_label_histogram(df, ["a", "b"], noise_multiplier=0.0)
    got = {(c["a"], c["b"]): p for c, p in zip(dist.combos, dist.probabilities)}
    # Only 3 observed combos, but the product of the observed value sets has 4 cells (x,2 is empty).
    assert got == pytest.approx({("x", "1"): 0.6, ("x", "2"): 0.0, ("y", "1"): 0.1, ("y", "2"): 0.3})
    assert dist.source == "exact-histogram" and not dist.categories_declared and not dist.private


def test_noise_std_matches_multiplier_times_sensitivity():
    # 50 × 40 = 2000 cells of 100 records each (> 10 σ): no clipping, so noisy − true is pure noise. The sample
    # standard deviation of 2000 normals has relative standard error 1/sqrt(2·2000) ≈ 1.6%, so a 6% band is
    # > 3.5 SE; the mean's SE is std/sqrt(2000) ≈ 2.2% of std, checked at 4 SE.
    a_vals, b_vals = [f"a{i}" for i in range(50)], [f"b{j}" for j in range(40)]
    df = pd.DataFrame({"a": np.repeat(a_vals, 40 * 100), "b": np.tile(np.repeat(b_vals, 100), 50)})
    for sigma, sens in [(0.8, 1.0), (2.0, 3.0)]:
        dist = dp_label_histogram(df, ["a", "b"], noise_multiplier=sigma, sensitivity=sens, seed=7,
                                  categories={"a": a_vals, "b": b_vals})
        noise = dist.noisy_counts - 100.0
        std = sigma * sens
        assert abs(noise.std(ddof=1) / std - 1) < 0.06
        assert abs(noise.mean()) < 4 * std / np.sqrt(noise.size)
        assert dist.noise_multiplier == sigma and dist.sensitivity == sens and dist.private


def test_noise_is_seeded():
    df = _frame({("x", "1"): 5, ("y", "2"): 5})
    cats = {"a": ["x", "y"], "b": ["1", "2"]}
    d1 = dp_label_histogram(df, ["a", "b"], noise_multiplier=1.0, seed=3, categories=cats)
    d2 = dp_label_histogram(df, ["a", "b"], noise_multiplier=1.0, seed=3, categories=cats)
    d3 = dp_label_histogram(df, ["a", "b"], noise_multiplier=1.0, seed=4, categories=cats)
    assert np.array_equal(d1.noisy_counts, d2.noisy_counts)
    assert not np.array_equal(d1.noisy_counts, d3.noisy_counts)


def test_negative_counts_clipped_and_uniform_fallback():
    df = _frame({("x", "1"): 1, ("y", "2"): 0})
    df = pd.concat([df, pd.DataFrame([{"a": "y", "b": "1"}])])
    seen_negative = False
    for seed in range(20):
        dist = dp_label_histogram(df, ["a", "b"], noise_multiplier=5.0, seed=seed,
                                  categories={"a": ["x", "y"], "b": ["1", "2"]})
        neg = dist.noisy_counts < 0
        seen_negative |= bool(neg.any())
        if dist.fell_back_to_uniform:
            assert np.allclose(dist.probabilities, 1 / len(dist.combos)) and any("uniform" in n for n in dist.notes)
        else:
            assert np.all(dist.probabilities[neg] == 0)
            assert dist.probabilities.sum() == pytest.approx(1.0)
    assert seen_negative


def test_all_zero_falls_back_to_uniform():
    # Declared categories that no record uses: the true counts are all 0, and with a tiny σ about half the cells
    # go negative; choose a seed where all do.
    df = pd.DataFrame({"a": ["zzz"] * 3})
    for seed in range(100):
        dist = dp_label_histogram(df, ["a"], noise_multiplier=1e-6, categories={"a": ["x", "y"]}, seed=seed)
        if (dist.noisy_counts <= 0).all():
            assert dist.fell_back_to_uniform and np.allclose(dist.probabilities, 0.5)
            break
    else:
        pytest.fail("no seed made both cells negative")


def test_declared_categories_respected():
    df = _frame({("x", "1"): 4, ("y", "1"): 4})
    dist = dp_label_histogram(df, ["a", "b"], noise_multiplier=0.0, categories={"a": ["x", "z"], "b": [1, 2]})
    assert dist.categories_declared
    assert [(c["a"], c["b"]) for c in dist.combos] == [("x", "1"), ("x", "2"), ("z", "1"), ("z", "2")]
    # 'y' is undeclared: not counted; 'z' gets a cell although no record has it.
    assert dist.probabilities.tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(DpsynthError):
        dp_label_histogram(df, ["a", "b"], noise_multiplier=1.0, categories={"a": ["x"]})


def test_missing_column_is_user_error():
    with pytest.raises(DpsynthError, match="not in the data"):
        dp_label_histogram(pd.DataFrame({"a": ["x"]}), ["a", "nope"], noise_multiplier=1.0)


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
def test_draw_exact_proportions(n):
    p = np.array([0.5, 0.3, 0.15, 0.05])
    dist = LabelDistribution(["k"], [{"k": str(i)} for i in range(4)], p, "uniform")
    rows = dist.draw(n, seed=1)
    counts = np.array([sum(r["k"] == str(i) for r in rows) for i in range(4)])
    assert counts.sum() == n
    assert np.all(np.abs(counts - p * n) < 1)  # largest remainder: each within one of the exact share
    assert rows == dist.draw(n, seed=1)
    if n >= 100:
        assert rows != dist.draw(n, seed=2)  # same counts, different order
        assert sorted(r["k"] for r in rows) == sorted(r["k"] for r in dist.draw(n, seed=2))


def test_largest_remainder_goes_to_largest_fraction():
    dist = LabelDistribution(["k"], [{"k": "a"}, {"k": "b"}, {"k": "c"}], np.array([0.45, 0.35, 0.2]), "uniform")
    # n=2: exact 0.9, 0.7, 0.4 → floors 0,0,0; the two largest remainders (a, b) get one each.
    assert dist.allocate(2).tolist() == [1, 1, 0]
    # Binary-exact shares: n=4 gives 1.5, 0.5, 2 → a tie in remainders goes to the earlier combination.
    tie = LabelDistribution(["k"], [{"k": "a"}, {"k": "b"}, {"k": "c"}], np.array([0.375, 0.125, 0.5]), "uniform")
    assert tie.allocate(4).tolist() == [2, 0, 2]


def test_public_uniform_and_files(tmp_path):
    dist = public_label_distribution("uniform", ["a", "b"], {"a": ["x", "y"], "b": ["1", "2", "3"]})
    assert dist.source == "uniform" and len(dist.combos) == 6 and np.allclose(dist.probabilities, 1 / 6)
    with pytest.raises(DpsynthError, match="declared"):
        public_label_distribution("uniform", ["a"])

    csv_path = tmp_path / "w.csv"
    csv_path.write_text("a,b,weight\nx,1,3\ny,2,1\nx,1,1\n")
    dist = public_label_distribution(csv_path, ["a", "b"])
    got = {(c["a"], c["b"]): p for c, p in zip(dist.combos, dist.probabilities)}
    assert got == pytest.approx({("x", "1"): 0.8, ("y", "2"): 0.2}) and dist.source == "public-file"

    json_path = tmp_path / "w.json"
    json_path.write_text(json.dumps([{"a": "x", "b": 1}, {"a": "y", "b": 1}, {"a": "y", "b": 1}]))
    dist = public_label_distribution(json_path, ["a", "b"])  # no weight column: each row weighs 1
    got = {(c["a"], c["b"]): p for c, p in zip(dist.combos, dist.probabilities)}
    assert got == pytest.approx({("x", "1"): 1 / 3, ("y", "1"): 2 / 3})

    with pytest.raises(DpsynthError, match="declared"):
        public_label_distribution(json_path, ["a", "b"], {"a": ["x"], "b": ["1"]})
    with pytest.raises(DpsynthError, match="lacks"):
        public_label_distribution(csv_path, ["a", "c"])
    with pytest.raises(DpsynthError, match="does not exist"):
        public_label_distribution(tmp_path / "missing.csv", ["a"])


def test_undeclared_values_are_thresholded_so_a_single_holder_is_rarely_revealed():
    """Values read from the data: a combination held by one record must be published with probability ≤ p (here
    exactly p: count 1 = sensitivity), frequent ones always; without a threshold the histogram is refused."""
    from scipy.stats import norm

    df = _frame({("x", "1"): 400, ("y", "2"): 300, ("rare", "9"): 1})
    p, sigma = 0.05, 2.0
    trials, rare_published = 2000, 0
    for seed in range(trials):
        dist = dp_label_histogram(df, ["a", "b"], noise_multiplier=sigma, seed=seed, threshold_failure_probability=p)
        published = {(c["a"], c["b"]) for c in dist.combos}
        assert {("x", "1"), ("y", "2")} <= published
        rare_published += ("rare", "9") in published
        assert len(dist.noisy_counts) == len(dist.combos) and dist.to_dict()["num_combinations"] == len(published)
    assert dist.threshold == pytest.approx(1 + sigma * norm.isf(p)) and not dist.categories_declared
    se = np.sqrt(p * (1 - p) / trials)
    assert abs(rare_published / trials - p) < 5 * se  # fails if the threshold ignored the sensitivity or p
    # user level: up to `cap` records of one user, in up to `cap` cells: τ = cap + std·Φ⁻¹(1 − p/cap)
    user = dp_label_histogram(df, ["a", "b"], noise_multiplier=sigma, sensitivity=3.0, seed=0,
                              threshold_failure_probability=p, cells_per_unit=3)
    assert user.threshold == pytest.approx(3 + 3 * sigma * norm.isf(p / 3))
    with pytest.raises(DpsynthError, match="threshold"):
        dp_label_histogram(df, ["a", "b"], noise_multiplier=sigma, seed=0)
    with pytest.raises(DpsynthError, match="frequent enough"):
        dp_label_histogram(_frame({("x", "1"): 2}), ["a", "b"], noise_multiplier=sigma, seed=0,
                           threshold_failure_probability=1e-6)


def test_declared_label_values_file(tmp_path):
    path = tmp_path / "values.json"
    path.write_text(json.dumps({"a": ["x", "y"], "b": ["1"]}))
    assert read_label_values(path, ["a", "b"]) == {"a": ["x", "y"], "b": ["1"]}
    with pytest.raises(DpsynthError, match="lack"):
        read_label_values(path, ["a", "c"])
    with pytest.raises(DpsynthError, match=r"declares column\(s\) \['b'\] that are not label columns"):
        read_label_values(path, ["a"])  # 'b' left out of --label-columns would silently not be conditioned on
    path.write_text("[1, 2]")
    with pytest.raises(DpsynthError, match="must map"):
        read_label_values(path, ["a"])
    with pytest.raises(DpsynthError, match="does not exist"):
        read_label_values(tmp_path / "nope.json", ["a"])
