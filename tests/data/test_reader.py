"""read_table: every supported format reads to strings, and every bad file is one DpsynthError without its text."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import string
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpsynth.data.reader import read_table, read_table_with_sha256
from dpsynth.errors import DpsynthError

SECRET = "Alice Zorgblatt lives at 12 Quux Lane"  # a stand-in private text: must never appear in a message


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _error(path: Path) -> str:
    with pytest.raises(DpsynthError) as info:
        read_table(path)
    message = str(info.value)
    assert "\n" not in message
    assert "Zorgblatt" not in message and "Quux" not in message
    return message


CSV = f'text,label,stars\n"{SECRET}, and more",fresh,5.0\nshort one,rotten,1\n'


def test_csv_reads_all_values_as_strings(tmp_path):
    df = read_table(_write(tmp_path / "d.csv", CSV))
    assert list(df.columns) == ["text", "label", "stars"]
    assert df.to_dict("records") == [{"text": f"{SECRET}, and more", "label": "fresh", "stars": "5.0"},
                                     {"text": "short one", "label": "rotten", "stars": "1"}]


def test_csv_quoted_newlines_bom_blank_lines_and_header_spaces(tmp_path):
    data = '\ufefftext , label\r\n"line one\r\nline two",a\r\n\r\n"say ""hi""",b\r\n'
    df = read_table(_write(tmp_path / "d.csv", data))
    assert list(df.columns) == ["text", "label"]
    assert df["text"].tolist() == ["line one\r\nline two", 'say "hi"']


def test_empty_csv_fields_are_empty_strings_not_nan(tmp_path):
    df = read_table(_write(tmp_path / "d.csv", "text,label\nhello,\n,x\n"))
    assert df.to_dict("records") == [{"text": "hello", "label": ""}, {"text": "", "label": "x"}]


def test_long_csv_field_beyond_the_csv_module_default_limit(tmp_path):
    long = "word " * 60_000
    df = read_table(_write(tmp_path / "d.csv", f'text,label\n"{long}",a\n'))
    assert df["text"][0] == long


def test_tsv(tmp_path):
    df = read_table(_write(tmp_path / "d.tsv", "text\tlabel\na, b\tx\n"))
    assert df.to_dict("records") == [{"text": "a, b", "label": "x"}]


@pytest.mark.parametrize(("suffix", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress),
                                                  (".xz", lzma.compress)])
def test_compressed_csv_and_jsonl(tmp_path, suffix, compress):
    df = read_table(_write(tmp_path / f"d.csv{suffix}", compress(CSV.encode())))
    assert df["label"].tolist() == ["fresh", "rotten"]
    lines = '{"text": "x", "label": "a"}\n'
    df = read_table(_write(tmp_path / f"d.jsonl{suffix}", compress(lines.encode())))
    assert df.to_dict("records") == [{"text": "x", "label": "a"}]


