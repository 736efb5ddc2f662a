"""Control codes: the documented format, single-lined values, and a parse that inverts it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsynth.data.control_codes import ControlCodes, normalise_value
from dpsynth.errors import DpsynthError


def test_documented_format():
    codes = ControlCodes(["category", "movie"])
    assert codes.prefix({"movie": "Up", "category": "fresh"}) == "category: fresh | movie: Up\n\n"


def test_no_label_columns_means_an_empty_prefix():
    codes = ControlCodes([])
    assert codes.prefix({}) == "" and codes.parse_prefix("anything\n\nat all") == {}
    assert codes.split("text") == ({}, "text")


def test_values_are_single_lined():
    codes = ControlCodes(["a", "b"])
    assert codes.prefix({"a": " x\n\ny | z ", "b": 5}) == "a: x y z | b: 5\n\n"


def test_missing_label_is_a_programming_error():
    with pytest.raises(ValueError, match="'b'"):
        ControlCodes(["a", "b"]).prefix({"a": "x"})


@pytest.mark.parametrize("name", ["", " a", "a|b", "a\nb", "a: b"])
def test_unusable_column_names_are_refused(name):
    with pytest.raises(DpsynthError, match="rename"):
        ControlCodes([name])


def test_parse_reads_prefix_followed_by_generated_text():
    codes = ControlCodes(["stars", "business"])
    labels, text = codes.split("stars: 5 | business: Bars: and more\n\nGreat beer.\n\nWill return.")
    assert labels == {"stars": "5", "business": "Bars: and more"} and text == "Great beer.\n\nWill return."


@pytest.mark.parametrize("bad", ["stars: 5\n\ntext", "stars: 5 | business: Bars no blank line",
                                 "business: Bars | stars: 5\n\n", "stars 5 | business: Bars\n\n"])
def test_parse_rejects_other_shapes(bad):
    with pytest.raises(ValueError):
        ControlCodes(["stars", "business"]).parse_prefix(bad)


def test_empty_value_round_trips():
    codes = ControlCodes(["a", "b"])
    assert codes.parse_prefix(codes.prefix({"a": "", "b": "y"})) == {"a": "", "b": "y"}
    assert codes.parse_prefix(codes.prefix({"a": "x", "b": "\n"})) == {"a": "x", "b": ""}


_names = st.text(min_size=1, max_size=8).filter(lambda s: normalise_value(s) == s and ": " not in s)


@given(data=st.data(), columns=st.lists(_names, min_size=1, max_size=4, unique=True), tail=st.text(max_size=20))
def test_round_trip(data, columns, tail):
    labels = {c: data.draw(st.text(max_size=12)) for c in columns}
    codes = ControlCodes(columns)
    prefix = codes.prefix(labels)
    assert prefix.endswith("\n\n") and prefix.count("\n\n") == 1
    assert codes.parse_prefix(prefix) == {c: normalise_value(v) for c, v in labels.items()}
    assert codes.split(prefix + tail) == (codes.parse_prefix(prefix), tail)
    assert codes.prefix(codes.parse_prefix(prefix)) == prefix  # normalising is idempotent
