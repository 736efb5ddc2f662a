"""Atomic JSON writes (standard library only, so the privacy package may use it too).

A temporary file in the target's folder, fsync, then os.replace: a reader — or a run resumed after a crash —
sees the old file or the new one, never half of one. That matters most for privacy.json, rewritten before every
noisy step.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, allow_nan: bool = True,
                      default: Callable[[Any], Any] | None = None, ensure_ascii: bool = False,
                      indent: int | None = 2) -> Path:
    """`ensure_ascii=True` escapes every non-ASCII character, so any Python string (lone surrogates too)
    round-trips exactly; the default writes readable UTF-8."""
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
    return path
