"""Files that are whole or absent: atomic writes, folder swaps, and JSON reads that fail with one sentence.

A temporary file in the target's folder, fsync, then os.replace: a reader — or a run resumed after a crash —
sees the old file or the new one, never half of one. That matters most for privacy.json, rewritten before every
noisy step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpsynth.errors import DpsynthError


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, allow_nan: bool = True,
                      default: Callable[[Any], Any] | None = str, ensure_ascii: bool = False,
                      indent: int | None = 2) -> Path:
    """`ensure_ascii=True` escapes every non-ASCII character, so any Python string (lone surrogates too)
    round-trips exactly; the default writes readable UTF-8 and non-JSON values (paths) as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=indent, ensure_ascii=ensure_ascii, allow_nan=allow_nan, default=default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where the filesystem cannot fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir_atomic(staging: Path, target: Path) -> None:
    """Move a fully written staging folder into place (the old one, if any, is removed first)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    fsync_dir(target.parent)


def read_json(path: Path, what: str) -> Any:
    """The JSON in `path`, or one sentence naming `what` the file is when it is missing, unreadable or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DpsynthError(f"{what} {path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DpsynthError(f"{what} {path} is damaged (not valid JSON); restore it or start again") from None
    except OSError as err:
        raise DpsynthError(f"{what} {path} cannot be read ({err.strerror})") from None


def check_output_folder(out: Path, *, overwrite: bool, conflicts: list[str] | None = None, what: str = "files",
                        holds: str | None = None,
                        hint: str = "choose another folder or pass --overwrite to replace it") -> None:
    """The one output-folder rule of every command, checked before any work: --out must be a folder (or not exist
    yet), and one that already holds what this command writes — `conflicts`, or anything at all when None — is
    only replaced with --overwrite. The refusal says what is there (`holds`, or "already holds <what>")."""
    if out.exists() and not out.is_dir():
        raise DpsynthError(f"--out {out} is a file, not a folder; choose a folder path")
    if overwrite or not out.is_dir():
        return
    found = [p.name for p in out.iterdir()] if conflicts is None else [n for n in conflicts if (out / n).exists()]
    if found:
        listed = "" if conflicts is None else f" ({', '.join(found)})"
        raise DpsynthError(f"--out {out} {holds or 'already holds ' + what}{listed}; {hint}")


def clear_output_folder(out: Path, names: list[str]) -> None:
    """Remove what a command writes in `out` (for --overwrite), never unrelated files."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
