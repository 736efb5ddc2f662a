"""Resumable output for synthetic records, and free post-processing.

Sampling 100K records takes hours on small hardware, so a killed run must continue where it stopped without
duplicating or losing rows. CSV and JSONL rows are appended in chunks with flush + fsync; a small hidden progress
file (written atomically *after* each chunk is on disk) records the byte size, the row count and the caller's
state (e.g. how many label draws were consumed). On reopening, the data file is cut back to the recorded size, so a
chunk that was half-written when the process died is dropped and regenerated. Without a progress file the writer
counts the complete rows present and cuts a partially written last line. Parquet cannot be appended to, so rows
are staged as JSONL and the Parquet file is written once, atomically, by `finish()`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpsynth.errors import DpsynthError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def _fsync_write(f: Any, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        _fsync_write(f, json.dumps(obj, sort_keys=True).encode())
    os.replace(tmp, path)


def _record_ends(data: bytes, csv_quoting: bool) -> np.ndarray:
    """Byte offsets just past each complete record (a newline outside quotes for CSV, any newline for JSONL)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    newline = arr == 0x0A
    if csv_quoting:
        # Inside a quoted field after an odd number of '"' (a doubled quote toggles twice, leaving the state as is).
        newline &= np.cumsum(arr == 0x22) % 2 == 0
    return np.flatnonzero(newline) + 1


