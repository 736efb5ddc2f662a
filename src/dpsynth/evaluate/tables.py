"""Read the real, synthetic and training tables that an evaluation compares, and check their columns.

Why here: every metric needs the same cleaned view (text as str, labels as str, empty texts dropped and counted),
and a user mistake such as a misspelt column must become one `DpsynthError` before minutes of embedding work.
Files are read with the shared `dpsynth.data.reader.read_table`, so every format and every file error reads the
same as in `dpsynth run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dpsynth.data.reader import read_table
from dpsynth.errors import DpsynthError


@dataclass
class TextTable:
    """One side of the comparison: texts and label columns (all strings), plus what was dropped on reading."""

    name: str  # "real", "synthetic" or "train": used in messages, never the file content
    texts: list[str]
    labels: dict[str, list[str]] = field(default_factory=dict)
    dropped_empty: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def subsample(self, max_records: int | None, seed: int) -> TextTable:
        """A seeded uniform subsample (kept in file order) so costly metrics stay bounded on large files."""
        if max_records is None or len(self) <= max_records:
            return self

        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=max_records, replace=False))
        return TextTable(self.name, [self.texts[i] for i in idx],
                         {c: [v[i] for i in idx] for c, v in self.labels.items()}, self.dropped_empty)


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/JSON/Parquet file (optionally .gz/.bz2/.xz) with the project-wide reader."""
    return read_table(Path(path))


def to_text_table(frame: pd.DataFrame, name: str, text_column: str, label_columns: Sequence[str],
                  source: str | Path = "") -> TextTable:
    """Select and clean the text and label columns; missing columns are a user error naming the file."""
    where = f" in {source}" if source else ""
    missing = [c for c in [text_column, *label_columns] if c not in frame.columns]
    if missing:
        shown = ", ".join(map(str, list(frame.columns)[:12]))
        raise DpsynthError(f"the {name} table{where} has no column {missing[0]!r} (columns: {shown}); "
                           "pass --text-column / --label-columns that exist in every table")
    text = frame[text_column]
    keep = text.notna() & text.astype(str).str.strip().ne("")
    dropped = int((~keep).sum())
    frame = frame.loc[keep]
    texts = frame[text_column].astype(str).tolist()
    labels = {c: frame[c].map(_label_str).tolist() for c in label_columns}
    if not texts:
        raise DpsynthError(f"the {name} table{where} has no non-empty text in column {text_column!r}")
    return TextTable(name, texts, labels, dropped)


def _label_str(value: object) -> str:
    """Labels compare as strings, so 5, 5.0 and "5" from CSV vs JSONL/Parquet are the same class."""
    if value is None or (isinstance(value, float) and value != value):
        return "<missing>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and "e" not in text.lower() else text


def load_text_table(path: str | Path, name: str, text_column: str, label_columns: Sequence[str]) -> TextTable:
    """Read `path` and keep its text and label columns (see `to_text_table`)."""
    return to_text_table(read_frame(path), name, text_column, label_columns, source=path)