@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz", "d.parquet"])
def test_the_digest_is_of_the_file_bytes_that_were_parsed(tmp_path, name):
    """A resume compares this digest with the checkpoint's: it must be the file's bytes (compressed as stored),
    and one byte changed must change it."""
    import hashlib

    path = tmp_path / name
    frame = pd.DataFrame({"text": [SECRET, "short one"], "label": ["fresh", "rotten"]})
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        _write(path, gzip.compress(CSV.encode()) if name.endswith(".gz") else CSV)
    df, digest = read_table_with_sha256(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and df.equals(read_table(path))
    if name == "d.csv":
        _write(path, CSV.replace("rotten", "rottem"))
        assert read_table_with_sha256(path)[1] != digest


def test_jsonl_scalars_become_strings_and_missing_keys_none(tmp_path):
    lines = ['{"text": "a", "stars": 5, "ok": true}', "", '{"text": "b", "stars": 4.5, "extra": null}', ""]
    df = read_table(_write(tmp_path / "d.jsonl", "\n".join(lines)))
    assert list(df.columns) == ["text", "stars", "ok", "extra"]
    assert df.to_dict("records") == [{"text": "a", "stars": "5", "ok": "true", "extra": None},
                                     {"text": "b", "stars": "4.5", "ok": None, "extra": None}]


def test_json_suffix_reads_lines_or_an_array(tmp_path):
    records = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    as_lines = read_table(_write(tmp_path / "lines.json", "\n".join(json.dumps(r) for r in records)))
    as_array = read_table(_write(tmp_path / "array.json", json.dumps(records, indent=2)))
    assert as_lines.to_dict("records") == records == as_array.to_dict("records")


def test_parquet_numbers_nulls_and_categories_become_strings_or_none(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", None], "stars": [5, 3], "score": [1.5, None],
                  "cat": pd.Categorical(["x", "y"])}).to_parquet(path)
    df = read_table(path)
    assert df.to_dict("records") == [{"text": "a", "stars": "5", "score": "1.5", "cat": "x"},
                                     {"text": None, "stars": "3", "score": None, "cat": "y"}]


def test_missing_file_suggests_a_close_name(tmp_path):
    _write(tmp_path / "reviews.csv", CSV)
    message = _error(tmp_path / "reveiws.csv")
    assert "does not exist" in message and "reviews.csv" in message


def test_directory(tmp_path):
    assert "is a directory" in _error(tmp_path)


@pytest.mark.parametrize("name", ["d.txt", "d.xlsx", "d", "d.parquet.gz"])
def test_unknown_suffix_lists_the_supported_ones(tmp_path, name):
    message = _error(_write(tmp_path / name, CSV))
    assert "suffix" in message and ".csv" in message and ".jsonl" in message and ".parquet" in message


@pytest.mark.parametrize(("name", "content"), [(n, c) for n in ["d.csv", "d.jsonl", "d.json", "d.tsv"]
                                               for c in ["", "  \n\n "]] + [("d.parquet", "")])
def test_empty_file(tmp_path, name, content):
    assert "is empty" in _error(_write(tmp_path / name, content))


@pytest.mark.parametrize(("name", "content"), [("d.csv", "text,label\n"), ("d.csv", "text,label\n\n\n"),
                                               ("d.json", "[]")])
def test_header_only_or_zero_rows(tmp_path, name, content):
    assert "no data rows" in _error(_write(tmp_path / name, content))


def test_zero_row_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(path)
    assert "no data rows" in _error(path)


def test_invalid_utf8_gives_offset_and_line_not_text(tmp_path):
    data = f"text,label\n{SECRET},a\nCaf\xe9 {SECRET},b\n".encode("latin-1")
    message = _error(_write(tmp_path / "d.csv", data))
    offset = data.index(b"\xe9")
    assert "UTF-8" in message and f"offset {offset}" in message and "line 3" in message
    assert "re-encode" in message


def test_utf16_file_is_named_as_such(tmp_path):
    message = _error(_write(tmp_path / "d.csv", CSV.encode("utf-16")))
    assert "UTF-16" in message and "UTF-8" in message


def test_csv_unterminated_quote_names_the_line(tmp_path):
    data = f'text,label\nok,a\n"{SECRET},b\nmore,c\n'
    message = _error(_write(tmp_path / "d.csv", data))
    assert "not valid CSV" in message and "line 3" in message


def test_csv_row_with_extra_field_names_the_line(tmp_path):
    data = f"text,label\nok,a\n\n{SECRET},b,c\n"
    message = _error(_write(tmp_path / "d.csv", data))
    assert "line 4" in message and "3 fields" in message and "header has 2" in message


def test_tab_separated_file_named_csv_gets_a_hint(tmp_path):
    msg = _error(_write(tmp_path / "d.csv", "text\tlabel\nhello, world\tx\n"))
    assert "name it .tsv" in msg


