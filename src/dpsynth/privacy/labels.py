"""Where the label combinations for conditional sampling come from.

The reference recipe samples labels "in the real data's proportions" read straight off the private data, which
is not covered by ε. Here the proportions are either a Gaussian-mechanism histogram over the *joint* label
combinations (paid for from the run's budget: `release_label_distribution` records it in the ledger before it is
drawn) or a distribution the user declares public (a file of weights, or uniform). Raw private counts never leave
`dp_label_histogram`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import norm

from dpsynth.errors import DpsynthError
from dpsynth.privacy.accounting import threshold_failure_probability
from dpsynth.privacy.ledger import PrivacyLedger
from dpsynth.privacy.plan import PrivacyPlan

Source = Literal["dp-histogram", "exact-histogram", "public-file", "uniform"]

# The Gaussian mechanism adds noise to every cell of the product, so the product must be small enough to hold.
MAX_CELLS = 5_000_000
WEIGHT_COLUMNS = ("weight", "count", "probability", "p")


@dataclass
class LabelDistribution:
    """A distribution over label combinations, safe to publish (DP-noised or declared public).

    `combos[i]` maps each label column to a string value; `probabilities[i]` is its probability. `noise_multiplier`
    is the Gaussian σ / sensitivity used (None for public sources, 0.0 for the exact, non-private histogram).
    `noisy_counts` keeps the mechanism's raw output (noise included, before clipping) for audits and tests.
    """

    label_columns: list[str]
    combos: list[dict[str, str]]
    probabilities: np.ndarray
    source: Source
    noise_multiplier: float | None = None
    sensitivity: float | None = None
    categories_declared: bool = False
    fell_back_to_uniform: bool = False
    notes: list[str] = field(default_factory=list)
    noisy_counts: np.ndarray | None = None  # the released Gaussian-mechanism output, before clipping (DP-safe)
    threshold: float | None = None  # undeclared values: only combinations whose noisy count exceeded it were kept

    def __post_init__(self) -> None:
        p = np.asarray(self.probabilities, dtype=np.float64)
        if p.ndim != 1 or len(p) != len(self.combos) or len(p) == 0:
            raise ValueError("probabilities must be a non-empty 1-D array with one entry per combination")
        if np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError("probabilities must be finite, non-negative and not all zero")
        self.probabilities = p / p.sum()

    @property
    def private(self) -> bool:
        """True when the proportions carry a DP guarantee (noise > 0) or come from a declared-public source."""
        return self.source not in ("dp-histogram", "exact-histogram") or bool(self.noise_multiplier)

    def allocate(self, n: int) -> np.ndarray:
        """How many of `n` samples each combination gets: exact proportional allocation, largest remainder.

        Every count is floor(n·p) or that plus one, so the empirical proportions are as close to `probabilities` as
        integers allow (zero variance, unlike i.i.d. draws). Ties in the remainder go to the earlier combination.
        """
        if n < 0:
            raise ValueError("n must be non-negative")
        exact = self.probabilities * n
        counts = np.floor(exact).astype(np.int64)
        short = n - int(counts.sum())
        if short > 0:
            remainder = exact - counts
            order = np.lexsort((np.arange(len(remainder)), -remainder))  # largest remainder, then lowest index
            counts[order[:short]] += 1
        return counts

    def draw(self, n: int, seed: int = 0) -> list[dict[str, str]]:
        """`n` label combinations in the exact proportions (see `allocate`), in a seeded random order.

        Deterministic in (`n`, `seed`): a resumed run re-draws the same list and can skip the rows already written.
        """
        counts = self.allocate(n)
        index = np.repeat(np.arange(len(self.combos)), counts)
        order = np.random.default_rng(seed).permutation(n)
        return [dict(self.combos[i]) for i in index[order]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (the probabilities are DP or public, so they may be published)."""
        return {
            "source": self.source,
            "label_columns": list(self.label_columns),
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "categories_declared": self.categories_declared,
            "fell_back_to_uniform": self.fell_back_to_uniform,
            "threshold": self.threshold,
            "num_combinations": len(self.combos),
            "combinations": [{**c, "probability": float(p)} for c, p in zip(self.combos, self.probabilities)],
            "notes": list(self.notes),
        }


