"""Resuming an interrupted `dpsynth audit`: which ε runs can be reused, which continued, which started over.

An audit trains several complete `dpsynth run`s (hours each on a CPU); losing all of them to one interruption is
what `--resume` avoids. The audit folder keeps a fingerprint of everything that shapes the results (the audit's
settings and a hash of the data file), so a resume with other settings or another file is refused instead of
mixing two audits in one report. Each finished run folder also keeps the audit's measurements of it
(`audit_measures.json`, tagged with the fingerprint), so a reused run is not scored again either.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from dpsynth.errors import DpsynthError
from dpsynth.runtime.files import write_json_atomic

STATE_FILE = "audit_settings.json"
MEASURES_FILE = "audit_measures.json"
# Options that change neither the data, the training nor the measurements: a resume may change them.
NOT_FINGERPRINTED = ("data", "out", "overwrite", "resume", "show_progress", "score_batch_size", "checkpoint_every")
# Per-run options that may differ between the interrupted run and its resumption (paths move with the folder).
_RUN_NOT_COMPARED = ("data", "out", "overwrite", "resume", "checkpoint_every")



def audit_settings(config_record: dict[str, Any], **resolved: Any) -> dict[str, Any]:
    """The settings a resume must share: the audit config (JSON-ready) without NOT_FINGERPRINTED, plus resolved
    defaults that depend on the machine (the device, the number of candidates)."""
    kept = {k: v for k, v in config_record.items() if k not in NOT_FINGERPRINTED}
    return json.loads(json.dumps(kept | resolved, sort_keys=True, default=str))


def fingerprint(settings: dict[str, Any], data_sha256: str) -> str:
    blob = json.dumps({"settings": settings, "data_sha256": data_sha256}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_state(out: Path, settings: dict[str, Any], data_sha256: str) -> str:
    fp = fingerprint(settings, data_sha256)
    write_json_atomic(out / STATE_FILE, {"fingerprint": fp, "settings": settings,
                                                 "data_sha256": data_sha256})
    return fp


def check_state(out: Path, settings: dict[str, Any], data_sha256: str) -> str:
    """Refuse (one sentence) a resume whose settings or data differ from the interrupted audit's; else its
    fingerprint."""
    path = out / STATE_FILE
    try:
        stored = json.loads(path.read_text())
        old = stored["settings"]
        old_sha = stored["data_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DpsynthError(f"--resume: {out} holds no readable {STATE_FILE}, so it is not an audit that can be "
                           "continued; drop --resume and pass --overwrite to start over") from None
    if old_sha != data_sha256:
        raise DpsynthError(f"--resume: the --data file differs from the one the interrupted audit in {out} used; "
                           "resume with the same file, or pass --overwrite instead of --resume to start over")
    for key in sorted(set(old) | set(settings)):
        if old.get(key) != settings.get(key):
            was = json.dumps(old.get(key), ensure_ascii=False, default=str)
            was = was if len(was) <= 60 else was[:57] + "..."
            raise DpsynthError(f"--resume: --{key.replace('_', '-')} differs from the interrupted audit in {out} "
                               f"(it was {was}); resume with the same options, or pass --overwrite instead of "
                               "--resume to start over")
    return fingerprint(settings, data_sha256)


def write_csv_if_changed(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV atomically, leaving an identical existing file untouched (a resume rewrites nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_csv(tmp, index=False)
        if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            return
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def comparable(run_config: dict[str, Any]) -> dict[str, Any]:
    """The settings a finished run must share with the audit's (paths and how it checkpoints may differ)."""
    d = {k: v for k, v in run_config.items() if k not in _RUN_NOT_COMPARED}
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def read_measures(run_dir: Path, fp: str) -> dict[str, Any] | None:
    """The audit's stored measurements of a finished run, if they were made under the same fingerprint."""
    try:
        stored = json.loads((run_dir / MEASURES_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("fingerprint") != fp or not isinstance(stored.get("run"), dict):
        return None
    return stored["run"]


def write_measures(run_dir: Path, fp: str, run: dict[str, Any]) -> None:
    write_json_atomic(run_dir / MEASURES_FILE, {"fingerprint": fp, "run": run})


def forget_measures(run_dir: Path) -> None:
    """A run that is trained again must not keep the measurements of an earlier model."""
    (run_dir / MEASURES_FILE).unlink(missing_ok=True)
