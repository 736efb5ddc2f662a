"""Read a user's table (CSV, TSV, JSON lines, JSON array, Parquet) into a DataFrame of strings.

Why our own parsing rather than `pandas.read_csv`: every way a file can be wrong must end in one clear
`DpsynthError` (with a line number or byte offset) instead of a library traceback, and no message may echo the
file's contents, which are private. So bytes are decompressed and decoded here (strict UTF-8), CSV is parsed with
the `csv` module (which reports the line of a quoting error and lets us refuse rows with the wrong number of
fields instead of silently misaligning them), and JSON lines one line at a time.

All values come back as `str` (labels are categorical strings; "5.0" stays "5.0"); a missing value is `None`
(JSON `null`, Parquet null) or `""` (an empty CSV field). Column names have surrounding whitespace removed
(`text, label` headers are common).
"""

from __future__ import annotations

import bz2
import csv
import difflib
import gzip
import hashlib
import io
import json
import lzma
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dpsynth.errors import DpsynthError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS: dict[str, tuple[str, Callable[[bytes], bytes], tuple[type[BaseException], ...]]] = {
    ".gz": ("gzip", gzip.decompress, (gzip.BadGzipFile, EOFError, zlib.error, OSError)),
    ".bz2": ("bzip2", bz2.decompress, (EOFError, OSError, ValueError)),
    ".xz": ("xz", lzma.decompress, (lzma.LZMAError, EOFError)),
}
PARQUET_MAGIC = b"PAR1"
_CSV_FIELD_LIMIT = 2**31 - 1  # texts can be long documents; the csv module's default limit is 128 KiB


def supported_suffixes() -> str:
    """The suffixes `read_table` accepts, for error messages and help text."""
    plain = ", ".join(FORMATS)
    return f"{plain} (csv, tsv, jsonl and json may also end in {', '.join(COMPRESSIONS)})"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read `path` (format chosen by suffix) into a DataFrame whose values are `str` or `None`.

    Raises `DpsynthError` for a missing file, a directory, an unknown suffix, an empty or header-only file,
    bytes that are not UTF-8, malformed CSV/JSON (with the line number), or a file that is not Parquet.
    """
    return read_table_with_sha256(path)[0]


def read_table_with_sha256(path: str | Path) -> tuple[pd.DataFrame, str]:
    """`read_table`, plus the SHA-256 of the file's bytes — of the very bytes parsed (one read), so the digest a
    resume compares cannot describe another version of a file edited in between."""
    path = Path(path).expanduser()
    name = path.name
    _check_path(path)
    fmt, compression = _detect_format(path)
    raw = _read_file(path)
    digest = hashlib.sha256(raw).hexdigest()
    if fmt == "parquet":
        df = _read_parquet(raw, name)
    else:
        text = _decode(_decompress(raw, path, compression), name)
        if not text.strip():
            raise DpsynthError(f"{name} is empty; give a file with a header and at least one record")
        if fmt in ("csv", "tsv"):
            df = _parse_csv(text, name, delimiter="," if fmt == "csv" else "\t")
        elif fmt == "json" and text.lstrip().startswith("["):
            df = _parse_json_array(text, name)
        else:
            df = _parse_json_lines(text, name)
    if len(df) == 0:
        raise DpsynthError(f"{name} has no data rows (only a header or no records); give at least one record")
    if len(df.columns) == 0:
        raise DpsynthError(f"{name} has no columns; give a file with a header and at least one record")
    return df, digest


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise DpsynthError(f"{path} is a directory, not a data file; pass the path of the file inside it")
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            close = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1, cutoff=0.6)
            if close:
                hint = f" (did you mean {path.parent / close[0]}?)"
        raise DpsynthError(f"the data file {path} does not exist{hint}; check the path")


def _detect_format(path: Path) -> tuple[str, str | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = suffixes.pop()
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (fmt == "parquet" and compression):
        raise DpsynthError(f"cannot tell the format of {path.name} from its suffix; supported suffixes are "
                           f"{supported_suffixes()}")
    return fmt, compression


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError:
        raise DpsynthError(f"{path} cannot be read (permission denied); check its permissions") from None
    except OSError as err:
        raise DpsynthError(f"{path} cannot be read ({err.strerror or type(err).__name__}); check the file") from None


def _decompress(raw: bytes, path: Path, compression: str | None) -> bytes:
    if compression is None:
        return raw
    label, decompress, errors = COMPRESSIONS[compression]
    try:
        return decompress(raw)
    except errors:
        raise DpsynthError(f"{path.name} could not be decompressed as {label} (corrupt, truncated or not "
                           f"{label}-compressed); check the file or remove the {compression} suffix") from None


def _decode(data: bytes, name: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DpsynthError(f"{name} is UTF-16 encoded; re-encode it as UTF-8 (e.g. save as 'CSV UTF-8' or use "
                           f"iconv -f utf-16 -t utf-8)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DpsynthError(f"{name} is not valid UTF-8 (first bad byte at offset {err.start}, line {line}); "
                           f"re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    return text


def _parse_csv(text: str, name: str, delimiter: str) -> pd.DataFrame:
    kind = "CSV" if delimiter == "," else "TSV"
    old_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        header: list[str] | None = None
        rows: list[list[str]] = []
        start = 1
        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    start = reader.line_num + 1  # blank line
                    continue
                if header is None:
                    header = _clean_header(row, name)
                elif len(row) != len(header):
                    hint = ("; its header holds tabs: if the file is tab-separated, name it .tsv"
                            if delimiter == "," and any("\t" in c for c in header) else "")
                    raise DpsynthError(f"{name} is not valid {kind}: the record starting on line {start} has "
                                       f"{len(row)} fields but the header has {len(header)}; check its quoting "
                                       f"and delimiters{hint}")
                else:
                    rows.append(row)
                start = reader.line_num + 1
        except csv.Error as err:
            raise DpsynthError(f"{name} is not valid {kind} near line {reader.line_num} ({err}); check the quoting "
                               f"of the record starting on line {start}") from None
    finally:
        csv.field_size_limit(old_limit)
    if header is None:
        raise DpsynthError(f"{name} is empty; give a file with a header and at least one record")
    return _frame(header, rows)


def _clean_header(row: list[str], name: str) -> list[str]:
    header = [c.strip() or f"Unnamed: {i}" for i, c in enumerate(row)]
    seen: set[str] = set()
    for col in header:
        if col in seen:
            raise DpsynthError(f"{name} has two columns named {col!r}; give every column a distinct name")
        seen.add(col)
    return header


def _frame(columns: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    data = {col: [r[i] for r in rows] for i, col in enumerate(columns)}
    return pd.DataFrame(data, columns=columns, dtype=object)


def _json_value(value: Any) -> str | None:
    """JSON scalars to the string a user would expect: strings as is, numbers/booleans as written in JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _parse_json_lines(text: str, name: str) -> pd.DataFrame:
    columns: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DpsynthError(f"line {lineno} of {name} is not valid JSON ({err.msg} at column {err.colno}); "
                               f"dpsynth expects one JSON object per line") from None
        except RecursionError:
            raise DpsynthError(f"line {lineno} of {name} is nested too deeply to read; dpsynth expects one flat "
                               f"JSON object per line") from None
        if not isinstance(obj, dict):
            raise DpsynthError(f"line {lineno} of {name} is a JSON {type(obj).__name__}, not an object; dpsynth "
                               f"expects one JSON object per line, e.g. {{\"text\": ..., \"label\": ...}}")
        records.append(obj)
        for key in obj:
            columns.setdefault(key, len(columns))
    return _records_frame(records, columns)


