"""validate_table: the cleaned table, its aggregate report, and one-sentence refusals that never echo values."""

from __future__ import annotations

import pandas as pd
import pytest

from dpsynth.data.schema import DatasetSpec, validate_table
from dpsynth.errors import DpsynthError

SECRET = "Zorgblatt"  # appears in texts and label values; must never appear in a message


def _table(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "text": [f"review {i} by {SECRET}" for i in range(n)],
        "category": [f"{SECRET}-bars" if i % 2 else "cafes" for i in range(n)],
        "stars": [str(1 + i % 5) for i in range(n)],
        "user": [f"{SECRET}{i % 3}" for i in range(n)],
        "other": ["x"] * n,
    })


def _error(df: pd.DataFrame, spec: DatasetSpec, **kwargs) -> str:
    with pytest.raises(DpsynthError) as info:
        validate_table(df, spec, **kwargs)
    message = str(info.value)
    assert SECRET not in message and "\n" not in message
    return message


def test_clean_table_keeps_spec_columns_in_order_and_reports_counts():
    out = validate_table(_table(), DatasetSpec("text", ["category", "stars"], user_column="user"))
    assert list(out.df.columns) == ["text", "category", "stars", "user"]
    assert out.report.to_dict() == {"rows_read": 6, "rows_kept": 6, "rows_dropped": {},
                                    "label_distinct": {"category": 2, "stars": 5}, "num_users": 3}
    assert out.df["text"][0] == f"review 0 by {SECRET}"


def test_unconditional_generation_needs_only_a_text_column():
    out = validate_table(_table(), DatasetSpec("text"))
    assert list(out.df.columns) == ["text"] and out.report.label_distinct == {}


def test_texts_are_stripped_with_unix_newlines_and_labels_single_lined():
    df = pd.DataFrame({"text": ["  a\r\nb  ", "c\rd"], "label": [" Bars |\nPubs ", 5]})
    out = validate_table(df, DatasetSpec("text", ["label"]))
    assert out.df["text"].tolist() == ["a\nb", "c\nd"]
    assert out.df["label"].tolist() == ["Bars Pubs", "5"]


def test_misspelled_column_suggests_the_closest_and_lists_available():
    message = _error(_table(), DatasetSpec("text", ["catgory"]))
    assert "'catgory'" in message and "did you mean 'category'" in message
    assert "'stars'" in message and "'other'" in message


def test_missing_text_and_user_columns_are_named():
    assert "no column 'texts'" in _error(_table(), DatasetSpec("texts"))
    assert "did you mean 'user'" in _error(_table(), DatasetSpec("text", user_column="usr"))


def test_case_mismatch_is_suggested():
    df = pd.DataFrame({"ReviewText": ["a"], "Score": ["1"]})
    assert "did you mean 'ReviewText'" in _error(df, DatasetSpec("reviewtext"))


def test_single_column_with_semicolons_hints_at_the_delimiter():
    df = pd.DataFrame({"text;label": ["a;b"]})
    message = _error(df, DatasetSpec("text", ["label"]))
    assert "single column" in message


def test_many_columns_are_listed_briefly():
    df = pd.DataFrame({f"c{i}": ["x"] for i in range(50)})
    assert "and 30 more" in _error(df, DatasetSpec("text"))


@pytest.mark.parametrize(("spec", "fragment"), [
    (DatasetSpec("text", ["text"]), "both the text column and a label column"),
    (DatasetSpec("text", ["stars", "stars"]), "listed twice"),
    (DatasetSpec("text", user_column="text"), "both the text column and the user column"),
    (DatasetSpec("text", ["user"], user_column="user"), "both a label column and the user column"),
    (DatasetSpec(""), "no text column"),
])
def test_inconsistent_specs(spec, fragment):
    assert fragment in _error(_table(), spec)


def test_empty_texts_are_refused_with_a_count_and_the_flag():
    df = _table()
    df.loc[[1, 4], "text"] = ["   \n\t", ""]
    df.loc[2, "text"] = None
    message = _error(df, DatasetSpec("text", ["stars"]))
    assert "3 of 6 rows" in message and "--drop-empty" in message


def test_drop_empty_drops_and_counts_them():
    df = _table()
    df.loc[[1, 4], "text"] = ["   ", None]
    out = validate_table(df, DatasetSpec("text", ["stars"]), drop_empty=True)
    assert out.report.rows_read == 6 and out.report.rows_kept == 4
    assert out.report.rows_dropped == {"empty_text": 2}
    assert out.df.index.tolist() == [0, 1, 2, 3]
    assert out.df["stars"].tolist() == ["1", "3", "4", "1"]  # labels stay aligned with their texts


def test_dropped_rows_do_not_count_as_missing_labels():
    df = pd.DataFrame({"text": ["a", "", "b"], "label": ["x", None, "y"]})
    out = validate_table(df, DatasetSpec("text", ["label"]), drop_empty=True)
    assert out.df["label"].tolist() == ["x", "y"]


def test_all_texts_empty_leaves_no_rows():
    df = pd.DataFrame({"text": ["", " "], "label": ["a", "b"]})
    assert "no rows are left" in _error(df, DatasetSpec("text", ["label"]), drop_empty=True)


def test_zero_rows():
    assert "no rows" in _error(_table().iloc[:0], DatasetSpec("text"))


@pytest.mark.parametrize("missing", [None, float("nan"), "", "  "])
def test_missing_label_values_are_counted_and_a_fill_suggested(missing):
    df = _table()
    df["stars"] = df["stars"].astype(object)
    df.loc[[0, 3], "stars"] = missing
    message = _error(df, DatasetSpec("text", ["stars"]))
    assert "'stars'" in message and "2 missing" in message and "fill" in message


def test_missing_user_ids_are_refused():
    df = _table()
    df.loc[0, "user"] = None
    assert "user column 'user' has 1 missing" in _error(df, DatasetSpec("text", user_column="user"))


def test_too_many_label_values_gives_the_count_and_both_fixes():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(9312)], "user": [f"{SECRET}{i}" for i in range(9312)]})
    message = _error(df, DatasetSpec("text", ["user"]), max_label_values=100)
    assert "'user' has 9,312 distinct values" in message and "--max-label-values" in message
    assert "bucket" in message


def test_label_value_limit_is_inclusive_and_counts_after_normalising():
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", " x ", "y"]})
    out = validate_table(df, DatasetSpec("text", ["label"]), max_label_values=2)
    assert out.report.label_distinct == {"label": 2}
    _error(df, DatasetSpec("text", ["label"]), max_label_values=1)


def test_input_frame_is_not_modified():
    df = _table()
    before = df.copy()
    df.loc[0, "text"] = "  padded  "
    before.loc[0, "text"] = "  padded  "
    validate_table(df, DatasetSpec("text", ["stars"]))
    pd.testing.assert_frame_equal(df, before)
