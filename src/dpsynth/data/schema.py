"""Check a table against the user's column choices and clean it for training.

Every refusal is one `DpsynthError` sentence naming the column and a fix. Messages and the `DataReport` carry
column names and aggregate counts only, never a text or a label value: both may be private. (The counts are not
differentially private; the pipeline treats the record count N as public and decides what else to publish.)
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from dpsynth.data.control_codes import normalise_value
from dpsynth.errors import DpsynthError

MAX_LISTED_COLUMNS = 20


@dataclass(frozen=True)
class DatasetSpec:
    """Which columns hold the text, the labels (control codes, may be empty) and the privacy unit (optional)."""

    text_column: str
    label_columns: list[str] = field(default_factory=list)
    user_column: str | None = None

    @property
    def columns(self) -> list[str]:
        """The columns the validated table keeps, in this order: text, labels, user."""
        return [self.text_column, *self.label_columns, *([self.user_column] if self.user_column else [])]


@dataclass
class DataReport:
    """Aggregate counts about the table (no values): what was read, dropped and why, label cardinalities."""

    rows_read: int
    rows_kept: int
    rows_dropped: dict[str, int]
    label_distinct: dict[str, int]
    num_users: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidatedTable:
    """The cleaned table (spec columns only, `str` values, fresh index) and its report."""

    df: pd.DataFrame
    report: DataReport
    spec: DatasetSpec


def validate_table(df: pd.DataFrame, spec: DatasetSpec, max_label_values: int = 100,
                   drop_empty: bool = False) -> ValidatedTable:
    """Check `df` against `spec` and return the cleaned table.

    Texts keep their content but get `\\r\\n` → `\\n` and surrounding whitespace removed (the control-code
    format puts a blank line before the text). Label and user values are single-lined and stripped with
    `control_codes.normalise_value`, the exact form written into the control codes. Rows whose text is empty
    are refused unless `drop_empty` (the CLI's `--drop-empty`), in which case they are dropped and counted.
    """
    if max_label_values < 1:
        raise DpsynthError("--max-label-values must be at least 1")
    _check_spec(spec)
    for col in spec.columns:
        _require_column(df, col)
    rows_read = len(df)
    if rows_read == 0:
        raise DpsynthError("the table has no rows; give a file with at least one record")

    texts = df[spec.text_column].map(_clean_text)
    empty = texts == ""
    n_empty = int(empty.sum())
    dropped: dict[str, int] = {}
    if n_empty:
        if not drop_empty:
            raise DpsynthError(f"{n_empty:,} of {rows_read:,} rows have an empty or whitespace-only text in column "
                               f"{spec.text_column!r}; remove them or pass --drop-empty to drop them")
        dropped["empty_text"] = n_empty
    keep = ~empty
    out = pd.DataFrame({spec.text_column: texts[keep]})
    if int(keep.sum()) == 0:
        raise DpsynthError(f"no rows are left after dropping {n_empty:,} rows with an empty text; check that "
                           f"--text-column {spec.text_column!r} is the column holding the texts")

    label_distinct: dict[str, int] = {}
    for col in spec.label_columns:
        values = _clean_categorical(df[col][keep], col, what="label")
        distinct = int(values.nunique())
        if distinct > max_label_values:
            raise DpsynthError(f"label column {col!r} has {distinct:,} distinct values, more than "
                               f"--max-label-values {max_label_values}; bucket it into fewer groups or raise "
                               f"--max-label-values")
        label_distinct[col] = distinct
        out[col] = values
    num_users = None
    if spec.user_column:
        users = _clean_categorical(df[spec.user_column][keep], spec.user_column, what="user")
        num_users = int(users.nunique())
        out[spec.user_column] = users
    out = out.reset_index(drop=True)
    report = DataReport(rows_read=rows_read, rows_kept=len(out), rows_dropped=dropped,
                        label_distinct=label_distinct, num_users=num_users)
    return ValidatedTable(df=out, report=report, spec=spec)


def _check_spec(spec: DatasetSpec) -> None:
    if not spec.text_column:
        raise DpsynthError("no text column given; pass --text-column with the name of the column holding the texts")
    if spec.text_column in spec.label_columns:
        raise DpsynthError(f"column {spec.text_column!r} is both the text column and a label column; a label must "
                           f"be a separate column")
    if len(set(spec.label_columns)) != len(spec.label_columns):
        raise DpsynthError("a label column is listed twice in --label-columns; give each column once")
    if spec.user_column is not None:
        if spec.user_column == spec.text_column:
            raise DpsynthError(f"column {spec.user_column!r} is both the text column and the user column; the user "
                               f"id must be a separate column")
        if spec.user_column in spec.label_columns:
            raise DpsynthError(f"column {spec.user_column!r} is both a label column and the user column; user ids "
                               f"must not become control codes (they would be written into the synthetic data)")


def _require_column(df: pd.DataFrame, col: str) -> None:
    available = [str(c) for c in df.columns]
    if col in available:
        return
    close = difflib.get_close_matches(col, available, n=1, cutoff=0.6)
    if not close:
        folded = {c.lower(): c for c in available}
        close = [folded[col.lower()]] if col.lower() in folded else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(repr(c) for c in available[:MAX_LISTED_COLUMNS])
    if len(available) > MAX_LISTED_COLUMNS:
        listed += f" and {len(available) - MAX_LISTED_COLUMNS:,} more"
    delimiter = ""
    if len(available) == 1 and any(d in available[0] for d in (";", "\t", "|")):
        delimiter = " (the file was read as a single column: is it separated by something other than commas?)"
    raise DpsynthError(f"the table has no column {col!r}; {hint}available columns: {listed}{delimiter}")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA


def _clean_text(value: Any) -> str:
    if _is_missing(value):
        return ""
    return str(value).replace("\r\n", "\n").replace("\r", "\n").strip()


def _clean_categorical(column: pd.Series, name: str, *, what: str) -> pd.Series:
    values = column.map(lambda v: "" if _is_missing(v) else normalise_value(v))
    n_missing = int((values == "").sum())
    if n_missing:
        fix = ("fill them (e.g. with 'unknown') or remove those rows" if what == "label"
               else "every record needs a user id for user-level privacy; fill them or remove those rows")
        raise DpsynthError(f"{what} column {name!r} has {n_missing:,} missing or empty values; {fix}")
    return values.astype(object)
