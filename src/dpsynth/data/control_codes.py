"""The training-text format: control codes built from the labels, a blank line, then the text (then EOS).

One deterministic function pair used at training *and* sampling time, so the model is prompted with exactly the
string it was trained on::

    category: fresh | movie: Up

    A lovely, funny film about a house with balloons.<eos>

Codes are `"{column}: {value}"` in the order of the label columns, joined by `" | "`, followed by `"\\n\\n"`.
Values are single-lined (every run of whitespace, newlines included, and every `|` becomes one space; surrounding
spaces are removed) so that the prefix can be parsed back. With no label columns the prefix is empty
(unconditional generation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dpsynth.errors import DpsynthError

SEPARATOR = " | "
KEY_VALUE = ": "
END = "\n\n"


def normalise_value(value: object) -> str:
    """The single-line form of a label value, as written in the control codes (and kept in the validated table)."""
    return " ".join(str(value).replace("|", " ").split())


class ControlCodes:
    """Builds and parses the control-code prefix for a fixed, ordered list of label columns."""

    def __init__(self, label_columns: Sequence[str]) -> None:
        self.label_columns = list(label_columns)
        if len(set(self.label_columns)) != len(self.label_columns):
            raise DpsynthError("a label column is listed twice; give each label column once")
        for col in self.label_columns:
            if not col or normalise_value(col) != col or KEY_VALUE in col:
                raise DpsynthError(f"the label column name {col!r} cannot be used in control codes (it is empty or "
                                   f"contains a line break, '|', ': ' or surrounding spaces); rename the column")

    def prefix(self, labels: Mapping[str, object]) -> str:
        """`"col1: v1 | col2: v2\\n\\n"` for this record's labels; `""` when there are no label columns."""
        if not self.label_columns:
            return ""
        missing = [c for c in self.label_columns if c not in labels]
        if missing:
            raise ValueError(f"no value given for label column(s) {missing}")
        return SEPARATOR.join(f"{c}{KEY_VALUE}{normalise_value(labels[c])}" for c in self.label_columns) + END

    def parse_prefix(self, text: str) -> dict[str, str]:
        """The labels written at the start of `text` (a prefix, or a prefix followed by a generated text).

        Raises `ValueError` when `text` does not start with control codes for exactly these columns in order.
        """
        if not self.label_columns:
            return {}
        head, sep, _ = text.partition(END)
        if not sep:
            raise ValueError("no blank line ends the control codes")
        parts = head.split(SEPARATOR)
        if len(parts) != len(self.label_columns):
            raise ValueError(f"expected {len(self.label_columns)} control codes, found {len(parts)}")
        labels: dict[str, str] = {}
        for col, part in zip(self.label_columns, parts):
            key, kv, value = part.partition(KEY_VALUE)
            if not kv and part == col + KEY_VALUE.rstrip():  # an empty value loses its trailing space
                key, kv, value = col, KEY_VALUE, ""
            if key != col or not kv:
                raise ValueError(f"expected the control code for column {col!r} in position {len(labels) + 1}")
            labels[col] = value
        return labels

    def split(self, text: str) -> tuple[dict[str, str], str]:
        """Labels and the text after the prefix (for reading generated samples back)."""
        if not self.label_columns:
            return {}, text
        labels = self.parse_prefix(text)
        return labels, text.partition(END)[2]