def _parse_json_array(text: str, name: str) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DpsynthError(f"{name} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                           f"check the file") from None
    except RecursionError:
        raise DpsynthError(f"{name} is nested too deeply to read; dpsynth expects an array of flat JSON "
                           f"objects") from None
    if not isinstance(data, list):
        raise DpsynthError(f"{name} is not a JSON array of objects; give an array of records or JSON lines")
    columns: dict[str, int] = {}
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DpsynthError(f"element {i} of the JSON array in {name} is not an object; every record must be "
                               f"an object like {{\"text\": ..., \"label\": ...}}")
        for key in obj:
            columns.setdefault(key, len(columns))
    return _records_frame(data, columns)


def _records_frame(records: list[dict[str, Any]], columns: dict[str, int]) -> pd.DataFrame:
    names = list(columns)
    rows = [[_json_value(obj.get(k)) for k in names] for obj in records]
    stripped = [k.strip() or f"Unnamed: {i}" for i, k in enumerate(names)]
    if len(set(stripped)) == len(stripped):
        names = stripped
    return _frame(names, rows)


def _read_parquet(raw: bytes, file_name: str) -> pd.DataFrame:

    if not raw:
        raise DpsynthError(f"{file_name} is empty; give a file with a header and at least one record")
    if len(raw) < 12 or raw[:4] != PARQUET_MAGIC or raw[-4:] != PARQUET_MAGIC:
        raise DpsynthError(f"{file_name} is not a Parquet file (no Parquet signature); check the file or give it "
                           f"the suffix of its real format")
    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception:  # noqa: BLE001 - any failure of the Parquet reader means the file is unreadable
        raise DpsynthError(f"{file_name} looks like Parquet but could not be read (corrupt or truncated); "
                           f"re-export it") from None
    names = [str(n).strip() or f"Unnamed: {i}" for i, n in enumerate(table.column_names)]
    if len(set(names)) != len(names):
        raise DpsynthError(f"{file_name} has two columns with the same name; give every column a distinct name")
    columns: dict[str, list[str | None]] = {}
    for name, col in zip(names, table.columns):
        try:
            values = pc.cast(col, pa.string()).to_pylist() if not pa.types.is_string(col.type) else col.to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                raise DpsynthError(f"column {name!r} of {file_name} holds bytes that are not UTF-8 text; "
                                   f"store it as a UTF-8 string column") from None
            values = [None if v is None else _json_value(v) if not isinstance(v, str) else v
                      for v in col.to_pylist()]
        columns[name] = values
    return pd.DataFrame(columns, dtype=object)
