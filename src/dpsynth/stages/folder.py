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

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpsynth.errors import DpsynthError
from dpsynth.runtime.files import check_output_folder, clear_output_folder, write_json_atomic

SYNTHETIC = "synthetic.csv"
PRIVACY = "privacy.json"
RUN = "run.json"
MODEL = "model"
CHECKPOINT = "checkpoint"
LABELS = "label_distribution.json"
DATA_REPORT = "data_report.json"
RESUME_SETTINGS = "settings.json"  # inside checkpoint/: what `dpsynth run --resume --out DIR` continues with
WRITTEN = [SYNTHETIC, PRIVACY, RUN, MODEL, CHECKPOINT, LABELS, DATA_REPORT, f".{SYNTHETIC}.progress.json",
           f".{SYNTHETIC}.parts", f"{MODEL}.partial"]


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run's outputs, and the policy for starting, resuming and replacing a run there."""

    path: Path

    @property
    def synthetic(self) -> Path:
        return self.path / SYNTHETIC

    @property
    def privacy(self) -> Path:
        return self.path / PRIVACY

    @property
    def record(self) -> Path:
        return self.path / RUN

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def labels(self) -> Path:
        return self.path / LABELS

    @property
    def data_report(self) -> Path:
        return self.path / DATA_REPORT

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def resume_settings(self) -> Path:
        return self.checkpoint / RESUME_SETTINGS

    @property
    def finished(self) -> bool:
        """run.json is written last, with the checkpoint's removal."""
        return self.record.is_file() and not self.checkpoint.is_dir()

    def check(self, *, overwrite: bool, resume: bool) -> None:
        """Refuse to start where a run already is, unless asked to; refuse to resume where none can be resumed.
        Called before any work."""
        if resume:
            self._check_resumable()
        elif self.checkpoint.is_dir():
            check_output_folder(self.path, overwrite=overwrite, holds="holds an interrupted run",
                                hint=f"continue it with `dpsynth run --resume --out {self.path}`, or pass "
                                     "--overwrite to replace it")
        elif self.record.is_file():
            check_output_folder(self.path, overwrite=overwrite, holds="holds a finished run",
                                hint=f"choose another folder or pass --overwrite to replace it (`dpsynth sample "
                                     f"--run {self.path}` writes more records from it for free)")
        else:
            check_output_folder(self.path, overwrite=overwrite, hint="choose another folder or pass --overwrite to "
                                                                     "replace what a dpsynth run writes there")

    def _check_resumable(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DpsynthError(f"--out {self.path} is a file, not a folder; choose a folder path")
        if self.checkpoint.is_dir():
            return
        if self.record.is_file():
            raise DpsynthError(f"--resume: the run in {self.path} has finished, there is nothing to continue; "
                               f"`dpsynth sample --run {self.path}` writes more records at no privacy cost")
        if self.privacy.is_file():  # interrupted before its first checkpoint (or a run without DP)
            raise DpsynthError(f"--resume: the run in {self.path} stopped before writing a checkpoint, so there is "
                               "nothing to continue from; start it again with --overwrite")
        raise DpsynthError(f"--resume: {self.path} holds no interrupted run to continue; drop --resume to start one")

    def prepare(self, *, overwrite: bool, resume: bool) -> None:
        """Create the folder; with --overwrite remove only what a dpsynth run writes (never unrelated files)."""
        if overwrite and not resume:
            clear_output_folder(self.path, WRITTEN)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, path: Path, data: Any) -> None:
        write_json_atomic(path, data)

    def remove_checkpoint(self) -> None:
        """A finished run no longer needs its training state (and should not ship intermediate models)."""
        shutil.rmtree(self.checkpoint, ignore_errors=True)
