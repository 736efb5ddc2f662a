from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dpsynth.errors import DpsynthError
from dpsynth.sample.writer import SyntheticWriter, drop_reasons, postprocess

COLUMNS = ["id", "text", "label"]


def _rows(start: int, stop: int) -> list[dict]:
    # Texts with commas, quotes and newlines: a naive line count of a CSV would be wrong.
    return [{"id": i, "text": f'row {i}, "quoted"\nsecond line', "label": "ab"[i % 2]} for i in range(start, stop)]


def _read(path):
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


def _cut_mid_last_line(path, writer):
    """Simulate a kill: the next row is only partly on disk, cut after its embedded newline (the hard case)."""
    row = writer._csv_bytes(_rows(999, 1000)) if path.suffix == ".csv" else writer._jsonl_bytes(_rows(999, 1000))
    assert row.index(b"second") < len(row) - 6
    with path.open("ab") as f:
        f.write(row[:-6])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("with_progress", [True, False])
def test_resume_after_kill_gives_exact_rows(tmp_path, suffix, with_progress):
    path = tmp_path / f"out{suffix}"
    n = 50
    with SyntheticWriter(path, COLUMNS) as w:
        for start in range(0, 25, 10):
            w.write(_rows(start, min(start + 10, 25)), state={"done": min(start + 10, 25)})
    _cut_mid_last_line(path, w)
    if not with_progress:
        w.progress_path.unlink()  # the writer must then count complete records itself
    w2 = SyntheticWriter(path, COLUMNS)
    assert w2.resumed_rows == 25
    assert w2.state == ({"done": 25} if with_progress else None)
    w2.write(_rows(25, n), state={"done": n})
    w2.finish()
    df = _read(path)
    assert len(df) == n and df["id"].tolist() == list(range(n))
    assert df["text"].iloc[7] == 'row 7, "quoted"\nsecond line'


def test_progress_file_drops_rows_of_unrecorded_chunk(tmp_path):
    # Killed after the data fsync but before the progress update: the whole chunk is cut back and redone.
    path = tmp_path / "out.csv"
    w = SyntheticWriter(path, COLUMNS)
    w.write(_rows(0, 10), state={"done": 10})
    w.close()
    with path.open("ab") as f:
        f.write(w._csv_bytes(_rows(10, 20)))
    w2 = SyntheticWriter(path, COLUMNS)
    assert w2.resumed_rows == 10 and w2.state == {"done": 10}
    w2.write(_rows(10, 20))
    w2.finish()
    assert _read(path)["id"].tolist() == list(range(20))


def test_resume_false_starts_over_and_header_checked(tmp_path):
    path = tmp_path / "out.csv"
    with SyntheticWriter(path, COLUMNS) as w:
        w.write(_rows(0, 5))
    with SyntheticWriter(path, COLUMNS, resume=False) as w:
        assert w.resumed_rows == 0
        w.write(_rows(0, 3))
    assert len(_read(path)) == 3
    with pytest.raises(DpsynthError, match="columns"):
        SyntheticWriter(path, ["id", "text"])


def test_csv_without_complete_header_restarts(tmp_path):
    path = tmp_path / "out.csv"
    path.write_bytes(b"id,te")
    w = SyntheticWriter(path, COLUMNS)
    assert w.resumed_rows == 0
    w.write(_rows(0, 2))
    w.finish()
    assert _read(path)["id"].tolist() == [0, 1]


def test_parquet_staged_then_written_once(tmp_path):
    path = tmp_path / "out.parquet"
    w = SyntheticWriter(path, COLUMNS)
    w.write(_rows(0, 10), state={"done": 10})
    w.close()
    assert not path.exists() and w.data_path.exists()
    _cut_mid_last_line(w.data_path, w)
    w2 = SyntheticWriter(path, COLUMNS)
    assert w2.resumed_rows == 10
    w2.write(_rows(10, 30))
    w2.finish()
    table = pq.read_table(path)
    assert table.column_names == COLUMNS and table.column("id").to_pylist() == list(range(30))
    assert not w2.data_path.exists()
    w3 = SyntheticWriter(path, COLUMNS)  # a completed Parquet output reopens as complete
    assert w3.complete and w3.resumed_rows == 30 and len(w3.read_rows()) == 30
    with pytest.raises(DpsynthError, match="complete"):
        w3.write(_rows(30, 31))


def test_jsonl_is_one_object_per_line(tmp_path):
    path = tmp_path / "out.jsonl"
    with SyntheticWriter(path, COLUMNS) as w:
        w.write(_rows(0, 3))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[1]) == _rows(1, 2)[0]


def test_bad_suffix():
    with pytest.raises(DpsynthError, match=".csv"):
        SyntheticWriter("out.txt", COLUMNS)


def test_postprocess_counts():
    rows = [{"text": "a", "l": "x"}, {"text": "  ", "l": "x"}, {"text": "a", "l": "x"}, {"text": "a", "l": "y"},
            {"text": "", "l": "y"}]
    kept, counts = postprocess(rows)
    assert len(kept) == 3 and counts == {"input": 5, "dropped_empty": 2, "dropped_duplicates": 0, "kept": 3}
    seen: set = set()
    kept, counts = postprocess(rows, drop_duplicates=True, seen=seen)
    assert kept == [{"text": "a", "l": "x"}, {"text": "a", "l": "y"}] and counts["dropped_duplicates"] == 1
    kept, counts = postprocess([{"text": "a", "l": "y"}, {"text": "b", "l": "y"}], drop_duplicates=True, seen=seen)
    assert kept == [{"text": "b", "l": "y"}]  # the seen set carries over between chunks
    kept, counts = postprocess(rows, drop_empty=False)
    assert len(kept) == 5
    # Which rows go, and why: the sampler redraws the labels of exactly these rows.
    assert drop_reasons(rows, drop_duplicates=True) == [None, "empty", "duplicate", None, "empty"]


def test_csv_round_trips_carriage_returns(tmp_path):
    path = tmp_path / "out.csv"
    rows = [{"id": 0, "text": "a\rb", "label": "x"}, {"id": 1, "text": "c\r\nd", "label": "y"}]
    with SyntheticWriter(path, COLUMNS) as w:
        w.write(rows)
    assert _read(path)["text"].tolist() == ["a\rb", "c\r\nd"]
    assert SyntheticWriter(path, COLUMNS).resumed_rows == 2
