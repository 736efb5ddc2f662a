"""The run folder: what goes where, and the rule that nothing is half-written.

Layout of `--out DIR`:
    synthetic.csv   the synthetic records (text + label columns)
    privacy.json    the privacy ledger: every mechanism, its parameters, the total (ε, δ)
    run.json        configuration, versions, timings, training and sampling summaries (no statistic of the
                    private data beyond N, which the accountant treats as public; the wall-clock times are a
                    timing side channel outside the guarantee, docs/privacy.md)
    model/          the fine-tuned model (a LoRA adapter or a full model) with its tokenizer
    label_distribution.json  the label mix used for sampling (DP-noised or declared public)
    data_report.json  exact statistics of the private data (rows dropped, truncated, distinct labels, examples
                    trained on, clipping methods per layer): for the data holder, NOT covered by the guarantee —
                    keep it with the private data
    checkpoint/     training state for --resume, with the run's settings (removed when the run completes)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from dpsynth import atomic
from dpsynth.errors import DpsynthError

SYNTHETIC = "synthetic.csv"
PRIVACY = "privacy.json"
RUN = "run.json"
MODEL = "model"
CHECKPOINT = "checkpoint"
LABELS = "label_distribution.json"
DATA_REPORT = "data_report.json"
RESUME_SETTINGS = "settings.json"  # inside checkpoint/: what `dpsynth run --resume --out DIR` continues with


def check_output_folder(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to write into a folder that already holds something unless asked to; called before any work."""
    if out.exists() and not out.is_dir():
        raise DpsynthError(f"--out {out} is a file, not a folder; choose a folder path")
    has_content = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / CHECKPOINT).is_dir():
            if (out / RUN).is_file():  # run.json is written last, with the checkpoint's removal: a finished run
                raise DpsynthError(f"--resume: the run in {out} has finished, there is nothing to continue; "
                                   f"`dpsynth sample --run {out}` writes more records at no privacy cost")
            if (out / PRIVACY).is_file():  # interrupted before its first checkpoint (or a run without DP)
                raise DpsynthError(f"--resume: the run in {out} stopped before writing a checkpoint, so there is "
                                   "nothing to continue from; start it again with --overwrite")
            raise DpsynthError(f"--resume: {out} holds no interrupted run to continue; drop --resume to start one")
        return
    if has_content and not overwrite:
        if (out / CHECKPOINT).is_dir():
            raise DpsynthError(f"--out {out} holds an interrupted run; continue it with `dpsynth run --resume --out "
                               f"{out}`, or pass --overwrite to replace it")
        if (out / RUN).is_file():
            raise DpsynthError(f"--out {out} holds a finished run; choose another folder or pass --overwrite to "
                               f"replace it (`dpsynth sample --run {out}` writes more records from it for free)")
        raise DpsynthError(f"--out {out} already holds files; choose another folder or pass --overwrite to replace "
                           "what a dpsynth run writes there")


def prepare_output_folder(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Create the folder; with --overwrite remove only what a dpsynth run writes (never unrelated files)."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for name in (SYNTHETIC, PRIVACY, RUN, MODEL, CHECKPOINT, LABELS, DATA_REPORT, f".{SYNTHETIC}.progress.json",
                     f"{MODEL}.partial"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    """Run-folder JSON (run.json, label_distribution.json, …): atomic, non-JSON values written as strings."""
    atomic.write_json_atomic(path, data, default=str)


def replace_dir_atomic(staging: Path, target: Path) -> None:
    """Move a fully written staging folder into place (the old one, if any, is removed first)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def remove_checkpoint(out: Path) -> None:
    """A finished run no longer needs its training state (and should not ship intermediate models)."""
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)


def write_resume_settings(out: Path, settings: dict[str, Any]) -> None:
    """Keep the run's settings with its checkpoint, so that `--resume --out DIR` alone continues it."""
    write_json_atomic(out / CHECKPOINT / RESUME_SETTINGS, settings)


def read_resume_settings(out: Path) -> dict[str, Any] | None:
    """The settings an interrupted run stored with its checkpoint; None if there are none (or they are unreadable,
    in which case the options must be given again)."""
    import json

    try:
        settings = json.loads((out / CHECKPOINT / RESUME_SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None