class SyntheticWriter:
    """Append-only, crash-safe writer of synthetic rows to `.csv`, `.jsonl` or `.parquet` (format from the suffix).

    `resume=True` continues an existing file (see the module docstring); `resume=False` starts it afresh.
    `rows_written` counts all rows in the output, `resumed_rows` those found on opening, and `state` is whatever
    the caller passed with its last `write` (None if there was no progress file).
    """

    def __init__(self, path: str | Path, columns: Sequence[str], *, resume: bool = True) -> None:
        self.path = Path(path)
        self.fmt = FORMATS.get(self.path.suffix.lower())
        if self.fmt is None:
            raise DpsynthError(f"The output file {self.path.name} must end in .csv, .jsonl or .parquet.")
        self.columns = list(columns)
        if not self.columns or len(set(self.columns)) != len(self.columns):
            raise DpsynthError("The output columns must be non-empty and distinct.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Where rows are appended: the output itself, or a JSONL staging file for Parquet.
        self.data_path = self.path if self.fmt != "parquet" else self.path.with_name(f".{self.path.name}.staging.jsonl")
        self.progress_path = self.path.with_name(f".{self.path.name}.progress.json")
        self.state: dict[str, Any] | None = None
        self.complete = False
        self._rows = 0
        self._file: Any = None
        if resume:
            self._reopen()
        else:
            for p in {self.path, self.data_path, self.progress_path}:
                p.unlink(missing_ok=True)
        self.resumed_rows = self._rows

    # ------------------------------------------------------------------ opening
    def _header_bytes(self) -> bytes:
        return self._csv_bytes([dict(zip(self.columns, self.columns))]) if self.fmt == "csv" else b""

    def _reopen(self) -> None:
        progress = None
        if self.progress_path.exists():
            try:
                progress = json.loads(self.progress_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DpsynthError(f"The progress file {self.progress_path.name} is damaged; delete it and "
                                   f"{self.path.name} to start sampling over.") from None
            if progress.get("columns") != self.columns:
                raise DpsynthError(f"{self.path.name} was written with columns {progress.get('columns')}, not "
                                   f"{self.columns}; write to a new file or start over.")
            self.state, self.complete = progress.get("state"), bool(progress.get("complete"))
        if self.complete and self.fmt == "parquet" and self.path.exists() and not self.data_path.exists():
            self._rows = int(progress["rows"])
            return
        if not self.data_path.exists():
            if progress is not None and progress.get("rows"):
                raise DpsynthError(f"{self.data_path.name} is missing although its progress file says "
                                   f"{progress['rows']} rows were written; delete the progress file to start over.")
            self.state, self.complete = None, False
            return
        data = self.data_path.read_bytes()
        if progress is not None:
            size = int(progress["bytes"])
            if len(data) < size:
                raise DpsynthError(f"{self.data_path.name} is shorter than its progress file records; it was changed "
                                   "outside dpsynth. Delete it and its progress file to start over.")
            keep, rows = size, int(progress["rows"])
        else:
            ends = _record_ends(data, csv_quoting=self.fmt == "csv")
            keep = int(ends[-1]) if len(ends) else 0
            rows = len(ends)
            if self.fmt == "csv" and rows:
                rows -= 1  # the header
        if self.fmt == "csv" and keep:
            first = _record_ends(data[:keep], csv_quoting=True)[0]
            header = next(csv.reader(io.StringIO(data[:first].decode("utf-8", errors="replace"))), [])
            if header != self.columns:
                raise DpsynthError(f"{self.path.name} has a different header than the columns {self.columns}; "
                                   "write to a new file or start over.")
        if keep < len(data):
            with self.data_path.open("r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        self._rows = rows
        if keep < len(data) or progress is None:
            self._save_progress()

    # ------------------------------------------------------------------ writing
    @property
    def rows_written(self) -> int:
        return self._rows

    def _csv_bytes(self, rows: Iterable[Mapping[str, Any]]) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")  # RFC 4180; a lone "\r" in a field then gets quoted too
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in self.columns])
        return buf.getvalue().encode("utf-8")

    def _jsonl_bytes(self, rows: Iterable[Mapping[str, Any]]) -> bytes:
        return "".join(json.dumps({c: r.get(c) for c in self.columns}, ensure_ascii=False) + "\n"
                       for r in rows).encode("utf-8")

    def _open(self) -> Any:
        if self._file is None:
            new = not self.data_path.exists() or self.data_path.stat().st_size == 0
            self._file = self.data_path.open("ab")
            if new and self.fmt == "csv":
                _fsync_write(self._file, self._header_bytes())
        return self._file

    def _save_progress(self) -> None:
        size = self.data_path.stat().st_size if self.data_path.exists() else 0
        _atomic_write_json(self.progress_path, {"columns": self.columns, "rows": self._rows, "bytes": size,
                                                "state": self.state, "complete": self.complete})

    def write(self, rows: Sequence[Mapping[str, Any]], state: dict[str, Any] | None = None) -> None:
        """Append `rows` (missing columns become empty), fsync, then record progress and `state` atomically."""
        if self.complete:
            raise DpsynthError(f"{self.path.name} is already complete; start over to write more rows.")
        f = self._open()
        if rows:
            payload = self._csv_bytes(rows) if self.fmt == "csv" else self._jsonl_bytes(rows)
            _fsync_write(f, payload)
            self._rows += len(rows)
        if state is not None:
            self.state = state
        self._save_progress()

    def read_rows(self) -> list[dict[str, Any]]:
        """The rows written so far (CSV values come back as strings)."""
        if self.fmt == "parquet" and self.complete and not self.data_path.exists():
            return pq.read_table(self.path).to_pylist()
        if not self.data_path.exists():
            return []
        if self.fmt == "csv":
            with self.data_path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        with self.data_path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def finish(self, state: dict[str, Any] | None = None) -> Path:
        """Mark the output complete; for Parquet, write the file atomically from the staging rows."""
        self.close()
        if state is not None:
            self.state = state
        if self.complete:
            return self.path
        if self.fmt == "parquet":

            rows = self.read_rows()
            table = (pa.Table.from_pylist(rows) if rows
                     else pa.table({c: pa.array([], type=pa.string()) for c in self.columns}))
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            pq.write_table(table.select(self.columns), tmp)
            os.replace(tmp, self.path)
        elif not self.data_path.exists():
            self._open()  # an empty run still leaves a valid (header-only) file
            self.close()
        self.complete = True
        self._save_progress()
        if self.fmt == "parquet":
            self.data_path.unlink(missing_ok=True)
        return self.path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SyntheticWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def postprocess(
    rows: Sequence[Mapping[str, Any]],
    *,
    text_column: str = "text",
    drop_empty: bool = True,
    drop_duplicates: bool = False,
    seen: set[tuple[str, ...]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Drop rows with empty text and/or exact duplicate rows; return the kept rows and the counts.

    Post-processing of DP outputs costs no privacy. Duplicates are whole rows (text and labels) compared as
    strings; pass the same `seen` set across chunks to de-duplicate a whole run (it is updated in place).
    """
    reasons = drop_reasons(rows, text_column=text_column, drop_empty=drop_empty, drop_duplicates=drop_duplicates,
                           seen=seen)
    kept = [dict(r) for r, why in zip(rows, reasons) if why is None]
    return kept, {"input": len(rows), "dropped_empty": reasons.count("empty"),
                  "dropped_duplicates": reasons.count("duplicate"), "kept": len(kept)}


def drop_reasons(
    rows: Sequence[Mapping[str, Any]],
    *,
    text_column: str = "text",
    drop_empty: bool = True,
    drop_duplicates: bool = False,
    seen: set[tuple[str, ...]] | None = None,
) -> list[str | None]:
    """Why `postprocess` drops each row ("empty", "duplicate") or None where it keeps it — for callers that must
    know which rows went (the sampler redraws their labels). `seen` is updated in place as in `postprocess`."""
    seen = set() if seen is None else seen
    reasons: list[str | None] = []
    for r in rows:
        text = r.get(text_column)
        if drop_empty and (text is None or not str(text).strip()):
            reasons.append("empty")
            continue
        if drop_duplicates:
            key = tuple(f"{k}\x00{'' if v is None else v}" for k, v in sorted(r.items()))
            if key in seen:
                reasons.append("duplicate")
                continue
            seen.add(key)
        reasons.append(None)
    return reasons