def release_label_distribution(table: Any, label_columns: Sequence[str], plan: PrivacyPlan, ledger: PrivacyLedger, *,
                               declared: Mapping[str, Sequence[str]] | None,
                               generator: Callable[[], np.random.Generator]) -> LabelDistribution:
    """The label mix the run samples from, as the plan says: the DP histogram (counted in `ledger` before it is
    drawn), the exact mix without DP, or a distribution declared public (free)."""
    cols = list(label_columns)
    r = plan.request
    if r.label_distribution == "dp":
        if not plan.private:  # ε = ∞: no privacy to protect; the exact mix is used and the ledger says non-private
            return dp_label_histogram(table, cols, noise_multiplier=0.0, categories=declared)
        hist = plan.label_histogram
        assert hist is not None
        ledger.add(hist)
        # One user changes up to `cap` counts by 1 each, possibly all in one cell: L2 sensitivity ≤ cap.
        cap = r.records_per_user_cap if r.unit == "user" and r.records_per_user_cap else 1
        failure = (threshold_failure_probability(hist.threshold_delta, r.epsilon)
                   if hist.threshold_delta > 0 else None)
        return dp_label_histogram(table, cols, noise_multiplier=hist.noise_multiplier, sensitivity=float(cap),
                                  categories=declared, generator=generator(), threshold_failure_probability=failure,
                                  cells_per_unit=cap)
    if r.label_distribution.strip().lower() == "uniform" and declared is None:
        raise DpsynthError("--label-distribution uniform needs the label values declared: pass --label-values with "
                           'a JSON file such as {"sentiment": ["negative", "positive"]} (reading them from the data '
                           "would publish every value, even one only a single record has)")
    return public_label_distribution(r.label_distribution, cols, declared)


def label_distribution_from_dict(d: Mapping[str, Any]) -> LabelDistribution:
    """Inverse of `LabelDistribution.to_dict` (a run's label_distribution.json), so sampling again from a finished
    run reuses its already-paid-for DP histogram instead of drawing (and paying for) a new one."""
    cols = list(d["label_columns"])
    combos = [{c: str(row[c]) for c in cols} for row in d["combinations"]]
    probs = np.array([float(row["probability"]) for row in d["combinations"]])
    return LabelDistribution(cols, combos, probs, d["source"], noise_multiplier=d.get("noise_multiplier"),
                             sensitivity=d.get("sensitivity"), categories_declared=bool(d.get("categories_declared")),
                             fell_back_to_uniform=bool(d.get("fell_back_to_uniform")), notes=list(d.get("notes", [])),
                             threshold=d.get("threshold"))


def _check_columns(label_columns: Sequence[str]) -> list[str]:
    cols = list(label_columns)
    if not cols:
        raise DpsynthError("No label columns were given; pass at least one label column to build a label distribution.")
    if len(set(cols)) != len(cols):
        raise DpsynthError("A label column is listed twice; list each label column once.")
    return cols