def test_csv_duplicate_column_names(tmp_path):
    assert "two columns named 'text'" in _error(_write(tmp_path / "d.csv", "text,text\na,b\n"))


def test_malformed_json_line_names_the_line(tmp_path):
    data = '{"text": "ok"}\n\n{"text": "' + SECRET + '"\n'
    message = _error(_write(tmp_path / "d.jsonl", data))
    assert "line 3" in message and "not valid JSON" in message


def test_json_line_that_is_not_an_object(tmp_path):
    message = _error(_write(tmp_path / "d.jsonl", '{"text": "ok"}\n["' + SECRET + '"]\n'))
    assert "line 2" in message and "not an object" in message


def test_json_array_of_non_objects(tmp_path):
    message = _error(_write(tmp_path / "d.json", json.dumps([{"text": "a"}, SECRET])))
    assert "element 1" in message


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    message = _error(_write(tmp_path / "d.jsonl", "[" * 100_000 + "\n"))
    assert "line 1" in message


def test_not_parquet(tmp_path):
    assert "not a Parquet file" in _error(_write(tmp_path / "d.parquet", CSV))


def test_corrupt_parquet_with_valid_magic(tmp_path):
    assert "could not be read" in _error(_write(tmp_path / "d.parquet", b"PAR1" + SECRET.encode() + b"PAR1"))


def test_corrupt_gzip(tmp_path):
    data = gzip.compress(CSV.encode())[:-20]
    assert "could not be decompressed as gzip" in _error(_write(tmp_path / "d.csv.gz", data))
    assert "could not be decompressed as gzip" in _error(_write(tmp_path / "e.csv.gz", CSV))


# Property-based: whatever the bytes, read_table returns a DataFrame or raises DpsynthError, nothing else.

SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".csv.gz", ".jsonl.bz2"]
_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_dpsynth_errors(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        df = read_table(path)
    except DpsynthError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(df, pd.DataFrame) and len(df) > 0 and len(df.columns) > 0
    for col in df.columns:
        assert all(v is None or isinstance(v, str) for v in df[col])


@_FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_fuzz_random_bytes(tmp_path, data, suffix):
    _only_dpsynth_errors(tmp_path / f"f{suffix}", data)


@_FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_parquet_magic_around_random_bytes(tmp_path, data):
    _only_dpsynth_errors(tmp_path / "f.parquet", b"PAR1" + data + b"PAR1")


_cell = st.text(alphabet=string.printable + "é€\u2028\x00", max_size=12)


@_FUZZ
@given(rows=st.lists(st.lists(_cell, min_size=1, max_size=4), min_size=0, max_size=6),
       cut=st.integers(min_value=0, max_value=400), suffix=st.sampled_from([".csv", ".tsv", ".csv.gz"]))
def test_fuzz_truncated_delimited_text(tmp_path, rows, cut, suffix):
    sep = "\t" if suffix == ".tsv" else ","
    text = "\n".join(sep.join(row) for row in rows)[:cut]
    data = gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode()
    _only_dpsynth_errors(tmp_path / f"f{suffix}", data)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                     max_leaves=8)


@_FUZZ
@given(values=st.lists(_json, max_size=6), junk=st.lists(st.text(max_size=10), max_size=2),
       suffix=st.sampled_from([".jsonl", ".json"]))
def test_fuzz_random_json_lines(tmp_path, values, junk, suffix):
    lines = [json.dumps(v) for v in values] + junk
    _only_dpsynth_errors(tmp_path / f"f{suffix}", "\n".join(lines).encode())


@_FUZZ
@given(text=st.text(max_size=60), bad=st.binary(min_size=1, max_size=3), at=st.integers(0, 60))
def test_fuzz_invalid_utf8(tmp_path, text, bad, at):
    raw = ("text,label\n" + text).encode()
    cut = min(at, len(raw))
    _only_dpsynth_errors(tmp_path / "f.csv", raw[:cut] + b"\xff" + bad + raw[cut:])