def _product(cols: list[str], values: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    sizes = [len(values[c]) for c in cols]
    if any(s == 0 for s in sizes):
        empty = [c for c, s in zip(cols, sizes) if s == 0]
        raise DpsynthError(f"Label column(s) {empty} have no values; declare at least one value for each column.")
    if math.prod(sizes) > MAX_CELLS:
        raise DpsynthError(f"The label columns have {math.prod(sizes):,} value combinations (more than {MAX_CELLS:,}); "
                           "use fewer or coarser label columns.")
    return [dict(zip(cols, combo)) for combo in itertools.product(*(values[c] for c in cols))]


def _declared(categories: Mapping[str, Sequence[Any]], cols: list[str]) -> dict[str, list[str]]:
    missing = [c for c in cols if c not in categories]
    if missing:
        raise DpsynthError(f"Declared categories lack label column(s) {missing}; "
                           "declare the values of every label column.")
    out: dict[str, list[str]] = {}
    for c in cols:
        vals = [str(v) for v in categories[c]]
        if len(set(vals)) != len(vals):
            raise DpsynthError(f"The declared values of label column '{c}' contain a duplicate; list each value once.")
        out[c] = vals
    return out


def dp_label_histogram(
    label_rows: Any,
    label_columns: Sequence[str],
    noise_multiplier: float,
    sensitivity: float = 1.0,
    *,
    categories: Mapping[str, Sequence[Any]] | None = None,
    seed: int | None = None,
    generator: np.random.Generator | None = None,
    threshold_failure_probability: float | None = None,
    cells_per_unit: int = 1,
) -> LabelDistribution:
    """A Gaussian-mechanism histogram of the joint label combinations, normalised to a distribution.

    Label values read from the data (no `categories`) with noise: pass `threshold_failure_probability` p (from
    `accounting.threshold_failure_probability`, its δ accounted by the caller). Then only combinations present in
    the data are counted, and only those whose noisy count exceeds τ = sensitivity + std·Φ⁻¹(1 − p/cells_per_unit)
    are published: a combination held by the differing unit alone (count ≤ sensitivity, in ≤ `cells_per_unit`
    cells) is published with probability ≤ p, so a rare label value does not reveal its one holder. Neither the
    other combinations nor how many there were are published.

    Noise N(0, (noise_multiplier·sensitivity)²) is added to the count of *every* cell of the cartesian product of the
    columns' value sets, including empty cells, so which cells exist does not depend on any one record. Use
    `sensitivity=1` for record-level DP under add/remove, `k` for user-level DP with at most k records per user (all
    k may fall in one cell, so the L2 change is at most k). The (ε, δ) cost of this release is the caller's to
    account (it is one Gaussian mechanism with this noise multiplier).

    The value set of each column is the schema: declared (`categories`: noise on every cell of their product,
    records with an undeclared value are not counted — silently, since reporting how many would itself leak), or
    read from the data — thresholded as above under noise, exact for the non-private `noise_multiplier=0`.

    Post-processing (free of privacy cost): negative noisy counts are clipped to 0 and the rest normalised; if every
    cell clips to 0 the distribution falls back to uniform over the product and says so (`fell_back_to_uniform`).
    `noise_multiplier=0` gives the exact, non-private distribution (for ε = ∞ runs); it is marked as such.
    """
    cols = _check_columns(label_columns)
    if noise_multiplier < 0 or not math.isfinite(noise_multiplier):
        raise DpsynthError("The label histogram's noise multiplier must be a finite number ≥ 0.")
    if sensitivity <= 0 or not math.isfinite(sensitivity):
        raise DpsynthError("The label histogram's sensitivity must be a finite number > 0.")
    frame = label_rows if isinstance(label_rows, pd.DataFrame) else pd.DataFrame(label_rows)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise DpsynthError(f"Label column(s) {missing} are not in the data; check the label column names.")
    keys = frame[cols].astype(str)
    std = float(noise_multiplier) * float(sensitivity)
    rng = generator if generator is not None else np.random.default_rng(seed)
    if categories is None and std > 0:
        if threshold_failure_probability is None:
            raise DpsynthError("Label values read from the private data need a threshold for the DP histogram "
                               "(threshold_failure_probability), or declare the label values.")
        return _thresholded_histogram(keys, cols, noise_multiplier, sensitivity, threshold_failure_probability,
                                      cells_per_unit, rng)

    if categories is not None:
        values = _declared(categories, cols)
    else:
        values = {c: sorted(keys[c].unique().tolist()) for c in cols}
    combos = _product(cols, values)

    counts = _joint_counts(keys, cols, values)
    if std > 0:
        counts = counts + rng.normal(0.0, std, size=counts.shape)
    clipped = np.clip(counts, 0.0, None)
    notes: list[str] = []
    if std == 0:
        notes.append("Noise multiplier 0: the exact label distribution of the data (no privacy).")
    fell_back = not clipped.sum() > 0
    if fell_back:
        clipped = np.ones_like(clipped)
        notes.append("Every noisy count was ≤ 0; sampling labels uniformly over all combinations instead.")
    source: Source = "dp-histogram" if std > 0 else "exact-histogram"  # σ = 0 (ε = ∞ runs) is no DP: say so
    return LabelDistribution(cols, combos, clipped, source, noise_multiplier=float(noise_multiplier),
                             sensitivity=float(sensitivity), categories_declared=categories is not None,
                             fell_back_to_uniform=fell_back, notes=notes, noisy_counts=counts)


def _joint_counts(keys: pd.DataFrame, cols: list[str], values: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Counts over the product of the value sets, cell index in row-major (itertools.product) order; a record with
    a value outside its column's set is not counted."""
    index = np.zeros(len(keys), dtype=np.int64)
    valid = np.ones(len(keys), dtype=bool)
    for c in cols:
        pos = {v: i for i, v in enumerate(values[c])}
        col_idx = keys[c].map(pos)
        valid &= col_idx.notna().to_numpy()
        index = index * len(values[c]) + col_idx.fillna(0).to_numpy(dtype=np.int64)
    return np.bincount(index[valid], minlength=math.prod(len(values[c]) for c in cols)).astype(np.float64)


def _thresholded_histogram(keys: Any, cols: list[str], noise_multiplier: float, sensitivity: float,
                           failure_probability: float, cells_per_unit: int,
                           rng: np.random.Generator) -> LabelDistribution:
    """The sparse Gaussian histogram with a threshold (see `dp_label_histogram`)."""
    if not 0 < failure_probability < 1:
        raise DpsynthError(f"The threshold's failure probability must be in (0, 1), got {failure_probability}.")
    if cells_per_unit < 1:
        raise DpsynthError(f"cells_per_unit must be ≥ 1, got {cells_per_unit}.")
    std = float(noise_multiplier) * float(sensitivity)
    threshold = float(sensitivity) + std * float(norm.isf(failure_probability / cells_per_unit))
    grouped = keys.groupby(cols, sort=True).size()  # combinations present in the data, in a fixed (sorted) order
    present = [dict(zip(cols, k if isinstance(k, tuple) else (k,))) for k in grouped.index]
    noisy = grouped.to_numpy(dtype=np.float64) + rng.normal(0.0, std, size=len(grouped))
    keep = noisy > threshold
    if not keep.any():
        raise DpsynthError(f"No label combination is frequent enough to be published under DP (noisy count above "
                           f"{threshold:.0f}); declare the label values (--label-values) or a public label "
                           "distribution. (This outcome came from the noisy histogram: running again until one "
                           "passes, or with more of ε for it, is another release — docs/privacy.md.)")
    kept = [c for c, k in zip(present, keep) if k]
    notes = [f"Label values were read from the private data: only combinations whose noisy count exceeded "
             f"{threshold:.1f} were published (a combination only one {'user' if cells_per_unit > 1 else 'record'} "
             f"holds passes with probability ≤ {failure_probability:.2g}); {len(kept)} were kept. Declare the "
             "label values to sample every combination."]
    return LabelDistribution(cols, kept, noisy[keep], "dp-histogram", noise_multiplier=float(noise_multiplier),
                             sensitivity=float(sensitivity), categories_declared=False, notes=notes,
                             noisy_counts=noisy[keep], threshold=threshold)


def read_label_values(path: str | Path, label_columns: Sequence[str]) -> dict[str, list[str]]:
    """The label values a user declares public: a JSON object mapping every label column to its list of values."""
    path = Path(path)
    cols = _check_columns(label_columns)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DpsynthError(f"The label values file {path} does not exist; pass a JSON file such as "
                           '{"sentiment": ["negative", "positive"]}.') from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DpsynthError(f"The label values file {path.name} is not valid JSON; write an object mapping each label "
                           'column to its list of values, e.g. {"sentiment": ["negative", "positive"]}.') from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and v for v in data.values()):
        raise DpsynthError(f"The label values file {path.name} must map each label column to a non-empty list of "
                           'values, e.g. {"sentiment": ["negative", "positive"]}.')
    declared = _declared(data, cols)
    extra = [str(c) for c in data if c not in cols]
    if extra:  # a column the user meant to condition on but left out of --label-columns would be silently ignored
        raise DpsynthError(f"The label values file {path.name} declares column(s) {extra} that are not label columns "
                           f"{cols}; add them to --label-columns or remove them from the file.")
    return declared


def _read_weight_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "combinations" in data:
                data = data["combinations"]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise DpsynthError(f"{path.name} must hold a list of objects, one per label combination.")
            return data
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as e:
        raise DpsynthError(f"Could not parse the label distribution file {path.name} ({type(e).__name__}); "
                           "check that it is valid CSV/JSON.") from None
    raise DpsynthError(f"The label distribution file {path.name} must end in .csv, .json or .jsonl.")


def public_label_distribution(
    source: str | Path,
    label_columns: Sequence[str],
    categories: Mapping[str, Sequence[Any]] | None = None,
) -> LabelDistribution:
    """A label distribution the user declares public: `"uniform"` or a CSV/JSON(L) file of combinations.

    A file has one row/object per combination with every label column, plus an optional weight column (`weight`,
    `count`, `probability` or `p`); without one every row weighs 1, so a public sample of label rows gives its
    empirical proportions. Repeated combinations add up. `"uniform"` needs `categories` (the declared values of each
    column): there is no public source for them otherwise. With `categories`, a file's combinations must use
    declared values only. No privacy budget is spent: the declaration that the source is public is the user's.
    """
    cols = _check_columns(label_columns)
    if str(source).strip().lower() == "uniform":
        if categories is None:
            raise DpsynthError("A uniform label distribution needs the label values declared (categories); "
                               "declare them, or use a DP histogram or a public file of label weights.")
        values = _declared(categories, cols)
        combos = _product(cols, values)
        return LabelDistribution(cols, combos, np.ones(len(combos)), "uniform", categories_declared=True,
                                 notes=["Labels drawn uniformly over the declared value combinations."])

    path = Path(source)
    if not path.is_file():
        raise DpsynthError(f"Label distribution file {path} does not exist; pass 'dp', 'uniform' or a CSV/JSON path.")
    rows = _read_weight_rows(path)
    if not rows:
        raise DpsynthError(f"The label distribution file {path.name} has no rows; add one row per label combination.")
    missing = [c for c in cols if c not in rows[0]]
    if missing:
        raise DpsynthError(f"The label distribution file {path.name} lacks label column(s) {missing}.")
    wcol = next((w for w in WEIGHT_COLUMNS if w in rows[0]), None)
    declared = _declared(categories, cols) if categories is not None else None
    weights: dict[tuple[str, ...], float] = {}
    for r in rows:
        key = tuple(str(r[c]) for c in cols)
        if declared is not None:
            bad = [c for c, v in zip(cols, key) if v not in declared[c]]
            if bad:
                raise DpsynthError(f"The label distribution file {path.name} uses a value of column(s) {bad} that "
                                   "is not among the declared categories.")
        try:
            w = float(r[wcol]) if wcol else 1.0
        except (TypeError, ValueError):
            raise DpsynthError(f"The '{wcol}' column of {path.name} must hold numbers.") from None
        if not math.isfinite(w) or w < 0:
            raise DpsynthError(f"The '{wcol}' column of {path.name} must hold finite non-negative numbers.")
        weights[key] = weights.get(key, 0.0) + w
    if sum(weights.values()) <= 0:
        raise DpsynthError(f"The weights in {path.name} are all zero; give at least one combination a weight > 0.")
    combos = [dict(zip(cols, k)) for k in weights]
    return LabelDistribution(cols, combos, np.array(list(weights.values())), "public-file",
                             categories_declared=declared is not None,
                             notes=[f"Label proportions declared public by the user ({path.name})."])
